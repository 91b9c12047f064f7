/*
 * A host process for the hostile-server tests: opens HANDLES handles with the same options,
 * reads KEY through every one of them in a loop for SECONDS, and reports what the host looks
 * like from the outside: resident memory, and what each handle serves.
 *
 * usage: host OPTIONS KEY SECONDS HANDLES
 * output: READY | TICK rss_kb=.. vm_kb=.. active=.. failures=.. rejected=.. value=.. | DONE
 * (active, failures and rejected are summed over the handles; value is handle 0's read)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lockstep.h"

#define MAX_HANDLES 8

static long long mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Resident and virtual memory, kB: what the host holds, and what it has reserved. */
static void memory_kb(long *rss, long *vm) {
  long pages_total = -1, pages_resident = -1;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f) {
    if (fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2) pages_total = pages_resident = -1;
    fclose(f);
  }
  long kb = sysconf(_SC_PAGESIZE) / 1024;
  *rss = pages_resident * kb;
  *vm = pages_total * kb;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s OPTIONS KEY SECONDS HANDLES\n", argv[0]);
    return 2;
  }
  const char *options = argv[1], *key = argv[2];
  int handles = atoi(argv[4]);
  if (handles < 1 || handles > MAX_HANDLES) return 2;
  sync_handle *h[MAX_HANDLES] = {0};
  for (int i = 0; i < handles; i++) {
    sync_result r = sync_open(options, strlen(options), &h[i]);
    if (r != SYNC_OK) {
      char msg[512];
      size_t len;
      sync_error_message(r, msg, sizeof msg, &len);
      fprintf(stderr, "host: sync_open: %s\n", msg);
      return 1;
    }
  }
  printf("READY\n");
  fflush(stdout);
  long long end = mono_ns() + (long long)(atof(argv[3]) * 1e9), next_tick = 0;
  struct timespec pause = {0, 1000000};
  while (mono_ns() < end) {
    char value[256] = "-";
    for (int i = 0; i < handles; i++) {
      char buf[255];
      size_t len = 0;
      if (sync_get(h[i], (const uint8_t *)key, strlen(key), (uint8_t *)buf, sizeof buf, &len) ==
              SYNC_OK &&
          i == 0) {
        memcpy(value, buf, len);
        value[len] = 0;
      }
    }
    if (mono_ns() >= next_tick) {
      unsigned long long active = 0, failures = 0, rejected = 0;
      for (int i = 0; i < handles; i++) {
        sync_stats s;
        memset(&s, 0, sizeof s);
        s.struct_size = sizeof s;
        if (sync_stats_get(h[i], &s) == SYNC_OK) {
          active += s.active_version;
          failures += s.consecutive_failures;
          rejected += s.rejected_versions;
        }
      }
      long rss, vm;
      memory_kb(&rss, &vm);
      printf("TICK rss_kb=%ld vm_kb=%ld active=%llu failures=%llu rejected=%llu value=%s\n", rss, vm,
             active, failures, rejected, value);
      fflush(stdout);
      next_tick = mono_ns() + 100000000LL;
    }
    nanosleep(&pause, NULL);
  }
  for (int i = 0; i < handles; i++) sync_close(h[i]);
  printf("DONE\n");
  return 0;
}
