/*
 * Prints a key's value whenever the active version changes.
 *
 *   make -C examples/c
 *   examples/c/watch http://127.0.0.1:7420 price:apple
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "lockstep.h"

static volatile sig_atomic_t stop = 0;
static void on_signal(int sig) { (void)sig; stop = 1; }

static void print_error(const char *what, sync_result r) {
  char msg[512];
  size_t n;
  sync_error_message(r, msg, sizeof msg, &n);
  fprintf(stderr, "watch: %s: %s\n", what, msg);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s URL KEY\n", argv[0]);
    return 2;
  }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);

  char options[1024];
  int len = snprintf(options, sizeof options, "url=%s;name=watch", argv[1]);
  sync_handle *h = NULL;
  sync_result r = sync_open(options, (size_t)len, &h);
  if (r != SYNC_OK) {
    print_error("sync_open", r);
    return 1;
  }
  printf("%s, watching %s\n", sync_version(), argv[2]);
  fflush(stdout);

  uint64_t shown = 0;
  char value[4096];
  struct timespec tick = {0, 1000000}; /* 1 ms */
  while (!stop) {
    uint64_t version = 0;
    if (sync_active_version(h, &version) == SYNC_OK && version != shown) {
      size_t n = 0;
      r = sync_get(h, (const uint8_t *)argv[2], strlen(argv[2]), (uint8_t *)value,
                   sizeof value - 1, &n);
      sync_stats stats;
      memset(&stats, 0, sizeof stats);
      stats.struct_size = sizeof stats;
      sync_stats_get(h, &stats);
      if (r == SYNC_OK) {
        value[n] = 0;
        printf("version %llu: %s = %s (clock offset %+.3f ms ± %.3f ms%s)\n",
               (unsigned long long)version, argv[2], value, stats.clock_offset_us / 1000.0,
               stats.clock_error_us / 1000.0, stats.lagging ? ", lagging" : "");
      } else if (r == SYNC_NOT_FOUND) {
        printf("version %llu: %s is not set\n", (unsigned long long)version, argv[2]);
      } else {
        print_error("sync_get", r);
      }
      fflush(stdout);
      shown = version;
    }
    nanosleep(&tick, NULL);
  }
  sync_close(h);
  return 0;
}
