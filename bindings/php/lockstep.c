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
 *   lockstep.allow_not_ready, lockstep.cache_dir, lockstep.ca_file, lockstep.blob_url
 * lockstep.url, lockstep.token, lockstep.ca_file and lockstep.blob_url are PHP_INI_SYSTEM
 * (php.ini or FPM's php_admin_value; ini_set() cannot change them), and phpinfo() shows the
 * token as ********.
 * and `new Lockstep\Client([...])` overrides any of them. Clients made with the same settings
 * share one handle; a process holds at most LOCKSTEP_MAX_HANDLES different ones.
 *
 * Methods and arginfo come from lockstep.stub.php (lockstep_arginfo.h, generated).
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
#include "lockstep_arginfo.h"

/* Each handle runs a thread and holds versions in memory: a process needs one per data
 * server, and a handful covers every sane configuration; more is a bug in the caller (a new
 * option string per request, say), refused rather than leaked. */
#define LOCKSTEP_MAX_HANDLES 8
#define LOCKSTEP_OPTIONS_MAX 2048

typedef struct {
  char options[LOCKSTEP_OPTIONS_MAX];
  size_t len;
  sync_handle *handle;
} lockstep_process_handle;

/* This process's handles, opened on first use and kept until the module shuts down. */
static lockstep_process_handle lockstep_handles[LOCKSTEP_MAX_HANDLES];
static size_t lockstep_handle_count = 0;

static zend_class_entry *lockstep_client_ce;
static zend_class_entry *lockstep_snapshot_ce;
static zend_class_entry *lockstep_exception_ce;
static zend_class_entry *lockstep_unauthorized_ce;
static zend_class_entry *lockstep_unreachable_ce;
static zend_class_entry *lockstep_not_ready_ce;
static zend_object_handlers lockstep_snapshot_handlers;
static zend_object_handlers lockstep_client_handlers;

/* phpinfo() and ini_get_all() displays: a secret is never printed, only whether it is set. */
static ZEND_INI_DISP(lockstep_display_secret) {
  zend_string *value = type == ZEND_INI_DISPLAY_ORIG && ini_entry->modified
                           ? ini_entry->orig_value
                           : ini_entry->value;
  ZEND_PUTS(value && ZSTR_LEN(value) ? "********" : "no value");
}

PHP_INI_BEGIN()
/* System-wide only: request code that could point the worker's handle at another data
 * server or token (ini_set) could serve another farm's data to every later request. */
PHP_INI_ENTRY("lockstep.url", "http://127.0.0.1:7420", PHP_INI_SYSTEM, NULL)
PHP_INI_ENTRY_EX("lockstep.token", "", PHP_INI_SYSTEM, NULL, lockstep_display_secret)
/* A PEM file of the authorities an https:// data server is verified against (unset: the
 * system's roots). */
PHP_INI_ENTRY("lockstep.ca_file", NULL, PHP_INI_SYSTEM, NULL)
PHP_INI_ENTRY("lockstep.blob_url", NULL, PHP_INI_SYSTEM, NULL)
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
  zend_class_entry *ce = lockstep_exception_ce;
  switch (r) {
    case SYNC_UNAUTHORIZED: ce = lockstep_unauthorized_ce; break;
    case SYNC_UNREACHABLE: ce = lockstep_unreachable_ce; break;
    case SYNC_NOT_READY: ce = lockstep_not_ready_ce; break;
    default: break;
  }
  zend_throw_exception(ce, msg, (zend_long)r);
}

/* The settings a client opens with: the ini settings, overridden by the constructor's array. */
typedef struct {
  zend_string *url, *token, *name, *cache_dir; /* NULL: from ini */
  zend_long wait;
  zend_long lazy;
  zend_bool wait_set, lazy_set, cache_dir_set;
} lockstep_settings;

/* A value goes into the library's `key=value;...` string: ';' and newlines would end it. */
static int lockstep_option_ok(const char *key, const char *value, size_t len) {
  if (memchr(value, ';', len) != NULL || memchr(value, '\n', len) != NULL ||
      memchr(value, '\0', len) != NULL) {
    zend_argument_value_error(1, "option \"%s\" must not contain ';', a newline or NUL", key);
    return 0;
  }
  return 1;
}

