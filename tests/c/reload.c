/*
 * Loading, using, closing and unloading liblockstep.so again and again must be safe: the
 * library is linked -z nodelete, so the retrieval thread's thread-locals and the atfork hook
 * never point into unmapped code.
 *
 * usage: reload PATH_TO_LIBLOCKSTEP URL
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "lockstep.h"

typedef sync_result (*open_fn)(const char *, size_t, sync_handle **);
typedef void (*close_fn)(sync_handle *);
typedef sync_result (*get_fn)(const sync_handle *, const uint8_t *, size_t, uint8_t *, size_t,
                              size_t *);

int main(int argc, char **argv) {
  if (argc != 3) return 2;
  char options[512];
  int len = snprintf(options, sizeof options, "url=%s;name=reload", argv[2]);
  for (int round = 0; round < 5; round++) {
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      fprintf(stderr, "dlopen: %s\n", dlerror());
      return 1;
    }
    open_fn op = (open_fn)dlsym(lib, "sync_open");
    close_fn cl = (close_fn)dlsym(lib, "sync_close");
    get_fn get = (get_fn)dlsym(lib, "sync_get");
    sync_handle *h = NULL;
    if (op(options, (size_t)len, &h) != SYNC_OK) return 1;
    char buf[16];
    size_t n = 0;
    if (get(h, (const uint8_t *)"price", 5, (uint8_t *)buf, sizeof buf, &n) != SYNC_OK ||
        n != 5 || memcmp(buf, "12.50", 5) != 0) {
      fprintf(stderr, "round %d: bad read\n", round);
      return 1;
    }
    cl(h);
    if (dlclose(lib) != 0) return 1;
  }
  printf("reload: ok\n");
  return 0;
}
