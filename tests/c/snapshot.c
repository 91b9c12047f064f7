/*
 * Invariant 3 from C: every read within one pinned snapshot comes from one version, even when
 * an activation happens between the reads. Keys "a" and "b" are always edited together with
 * the same tag ("7:a", "7:b").
 *
 * usage: snapshot URL SECONDS
 * output: SNAPSHOTS total spanning_activation mismatched
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lockstep.h"

static long long mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The tag of a value: the part before ':'. */
static size_t tag_len(const uint8_t *v, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (v[i] == ':') return i;
  return n;
}

int main(int argc, char **argv) {
  if (argc != 3) return 2;
  char options[512];
  int len = snprintf(options, sizeof options, "url=%s;name=snapshot", argv[1]);
  sync_handle *h = NULL;
  if (sync_open(options, (size_t)len, &h) != SYNC_OK) return 1;
  long long end = mono_ns() + (long long)(atof(argv[2]) * 1e9);
  long total = 0, spanning = 0, mismatched = 0;
  struct timespec gap = {0, 2000000}; /* 2 ms between the two reads */
  while (mono_ns() < end) {
    uint64_t before = 0, after = 0;
    sync_active_version(h, &before);
    sync_snapshot *s = NULL;
    if (sync_snapshot_acquire(h, &s) != SYNC_OK) return 1;
    const uint8_t *a = NULL, *b = NULL;
    size_t an = 0, bn = 0;
    int ra = sync_snapshot_get(s, (const uint8_t *)"a", 1, &a, &an);
    nanosleep(&gap, NULL);
    int rb = sync_snapshot_get(s, (const uint8_t *)"b", 1, &b, &bn);
    sync_active_version(h, &after);
    if (ra == SYNC_OK && rb == SYNC_OK) {
      total++;
      if (after != before) spanning++;
      size_t ta = tag_len(a, an), tb = tag_len(b, bn);
      if (ta != tb || memcmp(a, b, ta) != 0) {
        mismatched++;
        fprintf(stderr, "mixed versions: a=%.*s b=%.*s\n", (int)an, a, (int)bn, b);
      }
    }
    sync_snapshot_release(s);
  }
  sync_close(h);
  printf("SNAPSHOTS %ld %ld %ld\n", total, spanning, mismatched);
  return 0;
}