/* Reads the constructor's options array into settings. 0 with an exception on a bad one. */
static int lockstep_settings_from_array(HashTable *options, lockstep_settings *st) {
  zend_string *key;
  zval *value;
  ZEND_HASH_FOREACH_STR_KEY_VAL(options, key, value) {
    if (key == NULL) {
      zend_argument_value_error(1, "must be an array keyed by option name");
      return 0;
    }
    const char *k = ZSTR_VAL(key);
    if (zend_string_equals_literal(key, "bootstrap_wait_ms")) {
      if (Z_TYPE_P(value) != IS_LONG || Z_LVAL_P(value) < 0) {
        zend_argument_value_error(1, "option \"bootstrap_wait_ms\" must be an int >= 0");
        return 0;
      }
      st->wait = Z_LVAL_P(value);
      st->wait_set = 1;
      continue;
    }
    if (zend_string_equals_literal(key, "allow_not_ready")) {
      st->lazy = zend_is_true(value) ? 1 : 0;
      st->lazy_set = 1;
      continue;
    }
    zend_string **slot = NULL;
    if (zend_string_equals_literal(key, "url")) {
      slot = &st->url;
    } else if (zend_string_equals_literal(key, "token")) {
      slot = &st->token;
    } else if (zend_string_equals_literal(key, "name")) {
      slot = &st->name;
    } else if (zend_string_equals_literal(key, "cache_dir")) {
      slot = &st->cache_dir;
      st->cache_dir_set = 1;
    } else {
      zend_argument_value_error(1, "has an unknown option \"%s\" (known: url, token, name, "
                                   "bootstrap_wait_ms, allow_not_ready, cache_dir)", k);
      return 0;
    }
    if (Z_TYPE_P(value) != IS_STRING) {
      zend_argument_value_error(1, "option \"%s\" must be a string", k);
      return 0;
    }
    if (!lockstep_option_ok(k, Z_STRVAL_P(value), Z_STRLEN_P(value))) return 0;
    *slot = Z_STR_P(value);
  } ZEND_HASH_FOREACH_END();
  return 1;
}

/* The handle for these settings, shared with every client of the process that has the same
 * ones, opened on first use. NULL with an exception thrown on failure. */
