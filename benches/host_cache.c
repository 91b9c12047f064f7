/*
 * One web-server process for benches/host_cache.py: opens a handle with the given options,
 * reads one key in a loop, and reports on stdout, with CLOCK_MONOTONIC instants (one clock
 * for every process of the host, and the driver's time.monotonic_ns()):
 *
 *   START t                 when main() began
 *   OPEN t ok|failed msg    when sync_open returned
 *   FIRST t version         the first read that found a value
 *   SWITCH version t armed  the first read of each later version, and the instant the
 *                           library had armed it for (sync_stats.next_activation_mono_ns
 *                           just before; 0 if it was never armed: a late activation)
 *   CHECKINS t n role unconfirmed     on SIGUSR1: this handle's check-ins so far
 *   STATS role unconfirmed checkins   on SIGTERM, then the process exits
 *
 * usage: host_cache OPTIONS KEY
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "lockstep.h"

static volatile sig_atomic_t stop, report;

static void on_term(int sig) {
  (void)sig;
  stop = 1;
}

static void on_usr1(int sig) {
  (void)sig;
  report = 1;
}

static long long mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void get_stats(sync_handle *h, sync_stats *s) {
  memset(s, 0, sizeof *s);
  s->struct_size = sizeof *s;
  sync_stats_get(h, s);
}

int main(int argc, char **argv) {
  long long start = mono_ns();
  if (argc != 3) {
    fprintf(stderr, "usage: %s OPTIONS KEY\n", argv[0]);
    return 2;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, NULL);
  sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, NULL);
  printf("START %lld\n", start);
  sync_handle *h = NULL;
  sync_result r = sync_open(argv[1], strlen(argv[1]), &h);
  if (r != SYNC_OK) {
    char msg[512];
    size_t len = 0;
    sync_error_message(r, msg, sizeof msg, &len);
    printf("OPEN %lld failed %s\n", mono_ns(), msg);
    return 1;
  }
  printf("OPEN %lld ok\n", mono_ns());
  fflush(stdout);

  const char *key = argv[2];
  uint64_t last = 0, staged = 0;
  long long staged_at = 0;
  struct timespec pause = {0, 100000}; /* 100 µs between reads */
  while (!stop) {
    /* The version armed next and its instant, as the library holds them now (a check-in
     * may move the instant with a better clock estimate until the last moment). */
    sync_stats s;
    get_stats(h, &s);
    if (s.staged_version != 0) {
      staged = s.staged_version;
      staged_at = s.next_activation_mono_ns;
    }
    if (report) {
      report = 0;
      printf("CHECKINS %lld %llu %u %u\n", mono_ns(), (unsigned long long)s.checkins,
             s.host_role, s.unconfirmed);
      fflush(stdout);
    }
    long long before = mono_ns();
    uint64_t v = 0;
    sync_snapshot *snap = NULL;
    if (sync_snapshot_acquire(h, &snap) == SYNC_OK) {
      const uint8_t *p = NULL;
      size_t len = 0;
      if (sync_snapshot_get(snap, (const uint8_t *)key, strlen(key), &p, &len) == SYNC_OK) {
        sync_snapshot_version(snap, &v);
      }
      sync_snapshot_release(snap);
    }
    if (v != 0 && v != last) {
      if (last == 0) {
        printf("FIRST %lld %llu\n", before, (unsigned long long)v);
      } else {
        printf("SWITCH %llu %lld %lld\n", (unsigned long long)v, before,
               staged == v ? staged_at : 0LL);
      }
      fflush(stdout);
      last = v;
    }
    nanosleep(&pause, NULL);
  }
  sync_stats s;
  get_stats(h, &s);
  printf("STATS %u %u %llu\n", s.host_role, s.unconfirmed, (unsigned long long)s.checkins);
  fflush(stdout);
  sync_close(h);
  return 0;
}
