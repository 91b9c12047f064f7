/*
 * Every way a C caller can hold the ABI wrong gets a status, never a crash, and out-params
 * stay untouched on failure. Run under valgrind by tests/c_abi.rs.
 *
 * usage: misuse URL   (a data server holding price=12.50)
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "lockstep.h"

static int checks = 0, failures = 0;
#define CHECK(cond)                                                   \
  do {                                                                \
    checks++;                                                         \
    if (!(cond)) {                                                    \
      failures++;                                                     \
      fprintf(stderr, "misuse.c:%d: check failed: %s\n", __LINE__, #cond); \
    }                                                                 \
  } while (0)

#define SENTINEL ((sync_handle *)(uintptr_t)0xdeadbeef)

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s URL\n", argv[0]);
    return 2;
  }
  char opts[512];
  char msg[256];
  size_t n = 0;

  CHECK(sync_abi_version() == SYNC_ABI_VERSION);
  CHECK(strncmp(sync_version(), "lockstep ", 9) == 0);

  /* sync_open */
  sync_handle *h = SENTINEL;
  CHECK(sync_open(NULL, 0, NULL) == SYNC_NULL_PARAMETER);
  CHECK(sync_open(NULL, 5, &h) == SYNC_NULL_PARAMETER && h == SENTINEL);
  CHECK(sync_open("colour=blue", 11, &h) == SYNC_BAD_OPTION && h == SENTINEL);
  CHECK(sync_error_message(SYNC_BAD_OPTION, msg, sizeof msg, &n) == SYNC_OK);
  CHECK(strstr(msg, "colour") != NULL && n == strlen(msg));
  CHECK(sync_open("url=http://127.0.0.1:9;bootstrap_wait_ms=300", 44, &h) == SYNC_UNREACHABLE);
  CHECK(h == SENTINEL);
  CHECK(sync_error_message(SYNC_UNREACHABLE, msg, sizeof msg, &n) == SYNC_OK && n > 10);

  /* A handle that has no data yet answers NOT_READY, without blocking. */
  const char *lazy = "url=http://127.0.0.1:9;bootstrap_wait_ms=0;allow_not_ready=1";
  CHECK(sync_open(lazy, strlen(lazy), &h) == SYNC_OK && h != SENTINEL);
  char buf[64];
  uint64_t version = 777;
  CHECK(sync_get(h, (const uint8_t *)"price", 5, (uint8_t *)buf, sizeof buf, &n) ==
        SYNC_NOT_READY);
  CHECK(sync_active_version(h, &version) == SYNC_NOT_READY && version == 777);
  sync_snapshot *snap = (sync_snapshot *)SENTINEL;
  CHECK(sync_snapshot_acquire(h, &snap) == SYNC_NOT_READY && snap == (sync_snapshot *)SENTINEL);
  sync_close(h);

  /* A real handle. */
  int len = snprintf(opts, sizeof opts, "url=%s;name=misuse;bootstrap_wait_ms=10000", argv[1]);
  h = NULL;
  CHECK(sync_open(opts, (size_t)len, &h) == SYNC_OK && h != NULL);
  if (h == NULL) return 1;

  const uint8_t *key = (const uint8_t *)"price";
  n = 12345;
  CHECK(sync_get(NULL, key, 5, (uint8_t *)buf, sizeof buf, &n) == SYNC_NULL_PARAMETER);
  CHECK(sync_get(h, NULL, 5, (uint8_t *)buf, sizeof buf, &n) == SYNC_NULL_PARAMETER);
  CHECK(sync_get(h, key, 0, (uint8_t *)buf, sizeof buf, &n) == SYNC_INVALID_PARAMETER);
  CHECK(sync_get(h, key, 5, (uint8_t *)buf, sizeof buf, NULL) == SYNC_NULL_PARAMETER);
  CHECK(sync_get(h, key, 5, NULL, 8, &n) == SYNC_NULL_PARAMETER);
  CHECK(n == 12345);
  /* Asking for the length. */
  CHECK(sync_get(h, key, 5, NULL, 0, &n) == SYNC_BUFFER_TOO_SMALL && n == 5);
  /* Too small a buffer is left untouched. */
  memset(buf, 'x', sizeof buf);
  n = 0;
  CHECK(sync_get(h, key, 5, (uint8_t *)buf, 4, &n) == SYNC_BUFFER_TOO_SMALL && n == 5);
  CHECK(buf[0] == 'x' && buf[3] == 'x');
  CHECK(sync_get(h, key, 5, (uint8_t *)buf, 5, &n) == SYNC_OK && n == 5);
  CHECK(memcmp(buf, "12.50", 5) == 0);
  n = 999;
  CHECK(sync_get(h, (const uint8_t *)"nope", 4, (uint8_t *)buf, sizeof buf, &n) ==
        SYNC_NOT_FOUND && n == 999);

  CHECK(sync_active_version(NULL, &version) == SYNC_NULL_PARAMETER);
  CHECK(sync_active_version(h, NULL) == SYNC_NULL_PARAMETER);
  CHECK(sync_active_version(h, &version) == SYNC_OK && version >= 1);
  int64_t at = 0;
  CHECK(sync_staged_version(h, NULL, &at) == SYNC_NULL_PARAMETER);
  CHECK(sync_staged_version(h, &version, NULL) == SYNC_NULL_PARAMETER);
  CHECK(sync_next_activation(NULL, &at) == SYNC_NULL_PARAMETER);
  CHECK(sync_next_activation(h, &at) == SYNC_OK && at > 0);

  sync_stats stats;
  memset(&stats, 0, sizeof stats);
  CHECK(sync_stats_get(h, &stats) == SYNC_INVALID_PARAMETER);
  CHECK(sync_error_message(SYNC_INVALID_PARAMETER, msg, sizeof msg, &n) == SYNC_OK);
  CHECK(strstr(msg, "struct_size") != NULL);
  stats.struct_size = sizeof stats;
  CHECK(sync_stats_get(NULL, &stats) == SYNC_NULL_PARAMETER);
  CHECK(sync_stats_get(h, NULL) == SYNC_NULL_PARAMETER);
  CHECK(sync_stats_get(h, &stats) == SYNC_OK && stats.active_version >= 1 && stats.checkins >= 1);

  /* Snapshots. */
  CHECK(sync_snapshot_acquire(NULL, &snap) == SYNC_NULL_PARAMETER);
  CHECK(sync_snapshot_acquire(h, NULL) == SYNC_NULL_PARAMETER);
  snap = NULL;
  CHECK(sync_snapshot_acquire(h, &snap) == SYNC_OK && snap != NULL);
  const uint8_t *value = NULL;
  size_t value_len = 0;
  CHECK(sync_snapshot_get(NULL, key, 5, &value, &value_len) == SYNC_NULL_PARAMETER);
  CHECK(sync_snapshot_get(snap, NULL, 5, &value, &value_len) == SYNC_NULL_PARAMETER);
  CHECK(sync_snapshot_get(snap, key, 0, &value, &value_len) == SYNC_INVALID_PARAMETER);
  CHECK(sync_snapshot_get(snap, key, 5, NULL, &value_len) == SYNC_NULL_PARAMETER);
  CHECK(sync_snapshot_get(snap, key, 5, &value, NULL) == SYNC_NULL_PARAMETER);
  CHECK(sync_snapshot_get(snap, (const uint8_t *)"nope", 4, &value, &value_len) ==
        SYNC_NOT_FOUND && value == NULL);
  CHECK(sync_snapshot_get(snap, key, 5, &value, &value_len) == SYNC_OK && value_len == 5);
  CHECK(value != NULL && memcmp(value, "12.50", 5) == 0);
  uint64_t snap_version = 0;
  CHECK(sync_snapshot_version(NULL, &snap_version) == SYNC_NULL_PARAMETER);
  CHECK(sync_snapshot_version(snap, NULL) == SYNC_NULL_PARAMETER);
  CHECK(sync_snapshot_version(snap, &snap_version) == SYNC_OK && snap_version >= 1);
  sync_snapshot_release(NULL);

  /* Error messages. */
  CHECK(sync_error_message(SYNC_OK, NULL, 10, &n) == SYNC_NULL_PARAMETER);
  CHECK(sync_error_message(SYNC_OK, msg, 0, &n) == SYNC_INVALID_PARAMETER);
  CHECK(sync_error_message(SYNC_OK, msg, sizeof msg, NULL) == SYNC_NULL_PARAMETER);
  char tiny[4];
  CHECK(sync_error_message(SYNC_NOT_FOUND, tiny, sizeof tiny, &n) == SYNC_OK && n == 3);
  CHECK(tiny[3] == 0 && strcmp(tiny, "key") == 0);
  CHECK(sync_error_message(123456, msg, sizeof msg, &n) == SYNC_OK);
  CHECK(strcmp(msg, "unknown result code") == 0);
  CHECK(sync_last_error(NULL, msg, sizeof msg, &n) == SYNC_NULL_PARAMETER);
  CHECK(sync_last_error(h, msg, sizeof msg, &n) == SYNC_OK);

  /* A snapshot outlives its handle. */
  sync_close(h);
  CHECK(memcmp(value, "12.50", 5) == 0);
  sync_snapshot_release(snap);
  sync_close(NULL);

  printf("misuse: %d passed, %d failed\n", checks - failures, failures);
  return failures == 0 ? 0 : 1;
}
