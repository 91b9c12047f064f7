/* Calls sync_get on random keys for the read-path profile (benches/profile_read_path.sh). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lockstep.h"

int main(int argc, char **argv) {
  if (argc != 4) return 2;
  int keys = atoi(argv[2]), calls = atoi(argv[3]);
  char opts[256];
  int len = snprintf(opts, sizeof opts, "url=%s;name=profile", argv[1]);
  sync_handle *h = NULL;
  if (sync_open(opts, (size_t)len, &h) != SYNC_OK) return 1;
  char key[64], buf[128];
  size_t n, total = 0;
  srand(7);
  for (int i = 0; i < calls; i++) {
    int k = snprintf(key, sizeof key, "key:%028d", rand() % keys);
    if (sync_get(h, (const uint8_t *)key, (size_t)k, (uint8_t *)buf, sizeof buf, &n) == SYNC_OK)
      total += n;
  }
  printf("%zu bytes read\n", total);
  sync_close(h);
  return 0;
}
