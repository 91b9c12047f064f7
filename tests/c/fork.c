/*
 * A pre-fork server in miniature (gunicorn --preload): the parent opens a handle, waits until
 * a staged version is armed, and forks a worker that stays idle past the activation instant
 * before its first read.
 *
 * usage: fork URL KEY [EXTRA_OPTIONS]
 * output: READY active | ARMED staged at_mono_ns | CHILD version value | LATER version value
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lockstep.h"

static void sleep_until_mono_ns(long long at) {
  struct timespec ts = {(time_t)(at / 1000000000LL), (long)(at % 1000000000LL)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0) {
  }
}

static void report(sync_handle *h, const char *what, const char *key) {
  char value[256] = "-";
  size_t len = 0;
  uint64_t v = 0;
  sync_snapshot *snap = NULL;
  if (sync_snapshot_acquire(h, &snap) == SYNC_OK) {
    const uint8_t *p = NULL;
    sync_snapshot_version(snap, &v);
    if (sync_snapshot_get(snap, (const uint8_t *)key, strlen(key), &p, &len) == SYNC_OK &&
        len < sizeof value) {
      memcpy(value, p, len);
      value[len] = 0;
    }
    sync_snapshot_release(snap);
  }
  printf("%s %llu %s\n", what, (unsigned long long)v, value);
  fflush(stdout);
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 4) {
    fprintf(stderr, "usage: %s URL KEY [EXTRA_OPTIONS]\n", argv[0]);
    return 2;
  }
  char options[1024];
  int n = snprintf(options, sizeof options, "url=%s;name=preload;%s", argv[1],
                   argc == 4 ? argv[3] : "");
  if (n < 0 || (size_t)n >= sizeof options) return 2;
  sync_handle *h = NULL;
  if (sync_open(options, (size_t)n, &h) != SYNC_OK) return 1;
  uint64_t active = 0;
  sync_active_version(h, &active);
  printf("READY %llu\n", (unsigned long long)active);
  fflush(stdout);

  sync_stats s;
  for (;;) {
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    if (sync_stats_get(h, &s) == SYNC_OK && s.staged_version != 0) break;
    struct timespec pause = {0, 1000000};
    nanosleep(&pause, NULL);
  }
  printf("ARMED %llu %lld\n", (unsigned long long)s.staged_version,
         (long long)s.next_activation_mono_ns);
  fflush(stdout);

  pid_t child = fork();
  if (child < 0) return 1;
  if (child == 0) {
    /* Idle through the activation instant, as a worker with no requests is. */
    sleep_until_mono_ns(s.next_activation_mono_ns + 300000000LL);
    report(h, "CHILD", argv[2]);
    sleep(3);
    report(h, "LATER", argv[2]);
    sync_close(h);
    return 0;
  }
  int status = 0;
  waitpid(child, &status, 0);
  sync_close(h);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