static sync_handle *lockstep_handle_for(const lockstep_settings *st) {
  const char *url = st->url ? ZSTR_VAL(st->url) : INI_STR("lockstep.url");
  const char *token = st->token ? ZSTR_VAL(st->token) : INI_STR("lockstep.token");
  const char *name = st->name ? ZSTR_VAL(st->name) : INI_STR("lockstep.name");
  zend_long wait = st->wait_set ? st->wait : INI_INT("lockstep.bootstrap_wait_ms");
  zend_long lazy = st->lazy_set ? st->lazy : INI_INT("lockstep.allow_not_ready");
  const char *cache_dir = st->cache_dir_set ? ZSTR_VAL(st->cache_dir) : INI_STR("lockstep.cache_dir");
  const char *ca_file = INI_STR("lockstep.ca_file");
  const char *blob_url = INI_STR("lockstep.blob_url");
  /* Compared without the pid: a fork()ed child keeps using the handle it inherited, which
   * the library carries across fork. */
  char options[LOCKSTEP_OPTIONS_MAX];
  char key[LOCKSTEP_OPTIONS_MAX];
  int len = 0;
  for (int pass = 0; pass < 2; pass++) {
    len = snprintf(pass ? options : key, LOCKSTEP_OPTIONS_MAX,
                   "url=%s;name=%s-%ld;bootstrap_wait_ms=%ld;allow_not_ready=%d%s%s%s%s%s%s%s%s",
                   url ? url : "", name && *name ? name : "php", pass ? (long)getpid() : 0L,
                   (long)wait, lazy ? 1 : 0, token && *token ? ";token=" : "",
                   token && *token ? token : "", cache_dir ? ";cache_dir=" : "",
                   cache_dir ? cache_dir : "", ca_file && *ca_file ? ";ca_file=" : "",
                   ca_file && *ca_file ? ca_file : "", blob_url && *blob_url ? ";blob_url=" : "",
                   blob_url && *blob_url ? blob_url : "");
    if (len < 0 || len >= LOCKSTEP_OPTIONS_MAX) {
      zend_throw_exception(lockstep_exception_ce, "lockstep settings are too long",
                           SYNC_BAD_OPTION);
      return NULL;
    }
    if (pass == 0) {
      for (size_t i = 0; i < lockstep_handle_count; i++) {
        lockstep_process_handle *p = &lockstep_handles[i];
        if (p->len == (size_t)len && memcmp(p->options, key, (size_t)len) == 0) {
          return p->handle;
        }
      }
    }
  }
  size_t key_len = strlen(key);
  if (lockstep_handle_count == LOCKSTEP_MAX_HANDLES) {
    zend_throw_exception_ex(lockstep_exception_ce, SYNC_INVALID_PARAMETER,
                            "this process already holds %d Lockstep handles with different "
                            "settings; reuse a client",
                            LOCKSTEP_MAX_HANDLES);
    return NULL;
  }
  sync_handle *h = NULL;
  sync_result r = sync_open(options, (size_t)len, &h);
  if (r != SYNC_OK) {
    throw_result(r);
    return NULL;
  }
  lockstep_process_handle *p = &lockstep_handles[lockstep_handle_count++];
  memcpy(p->options, key, key_len);
  p->len = key_len;
  p->handle = h;
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

/* Snapshot::get(string $key, mixed $default = null): mixed — from the pinned version;
 * $default is returned as given (get('k', 0) is 0, not "0"). */
PHP_METHOD(Lockstep_Snapshot, get) {
  zend_string *key;
  zval *def = NULL;
  ZEND_PARSE_PARAMETERS_START(1, 2)
  Z_PARAM_STR(key)
  Z_PARAM_OPTIONAL
  Z_PARAM_ZVAL(def)
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
  if (r == SYNC_NOT_FOUND) {
    if (def != NULL) RETURN_COPY(def);
    RETURN_NULL();
  }
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

/* ---- Lockstep\Client -------------------------------------------------------------------- */

typedef struct {
  sync_handle *handle; /* one of lockstep_handles; NULL until the constructor succeeds */
  zend_object std;
} lockstep_client_object;

static inline lockstep_client_object *client_from(zend_object *obj) {
  return (lockstep_client_object *)((char *)obj - XtOffsetOf(lockstep_client_object, std));
}

static zend_object *client_create(zend_class_entry *ce) {
  lockstep_client_object *o = zend_object_alloc(sizeof(lockstep_client_object), ce);
  o->handle = NULL;
  zend_object_std_init(&o->std, ce);
  object_properties_init(&o->std, ce);
  o->std.handlers = &lockstep_client_handlers;
  return &o->std;
}

/* The client's handle; NULL with an exception for an object made without its constructor. */
static sync_handle *this_handle(zval *this_ptr) {
  sync_handle *h = client_from(Z_OBJ_P(this_ptr))->handle;
  if (h == NULL) {
    zend_throw_exception(lockstep_exception_ce, "client is not initialised",
                         SYNC_NULL_PARAMETER);
  }
  return h;
}

/* Client::__construct(array $options = []): the process's handle for these settings. */
PHP_METHOD(Lockstep_Client, __construct) {
  HashTable *options = NULL;
  ZEND_PARSE_PARAMETERS_START(0, 1)
  Z_PARAM_OPTIONAL
  Z_PARAM_ARRAY_HT(options)
  ZEND_PARSE_PARAMETERS_END();
  lockstep_settings st;
  memset(&st, 0, sizeof st);
  if (options != NULL && !lockstep_settings_from_array(options, &st)) RETURN_THROWS();
  sync_handle *h = lockstep_handle_for(&st);
  if (h == NULL) RETURN_THROWS();
  client_from(Z_OBJ_P(ZEND_THIS))->handle = h;
}

/* Client::get(string $key, mixed $default = null): mixed — from the version active now;
 * $default is returned as given (get('k', 0) is 0, not "0"). */
PHP_METHOD(Lockstep_Client, get) {
  zend_string *key;
  zval *def = NULL;
  ZEND_PARSE_PARAMETERS_START(1, 2)
  Z_PARAM_STR(key)
  Z_PARAM_OPTIONAL
  Z_PARAM_ZVAL(def)
  ZEND_PARSE_PARAMETERS_END();
  sync_handle *h = this_handle(ZEND_THIS);
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
  if (r == SYNC_NOT_FOUND) {
    if (def != NULL) RETURN_COPY(def);
    RETURN_NULL();
  }
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
      if (r == SYNC_NOT_FOUND) {
        if (def != NULL) RETURN_STR_COPY(def);
        RETURN_NULL();
      }
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
  sync_handle *h = this_handle(ZEND_THIS);
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
  sync_handle *h = this_handle(ZEND_THIS);
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
  sync_handle *h = this_handle(ZEND_THIS);
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
  /* 0, or the status of the last retrieval failure: 7 unreachable, 10 token refused. */
  add_assoc_long(return_value, "last_failure", (zend_long)s.last_failure);
  /* Bytes received for versions and deltas as transferred; versions rebuilt from a delta;
   * versions downloaded whole. */
  add_assoc_long(return_value, "bytes_downloaded", (zend_long)s.bytes_downloaded);
  add_assoc_long(return_value, "deltas_applied", (zend_long)s.deltas_applied);
  add_assoc_long(return_value, "full_downloads", (zend_long)s.full_downloads);
  add_assoc_long(return_value, "pid", (zend_long)getpid());
}

/* Client::snapshot(): Lockstep\Snapshot — pins the active version for one request. */
PHP_METHOD(Lockstep_Client, snapshot) {
  ZEND_PARSE_PARAMETERS_NONE();
  sync_handle *h = this_handle(ZEND_THIS);
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
  lockstep_exception_ce = register_class_Lockstep_Exception(spl_ce_RuntimeException);
  lockstep_unauthorized_ce = register_class_Lockstep_UnauthorizedException(lockstep_exception_ce);
  lockstep_unreachable_ce = register_class_Lockstep_UnreachableException(lockstep_exception_ce);
  lockstep_not_ready_ce = register_class_Lockstep_NotReadyException(lockstep_exception_ce);

  lockstep_client_ce = register_class_Lockstep_Client();
  lockstep_client_ce->create_object = client_create;
  memcpy(&lockstep_client_handlers, zend_get_std_object_handlers(),
         sizeof lockstep_client_handlers);
  lockstep_client_handlers.offset = XtOffsetOf(lockstep_client_object, std);
  lockstep_client_handlers.clone_obj = NULL;

  lockstep_snapshot_ce = register_class_Lockstep_Snapshot();
  lockstep_snapshot_ce->create_object = snapshot_create;
  memcpy(&lockstep_snapshot_handlers, zend_get_std_object_handlers(),
         sizeof lockstep_snapshot_handlers);
  lockstep_snapshot_handlers.offset = XtOffsetOf(lockstep_snapshot_object, std);
  lockstep_snapshot_handlers.free_obj = snapshot_free;
  lockstep_snapshot_handlers.clone_obj = NULL;
  return SUCCESS;
}

PHP_MSHUTDOWN_FUNCTION(lockstep) {
  for (size_t i = 0; i < lockstep_handle_count; i++) {
    sync_close(lockstep_handles[i].handle);
    lockstep_handles[i].handle = NULL;
  }
  lockstep_handle_count = 0;
  UNREGISTER_INI_ENTRIES();
  return SUCCESS;
}

PHP_MINFO_FUNCTION(lockstep) {
  php_info_print_table_start();
  php_info_print_table_header(2, "lockstep support", "enabled");
  php_info_print_table_row(2, "extension version", PHP_LOCKSTEP_VERSION);
  php_info_print_table_row(2, "library", sync_version());
  char count[32];
  snprintf(count, sizeof count, "%zu", lockstep_handle_count);
  php_info_print_table_row(2, "handles open in this process", count);
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
