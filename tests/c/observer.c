/*
 * A web server stand-in for the end-to-end tests: opens a handle through the C ABI, reads one
 * key in a loop, and reports on stdout every change of the active version with the
 * CLOCK_MONOTONIC instants that bracket it (the last read that saw the old version and the
 * first read that saw the new one). CLOCK_MONOTONIC is one clock for every process on the
 * host, and libfaketime leaves it alone, so the test can compare processes with skewed wall
 * clocks on one time line.
 *
 * usage: observer URL NAME KEY SECONDS [EXTRA_OPTIONS]
 * output: READY v | CHANGE v first_new_ns last_old_ns value first_new_end_ns last_old_start_ns |
 *         STATS ... | DONE close_ns
 * (first_new_ns is when the first read of the new version began, last_old_ns when the last read
 * of the old one ended: the tightest claims about early and late reads; the switch itself lies
 * between last_old_start_ns and first_new_end_ns, since each read consults the clock somewhere
 * inside its own duration)
 * (a CHANGE is printed when the version number or the key's value changes; STATS, every
 * 200 ms, includes the 99.9th percentile and the maximum of read latency in that window)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lockstep.h"

/* Read latencies in 1 µs buckets up to 20 ms; slower reads land in the last one. */
#define LATENCY_BUCKETS 20000
static unsigned latency[LATENCY_BUCKETS];

static long long win_reads, win_over_5ms;

static void record_latency(long long ns) {
  win_reads++;
  if (ns > 5000000) win_over_5ms++;
  long long us = ns / 1000;
  latency[us < LATENCY_BUCKETS ? us : LATENCY_BUCKETS - 1]++;
}

/* The 99.9th percentile of the window, in ns (an upper bound: the bucket's end); resets it. */
static long long take_p999_ns(void) {
  unsigned long long total = 0, seen = 0;
  for (int i = 0; i < LATENCY_BUCKETS; i++) total += latency[i];
  long long p = 0;
  for (int i = 0; i < LATENCY_BUCKETS && total > 0; i++) {
    seen += latency[i];
    if (seen * 1000 >= total * 999) {
      p = (long long)(i + 1) * 1000;
      break;
    }
  }
  memset(latency, 0, sizeof latency);
  return p;
}

static long long mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: %s URL NAME KEY SECONDS [EXTRA_OPTIONS]\n", argv[0]);
    return 2;
  }
  char options[1024];
  int n = snprintf(options, sizeof options, "url=%s;name=%s;bootstrap_wait_ms=15000;%s", argv[1],
                   argv[2], argc == 6 ? argv[5] : "");
  if (n < 0 || (size_t)n >= sizeof options) return 2;
  sync_handle *h = NULL;
  sync_result r = sync_open(options, (size_t)n, &h);
  if (r != SYNC_OK) {
    char msg[512];
    size_t len;
    sync_error_message(r, msg, sizeof msg, &len);
    fprintf(stderr, "observer: sync_open: %s\n", msg);
    return 1;
  }
  const char *key = argv[3];
  long long end = mono_ns() + (long long)(atof(argv[4]) * 1e9);
  uint64_t last = 0;
  sync_active_version(h, &last);
  printf("READY %llu\n", (unsigned long long)last);
  fflush(stdout);
  last = 0; /* so the first read reports the version it starts with as a change */

  long long last_old = mono_ns(), last_old_start = last_old, next_stats = 0, max_read_ns = 0,
            win_max_ns = 0;
  struct timespec pause = {0, 200000}; /* 200 µs between reads: wakes fast, leaves CPU */
  char value[4096], last_value[4096] = "";
  while (mono_ns() < end) {
    /* The version and the value come from one pinned snapshot, so they always agree. */
    long long before = mono_ns();
    uint64_t v = 0;
    size_t len = 0;
    sync_snapshot *snap = NULL;
    r = sync_snapshot_acquire(h, &snap);
    if (r == SYNC_OK) {
      const uint8_t *p = NULL;
      sync_snapshot_version(snap, &v);
      r = sync_snapshot_get(snap, (const uint8_t *)key, strlen(key), &p, &len);
      if (r == SYNC_OK) {
        if (len > sizeof value - 1) len = sizeof value - 1;
        memcpy(value, p, len);
      }
      sync_snapshot_release(snap);
    }
    long long after = mono_ns();
    if (after - before > max_read_ns) max_read_ns = after - before;
    if (after - before > win_max_ns) win_max_ns = after - before;
    record_latency(after - before);
    if (r != SYNC_OK) len = 0;
    value[len] = 0;
    /* A change of version, or of content under the same number (a data server started
     * afresh reuses numbers). */
    if (v != last || strcmp(value, last_value) != 0) {
      printf("CHANGE %llu %lld %lld %s %lld %lld\n", (unsigned long long)v, before, last_old,
             r == SYNC_OK ? value : "-", after, last_old_start);
      fflush(stdout);
      last = v;
      memcpy(last_value, value, len + 1);
    }
    last_old = after;
    last_old_start = before;
    if (after >= next_stats) {
      sync_stats s;
      memset(&s, 0, sizeof s);
      s.struct_size = sizeof s;
      if (sync_stats_get(h, &s) == SYNC_OK) {
        printf("STATS offset_us=%lld error_us=%lld lagging=%u failures=%llu rejected=%llu "
               "max_read_ns=%lld active=%llu staged=%llu win_p999_ns=%lld win_max_ns=%lld "
               "role=%u unconfirmed=%u cache_failures=%llu checkin_us=%lld activated_ns=%lld "
               "win_reads=%lld win_over_5ms=%lld bytes_downloaded=%llu deltas_applied=%llu "
               "full_downloads=%llu\n",
               (long long)s.clock_offset_us, (long long)s.clock_error_us, s.lagging,
               (unsigned long long)s.consecutive_failures,
               (unsigned long long)s.rejected_versions, max_read_ns,
               (unsigned long long)s.active_version, (unsigned long long)s.staged_version,
               take_p999_ns(), win_max_ns, s.host_role, s.unconfirmed,
               (unsigned long long)s.cache_failures, (long long)s.last_checkin_us,
               (long long)s.last_activation_mono_ns, win_reads, win_over_5ms,
               (unsigned long long)s.bytes_downloaded, (unsigned long long)s.deltas_applied,
               (unsigned long long)s.full_downloads);
        win_reads = win_over_5ms = 0;
        fflush(stdout);
        win_max_ns = 0;
      }
      next_stats = after + 200000000LL;
    }
    nanosleep(&pause, NULL);
  }
  long long closing = mono_ns();
  sync_close(h);
  printf("DONE %lld\n", mono_ns() - closing);
  fflush(stdout);
  return 0;
}
