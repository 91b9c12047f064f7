/*
 * Lockstep for PHP: Lockstep\Client over liblockstep.so's C ABI.
 *
 * One handle per process, opened lazily on first use and kept for the life of the process.
 * Under PHP-FPM that is one handle per worker, opened in the worker (the master never runs a
 * request, so it never opens one and never starts a thread), and reused by every request the
 * worker serves. We do not open in MINIT: that runs in the FPM master before it forks, and
 * although liblockstep carries a handle across fork(), each worker would then share the
 * master's farm identity until its first call. Opening in the worker is simpler to reason
 * about and shows every worker in `lockstep status` under its own pid.
 *
 * Configuration is read from ini settings at that first use:
 *   lockstep.url, lockstep.token, lockstep.name, lockstep.bootstrap_wait_ms,
 *   lockstep.allow_not_ready
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <unistd.h>

#include "php.h"
#include "php_ini.h"
#include "ext/standard/info.h"
#include "ext/spl/spl_exceptions.h"
#include "zend_exceptions.h"
#include "zend_interfaces.h"

#include "php_lockstep.h"
#include "lockstep.h"

static sync_handle *lockstep_handle = NULL;

static zend_class_entry *lockstep_client_ce;
static zend_class_entry *lockstep_snapshot_ce;
static zend_class_entry *lockstep_exception_ce;
static zend_object_handlers lockstep_snapshot_handlers;

PHP_INI_BEGIN()
PHP_INI_ENTRY("lockstep.url", "http://127.0.0.1:7420", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("lockstep.token", "", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("lockstep.name", "php", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("lockstep.bootstrap_wait_ms", "5000", PHP_INI_ALL, NULL)
PHP_INI_ENTRY("lockstep.allow_not_ready", "0", PHP_INI_ALL, NULL)
/* Unset: the library's default host cache (/var/tmp/lockstep-<uid>); empty: off. */
PHP_INI_ENTRY("lockstep.cache_dir", NULL, PHP_INI_SYSTEM, NULL)
PHP_INI_END()

static void throw_result(sync_result r) {
  char msg[1024];
  size_t n = 0;
  if (sync_error_message(r, msg, sizeof msg, &n) != SYNC_OK) {
    snprintf(msg, sizeof msg, "lockstep error %u", (unsigned)r);
  }
  zend_throw_exception(lockstep_exception_ce, msg, (zend_long)r);
}

/* The process's handle, opened on first use. NULL with an exception thrown on failure. */
static sync_handle *process_handle(void) {
  if (lockstep_handle != NULL) {
    return lockstep_handle;
  }
  const char *url = INI_STR("lockstep.url");
  const char *token = INI_STR("lockstep.token");
  const char *name = INI_STR("lockstep.name");
  zend_long wait = INI_INT("lockstep.bootstrap_wait_ms");
  zend_long lazy = INI_INT("lockstep.allow_not_ready");
  const char *cache_dir = INI_STR("lockstep.cache_dir");
  char options[2048];
  int len = snprintf(options, sizeof options,
                     "url=%s;name=%s-%ld;bootstrap_wait_ms=%ld;allow_not_ready=%d%s%s%s%s",
                     url ? url : "", name && *name ? name : "php", (long)getpid(), (long)wait,
                     lazy ? 1 : 0, token && *token ? ";token=" : "", token && *token ? token : "",
                     cache_dir ? ";cache_dir=" : "", cache_dir ? cache_dir : "");
  if (len < 0 || (size_t)len >= sizeof options) {
    zend_throw_exception(lockstep_exception_ce, "lockstep ini settings are too long",
                         SYNC_BAD_OPTION);
    return NULL;
  }
  sync_handle *h = NULL;
  sync_result r = sync_open(options, (size_t)len, &h);
  if (r != SYNC_OK) {
    throw_result(r);
    return NULL;
  }
  lockstep_handle = h;
  return h;
}

/* ---- Lockstep\Snapshot ------------------------------------------------------------------ */

typedef struct {
  sync_snapshot *snapshot;
  zend_object std;
} lockstep_snapshot_object;

static inline lockstep_snapshot_object *snapshot_from(zend_object *obj) {
  return (lockstep_snapshot_object *)((char *)obj - XtOffsetOf(lockstep_snapshot_object, std));
}

static zend_object *snapshot_create(zend_class_entry *ce) {
  lockstep_snapshot_object *o = zend_object_alloc(sizeof(lockstep_snapshot_object), ce);
  o->snapshot = NULL;
  zend_object_std_init(&o->std, ce);
  object_properties_init(&o->std, ce);
  o->std.handlers = &lockstep_snapshot_handlers;
  return &o->std;
}

