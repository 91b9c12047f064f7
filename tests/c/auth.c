/*
 * A token the data server refuses is SYNC_UNAUTHORIZED, never SYNC_UNREACHABLE: at open, and
 * in sync_stats.last_failure for a handle opened with allow_not_ready=1. And the detail of a
 * failure is gone once another call has run, so a message never describes an older failure.
 *
 * usage: auth URL READ_TOKEN   (a data server requiring READ_TOKEN, holding price=12.50)
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "lockstep.h"

static int checks = 0, failures = 0;
#define CHECK(cond)                                                   \
  do {                                                                \
    checks++;                                                         \
    if (!(cond)) {                                                    \
      failures++;                                                     \
      fprintf(stderr, "auth.c:%d: check failed: %s\n", __LINE__, #cond); \
    }                                                                 \
  } while (0)

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s URL READ_TOKEN\n", argv[0]);
    return 2;
  }
  const char *url = argv[1], *token = argv[2];
  char opts[512], msg[512];
  size_t n = 0;
  int len;
  sync_handle *h = NULL;

  /* A wrong token, and none at all: refused, not unreachable. */
  len = snprintf(opts, sizeof opts, "url=%s;token=wrong-%s;cache_dir=;bootstrap_wait_ms=3000",
                 url, token);
  sync_result r = sync_open(opts, (size_t)len, &h);
  CHECK(r == SYNC_UNAUTHORIZED);
  CHECK(h == NULL);
  CHECK(sync_error_message(r, msg, sizeof msg, &n) == SYNC_OK);
  CHECK(strstr(msg, "refused the read token") != NULL);
  CHECK(strstr(msg, "401") != NULL || strstr(msg, "403") != NULL);
  printf("wrong token: %s\n", msg);
  len = snprintf(opts, sizeof opts, "url=%s;cache_dir=;bootstrap_wait_ms=3000", url);
  r = sync_open(opts, (size_t)len, &h);
  CHECK(r == SYNC_UNAUTHORIZED);
  CHECK(sync_error_message(r, msg, sizeof msg, &n) == SYNC_OK && strstr(msg, "401") != NULL);

  /* Opened anyway: the kind of failure is in the stats, the text in sync_last_error. */
  len = snprintf(opts, sizeof opts,
                 "url=%s;token=wrong;cache_dir=;bootstrap_wait_ms=0;allow_not_ready=1", url);
  CHECK(sync_open(opts, (size_t)len, &h) == SYNC_OK && h != NULL);
  if (h == NULL) return 1;
  sync_stats stats;
  memset(&stats, 0, sizeof stats);
  stats.struct_size = sizeof stats;
  double deadline = now_s() + 10;
  while (now_s() < deadline) {
    CHECK(sync_stats_get(h, &stats) == SYNC_OK);
    if (stats.last_failure != SYNC_OK) break;
    sleep_ms(20);
  }
  CHECK(stats.last_failure == SYNC_UNAUTHORIZED);
  CHECK(sync_last_error(h, msg, sizeof msg, &n) == SYNC_OK);
  CHECK(strstr(msg, "401") != NULL || strstr(msg, "403") != NULL);
  char buf[64];
  CHECK(sync_get(h, (const uint8_t *)"price", 5, (uint8_t *)buf, sizeof buf, &n) ==
        SYNC_NOT_READY);
  sync_close(h);

  /* An unreachable data server stays unreachable. */
  const char *gone = "url=http://127.0.0.1:9;cache_dir=;bootstrap_wait_ms=300";
  CHECK(sync_open(gone, strlen(gone), &h) == SYNC_UNREACHABLE);

  /* The right token reads. */
  len = snprintf(opts, sizeof opts, "url=%s;token=%s;cache_dir=;bootstrap_wait_ms=10000", url,
                 token);
  h = NULL;
  CHECK(sync_open(opts, (size_t)len, &h) == SYNC_OK && h != NULL);
  if (h == NULL) return 1;
  r = SYNC_NOT_READY;
  deadline = now_s() + 10;
  while (now_s() < deadline) {
    r = sync_get(h, (const uint8_t *)"price", 5, (uint8_t *)buf, sizeof buf, &n);
    if (r == SYNC_OK) break;
    sleep_ms(20);
  }
  CHECK(r == SYNC_OK && n == 5 && memcmp(buf, "12.50", 5) == 0);
  CHECK(sync_stats_get(h, &stats) == SYNC_OK && stats.last_failure == SYNC_OK);

  /* A failure's detail is read back, and is gone after the next call, which succeeded. */
  sync_handle *never = NULL;
  CHECK(sync_open("colour=blue", 11, &never) == SYNC_BAD_OPTION);
  CHECK(sync_error_message(SYNC_BAD_OPTION, msg, sizeof msg, &n) == SYNC_OK);
  CHECK(strstr(msg, "colour") != NULL);
  /* Reading the message does not consume it. */
  CHECK(sync_error_message(SYNC_BAD_OPTION, msg, sizeof msg, &n) == SYNC_OK);
  CHECK(strstr(msg, "colour") != NULL);
  uint64_t version = 0;
  CHECK(sync_active_version(h, &version) == SYNC_OK);
  CHECK(sync_error_message(SYNC_BAD_OPTION, msg, sizeof msg, &n) == SYNC_OK);
  CHECK(strcmp(msg, "bad option") == 0);
  /* Nor does a later failure of another kind inherit it. */
  CHECK(sync_open("colour=blue", 11, &never) == SYNC_BAD_OPTION);
  CHECK(sync_get(h, (const uint8_t *)"price", 0, (uint8_t *)buf, sizeof buf, &n) ==
        SYNC_INVALID_PARAMETER);
  CHECK(sync_error_message(SYNC_BAD_OPTION, msg, sizeof msg, &n) == SYNC_OK);
  CHECK(strcmp(msg, "bad option") == 0);
  sync_close(h);

  printf("auth: %d passed, %d failed\n", checks - failures, failures);
  return failures == 0 ? 0 : 1;
}