static void snapshot_free(zend_object *obj) {
  lockstep_snapshot_object *o = snapshot_from(obj);
  sync_snapshot_release(o->snapshot); /* NULL is a no-op */
  o->snapshot = NULL;
  zend_object_std_dtor(obj);
}

static sync_snapshot *this_snapshot(zval *this_ptr) {
  sync_snapshot *s = snapshot_from(Z_OBJ_P(this_ptr))->snapshot;
  if (s == NULL) {
    zend_throw_exception(lockstep_exception_ce, "snapshot is not initialised",
                         SYNC_NULL_PARAMETER);
  }
  return s;
}

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_get, 0, 1, IS_STRING, 1)
ZEND_ARG_TYPE_INFO(0, key, IS_STRING, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_int, 0, 0, IS_LONG, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_TYPE_INFO_EX(arginfo_array, 0, 0, IS_ARRAY, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_WITH_RETURN_OBJ_INFO_EX(arginfo_snapshot, 0, 0, Lockstep\\Snapshot, 0)
ZEND_END_ARG_INFO()

ZEND_BEGIN_ARG_INFO_EX(arginfo_void, 0, 0, 0)
ZEND_END_ARG_INFO()

/* Snapshot::get(string $key): ?string — from the pinned version. */
PHP_METHOD(Lockstep_Snapshot, get) {
  zend_string *key;
  ZEND_PARSE_PARAMETERS_START(1, 1)
  Z_PARAM_STR(key)
  ZEND_PARSE_PARAMETERS_END();
  sync_snapshot *s = this_snapshot(ZEND_THIS);
  if (s == NULL) RETURN_THROWS();
  if (ZSTR_LEN(key) == 0) {
    zend_argument_value_error(1, "must not be empty");
    RETURN_THROWS();
  }
  const uint8_t *value = NULL;
  size_t len = 0;
  sync_result r = sync_snapshot_get(s, (const uint8_t *)ZSTR_VAL(key), ZSTR_LEN(key), &value, &len);
  if (r == SYNC_NOT_FOUND) RETURN_NULL();
  if (r != SYNC_OK) {
    throw_result(r);
    RETURN_THROWS();
  }
  RETURN_STRINGL((const char *)value, len);
}

/* Snapshot::version(): int */
PHP_METHOD(Lockstep_Snapshot, version) {
  ZEND_PARSE_PARAMETERS_NONE();
  sync_snapshot *s = this_snapshot(ZEND_THIS);
  if (s == NULL) RETURN_THROWS();
  uint64_t v = 0;
  sync_result r = sync_snapshot_version(s, &v);
  if (r != SYNC_OK) {
    throw_result(r);
    RETURN_THROWS();
  }
  RETURN_LONG((zend_long)v);
}

PHP_METHOD(Lockstep_Snapshot, __construct) {
  ZEND_PARSE_PARAMETERS_NONE();
  zend_throw_error(NULL, "Lockstep\\Snapshot is made by Lockstep\\Client::snapshot()");
}

static const zend_function_entry snapshot_methods[] = {
    PHP_ME(Lockstep_Snapshot, __construct, arginfo_void, ZEND_ACC_PRIVATE)
    PHP_ME(Lockstep_Snapshot, get, arginfo_get, ZEND_ACC_PUBLIC)
    PHP_ME(Lockstep_Snapshot, version, arginfo_int, ZEND_ACC_PUBLIC)
    PHP_FE_END};

/* ---- Lockstep\Client -------------------------------------------------------------------- */

/* Client::__construct(): attaches to this process's handle (opening it on first use). */
PHP_METHOD(Lockstep_Client, __construct) {
  ZEND_PARSE_PARAMETERS_NONE();
  if (process_handle() == NULL) RETURN_THROWS();
}

/* Client::get(string $key): ?string — from the version active now. */
PHP_METHOD(Lockstep_Client, get) {
  zend_string *key;
  ZEND_PARSE_PARAMETERS_START(1, 1)
  Z_PARAM_STR(key)
  ZEND_PARSE_PARAMETERS_END();
  sync_handle *h = process_handle();
  if (h == NULL) RETURN_THROWS();
  if (ZSTR_LEN(key) == 0) {
    zend_argument_value_error(1, "must not be empty");
    RETURN_THROWS();
  }
  char small[512];
  size_t len = 0;
  sync_result r = sync_get(h, (const uint8_t *)ZSTR_VAL(key), ZSTR_LEN(key), (uint8_t *)small,
                           sizeof small, &len);
  if (r == SYNC_OK) RETURN_STRINGL(small, len);
  if (r == SYNC_NOT_FOUND) RETURN_NULL();
  if (r == SYNC_BUFFER_TOO_SMALL) {
    /* Larger values: read straight into the string we return. The version cannot change
     * between the calls in a way that matters: a longer value just asks again. */
    for (int attempt = 0; attempt < 4; attempt++) {
      zend_string *out = zend_string_alloc(len, 0);
      size_t got = 0;
      r = sync_get(h, (const uint8_t *)ZSTR_VAL(key), ZSTR_LEN(key), (uint8_t *)ZSTR_VAL(out),
                   len, &got);
      if (r == SYNC_OK) {
        out = zend_string_truncate(out, got, 0);
        ZSTR_VAL(out)[got] = '\0';
        RETURN_NEW_STR(out);
      }
      zend_string_efree(out);
      if (r == SYNC_NOT_FOUND) RETURN_NULL();
      if (r != SYNC_BUFFER_TOO_SMALL) break;
      len = got > len ? got : len;
    }
  }
  throw_result(r);
  RETURN_THROWS();
}

/* Client::activeVersion(): int — 0 before the first version arrives. */
PHP_METHOD(Lockstep_Client, activeVersion) {
  ZEND_PARSE_PARAMETERS_NONE();
  sync_handle *h = process_handle();
  if (h == NULL) RETURN_THROWS();
  uint64_t v = 0;
  sync_result r = sync_active_version(h, &v);
  if (r == SYNC_NOT_READY) RETURN_LONG(0);
  if (r != SYNC_OK) {
    throw_result(r);
    RETURN_THROWS();
  }
  RETURN_LONG((zend_long)v);
}

/* Client::stagedVersion(): int — 0 when nothing is staged. */
PHP_METHOD(Lockstep_Client, stagedVersion) {
  ZEND_PARSE_PARAMETERS_NONE();
  sync_handle *h = process_handle();
  if (h == NULL) RETURN_THROWS();
  uint64_t v = 0;
  int64_t at = 0;
  sync_result r = sync_staged_version(h, &v, &at);
  if (r == SYNC_NOT_FOUND) RETURN_LONG(0);
  if (r != SYNC_OK) {
    throw_result(r);
    RETURN_THROWS();
  }
  RETURN_LONG((zend_long)v);
}

/* Client::stats(): array */
PHP_METHOD(Lockstep_Client, stats) {
  ZEND_PARSE_PARAMETERS_NONE();
  sync_handle *h = process_handle();
  if (h == NULL) RETURN_THROWS();
  sync_stats s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  sync_result r = sync_stats_get(h, &s);
  if (r != SYNC_OK) {
    throw_result(r);
    RETURN_THROWS();
  }
  array_init(return_value);
  add_assoc_long(return_value, "active_version", (zend_long)s.active_version);
  add_assoc_long(return_value, "staged_version", (zend_long)s.staged_version);
  add_assoc_long(return_value, "next_activation_us", (zend_long)s.next_activation_us);
  add_assoc_long(return_value, "last_checkin_us", (zend_long)s.last_checkin_us);
  add_assoc_long(return_value, "consecutive_failures", (zend_long)s.consecutive_failures);
  add_assoc_long(return_value, "clock_offset_us", (zend_long)s.clock_offset_us);
  add_assoc_long(return_value, "clock_error_us", (zend_long)s.clock_error_us);
  add_assoc_bool(return_value, "lagging", s.lagging != 0);
  add_assoc_long(return_value, "checkins", (zend_long)s.checkins);
  add_assoc_long(return_value, "activations", (zend_long)s.activations);
  add_assoc_long(return_value, "rejected_versions", (zend_long)s.rejected_versions);
  add_assoc_long(return_value, "last_activation_us", (zend_long)s.last_activation_us);
  add_assoc_long(return_value, "host_role", (zend_long)s.host_role);
  add_assoc_bool(return_value, "unconfirmed", s.unconfirmed != 0);
  add_assoc_long(return_value, "confirmed_us", (zend_long)s.confirmed_us);
  add_assoc_long(return_value, "cache_failures", (zend_long)s.cache_failures);
  add_assoc_long(return_value, "pid", (zend_long)getpid());
}

/* Client::snapshot(): Lockstep\Snapshot — pins the active version for one request. */
PHP_METHOD(Lockstep_Client, snapshot) {
  ZEND_PARSE_PARAMETERS_NONE();
  sync_handle *h = process_handle();
  if (h == NULL) RETURN_THROWS();
  sync_snapshot *s = NULL;
  sync_result r = sync_snapshot_acquire(h, &s);
  if (r != SYNC_OK) {
    throw_result(r);
    RETURN_THROWS();
  }
  object_init_ex(return_value, lockstep_snapshot_ce);
  snapshot_from(Z_OBJ_P(return_value))->snapshot = s;
}

static const zend_function_entry client_methods[] = {
    PHP_ME(Lockstep_Client, __construct, arginfo_void, ZEND_ACC_PUBLIC)
    PHP_ME(Lockstep_Client, get, arginfo_get, ZEND_ACC_PUBLIC)
    PHP_ME(Lockstep_Client, activeVersion, arginfo_int, ZEND_ACC_PUBLIC)
    PHP_ME(Lockstep_Client, stagedVersion, arginfo_int, ZEND_ACC_PUBLIC)
    PHP_ME(Lockstep_Client, stats, arginfo_array, ZEND_ACC_PUBLIC)
    PHP_ME(Lockstep_Client, snapshot, arginfo_snapshot, ZEND_ACC_PUBLIC)
    PHP_FE_END};

/* ---- module ----------------------------------------------------------------------------- */

PHP_MINIT_FUNCTION(lockstep) {
  REGISTER_INI_ENTRIES();
  if (sync_abi_version() != SYNC_ABI_VERSION) {
    php_error_docref(NULL, E_CORE_WARNING,
                     "liblockstep ABI version %u does not match the %u this extension was built "
                     "for; the extension is disabled",
                     sync_abi_version(), (unsigned)SYNC_ABI_VERSION);
    return FAILURE;
  }
  zend_class_entry ce;
  INIT_NS_CLASS_ENTRY(ce, "Lockstep", "Exception", NULL);
  lockstep_exception_ce = zend_register_internal_class_ex(&ce, spl_ce_RuntimeException);

  INIT_NS_CLASS_ENTRY(ce, "Lockstep", "Client", client_methods);
  lockstep_client_ce = zend_register_internal_class(&ce);
  lockstep_client_ce->ce_flags |= ZEND_ACC_FINAL;

  INIT_NS_CLASS_ENTRY(ce, "Lockstep", "Snapshot", snapshot_methods);
  lockstep_snapshot_ce = zend_register_internal_class(&ce);
  lockstep_snapshot_ce->ce_flags |= ZEND_ACC_FINAL | ZEND_ACC_NOT_SERIALIZABLE;
  lockstep_snapshot_ce->create_object = snapshot_create;
  memcpy(&lockstep_snapshot_handlers, zend_get_std_object_handlers(),
         sizeof lockstep_snapshot_handlers);
  lockstep_snapshot_handlers.offset = XtOffsetOf(lockstep_snapshot_object, std);
  lockstep_snapshot_handlers.free_obj = snapshot_free;
  lockstep_snapshot_handlers.clone_obj = NULL;
  return SUCCESS;
}

PHP_MSHUTDOWN_FUNCTION(lockstep) {
  sync_close(lockstep_handle); /* NULL is a no-op */
  lockstep_handle = NULL;
  UNREGISTER_INI_ENTRIES();
  return SUCCESS;
}

PHP_MINFO_FUNCTION(lockstep) {
  php_info_print_table_start();
  php_info_print_table_header(2, "lockstep support", "enabled");
  php_info_print_table_row(2, "extension version", PHP_LOCKSTEP_VERSION);
  php_info_print_table_row(2, "library", sync_version());
  php_info_print_table_row(2, "handle open in this process", lockstep_handle ? "yes" : "no");
  php_info_print_table_end();
  DISPLAY_INI_ENTRIES();
}

zend_module_entry lockstep_module_entry = {STANDARD_MODULE_HEADER,
                                           "lockstep",
                                           NULL,
                                           PHP_MINIT(lockstep),
                                           PHP_MSHUTDOWN(lockstep),
                                           NULL,
                                           NULL,
                                           PHP_MINFO(lockstep),
                                           PHP_LOCKSTEP_VERSION,
                                           STANDARD_MODULE_PROPERTIES};

#ifdef COMPILE_DL_LOCKSTEP
ZEND_GET_MODULE(lockstep)
#endif
