/*
 * ngx_http_lockstep_module: serves values from liblockstep's synchronized cache.
 *
 *   load_module modules/ngx_http_lockstep_module.so;
 *   http {
 *     lockstep_url  http://127.0.0.1:7420;
 *     lockstep_name web-1;                       # shown in `lockstep status`, with the pid
 *     # lockstep_token secret;  lockstep_bootstrap_wait 2s;
 *     server {
 *       location /prices/ { lockstep_serve; }     # GET /prices/<key> -> the value
 *       add_header X-Lockstep-Version $lockstep_version;
 *     }
 *   }
 *
 * Each worker opens its own handle in init_process (the master never opens one, so it never
 * starts a thread) and closes it in exit_process. A request reads through a pinned snapshot
 * that is released with the request's pool, so the body is sent straight from the version's
 * memory without a copy. Reads never wait on the network: with the data server down, the
 * last version keeps being served.
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "lockstep.h"

typedef struct {
  ngx_str_t url;
  ngx_str_t token;
  ngx_str_t name;
  ngx_msec_t bootstrap_wait;
  ngx_str_t cache_dir; /* unset: the library's default; "off": no host cache */
} ngx_http_lockstep_main_conf_t;

static sync_handle *lockstep_handle; /* this worker's handle */

static char *ngx_http_lockstep_serve(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static void *ngx_http_lockstep_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_lockstep_init_main_conf(ngx_conf_t *cf, void *conf);
static ngx_int_t ngx_http_lockstep_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_lockstep_init_process(ngx_cycle_t *cycle);
static void ngx_http_lockstep_exit_process(ngx_cycle_t *cycle);

static ngx_command_t ngx_http_lockstep_commands[] = {
    {ngx_string("lockstep_url"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_conf_set_str_slot,
     NGX_HTTP_MAIN_CONF_OFFSET, offsetof(ngx_http_lockstep_main_conf_t, url), NULL},
    {ngx_string("lockstep_token"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_conf_set_str_slot,
     NGX_HTTP_MAIN_CONF_OFFSET, offsetof(ngx_http_lockstep_main_conf_t, token), NULL},
    {ngx_string("lockstep_name"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_conf_set_str_slot,
     NGX_HTTP_MAIN_CONF_OFFSET, offsetof(ngx_http_lockstep_main_conf_t, name), NULL},
    {ngx_string("lockstep_bootstrap_wait"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_http_lockstep_main_conf_t, bootstrap_wait), NULL},
    {ngx_string("lockstep_cache_dir"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_conf_set_str_slot,
     NGX_HTTP_MAIN_CONF_OFFSET, offsetof(ngx_http_lockstep_main_conf_t, cache_dir), NULL},
    {ngx_string("lockstep_serve"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS, ngx_http_lockstep_serve,
     NGX_HTTP_LOC_CONF_OFFSET, 0, NULL},
    ngx_null_command};

static ngx_http_module_t ngx_http_lockstep_module_ctx = {
    ngx_http_lockstep_add_variables,    /* preconfiguration */
    NULL,                               /* postconfiguration */
    ngx_http_lockstep_create_main_conf, /* create main configuration */
    ngx_http_lockstep_init_main_conf,   /* init main configuration */
    NULL, NULL,                         /* server configuration */
    NULL, NULL                          /* location configuration */
};

ngx_module_t ngx_http_lockstep_module = {NGX_MODULE_V1,
                                         &ngx_http_lockstep_module_ctx,
                                         ngx_http_lockstep_commands,
                                         NGX_HTTP_MODULE,
                                         NULL,                           /* init master */
                                         NULL,                           /* init module */
                                         ngx_http_lockstep_init_process, /* init process */
                                         NULL,                           /* init thread */
                                         NULL,                           /* exit thread */
                                         ngx_http_lockstep_exit_process, /* exit process */
                                         NULL,                           /* exit master */
                                         NGX_MODULE_V1_PADDING};

static void *ngx_http_lockstep_create_main_conf(ngx_conf_t *cf) {
  ngx_http_lockstep_main_conf_t *conf = ngx_pcalloc(cf->pool, sizeof(*conf));
  if (conf == NULL) return NULL;
  conf->bootstrap_wait = NGX_CONF_UNSET_MSEC;
  return conf;
}

static char *ngx_http_lockstep_init_main_conf(ngx_conf_t *cf, void *c) {
  ngx_http_lockstep_main_conf_t *conf = c;
  ngx_conf_init_msec_value(conf->bootstrap_wait, 2000);
  if (sync_abi_version() != SYNC_ABI_VERSION) {
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "liblockstep ABI version %uD does not match the %uD this module was "
                       "built for",
                       sync_abi_version(), (uint32_t)SYNC_ABI_VERSION);
    return NGX_CONF_ERROR;
  }
  return NGX_CONF_OK;
}

static void ngx_http_lockstep_log_result(ngx_uint_t level, ngx_log_t *log, const char *what,
                                         sync_result r) {
  char msg[512];
  size_t n = 0;
  if (sync_error_message(r, msg, sizeof msg, &n) != SYNC_OK) n = 0;
  ngx_log_error(level, log, 0, "lockstep: %s: %*s", what, n, msg);
}

static ngx_int_t ngx_http_lockstep_init_process(ngx_cycle_t *cycle) {
  ngx_http_lockstep_main_conf_t *conf =
      ngx_http_cycle_get_module_main_conf(cycle, ngx_http_lockstep_module);
  if (conf == NULL || conf->url.len == 0) return NGX_OK; /* not configured */
  u_char options[2048];
  u_char *end = ngx_snprintf(options, sizeof options - 1,
                             "url=%V;name=%V-%P;bootstrap_wait_ms=%M;allow_not_ready=1", &conf->url,
                             conf->name.len ? &conf->name : &(ngx_str_t)ngx_string("nginx"),
                             ngx_pid, conf->bootstrap_wait);
  if (conf->token.len) {
    end = ngx_snprintf(end, options + sizeof options - 1 - end, ";token=%V", &conf->token);
  }
  if (conf->cache_dir.len == 3 && ngx_strncmp(conf->cache_dir.data, "off", 3) == 0) {
    end = ngx_snprintf(end, options + sizeof options - 1 - end, ";cache_dir=");
  } else if (conf->cache_dir.len) {
    end = ngx_snprintf(end, options + sizeof options - 1 - end, ";cache_dir=%V", &conf->cache_dir);
  }
  sync_handle *h = NULL;
  sync_result r = sync_open((const char *)options, (size_t)(end - options), &h);
  if (r != SYNC_OK) {
    /* The worker still starts; lockstep locations answer 503 until a restart fixes it. */
    ngx_http_lockstep_log_result(NGX_LOG_ALERT, cycle->log, "sync_open failed", r);
    return NGX_OK;
  }
  lockstep_handle = h;
  return NGX_OK;
}

static void ngx_http_lockstep_exit_process(ngx_cycle_t *cycle) {
  (void)cycle;
  sync_close(lockstep_handle);
  lockstep_handle = NULL;
}

/* $lockstep_version: the version this worker serves now. */
static ngx_int_t ngx_http_lockstep_version_variable(ngx_http_request_t *r,
                                                    ngx_http_variable_value_t *v,
                                                    uintptr_t data) {
  (void)data;
  uint64_t version = 0;
  if (lockstep_handle == NULL || sync_active_version(lockstep_handle, &version) != SYNC_OK) {
    v->not_found = 1;
    return NGX_OK;
  }
  u_char *p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
  if (p == NULL) return NGX_ERROR;
  v->len = ngx_sprintf(p, "%uL", version) - p;
  v->data = p;
  v->valid = 1;
  v->no_cacheable = 1;
  v->not_found = 0;
  return NGX_OK;
}

static ngx_int_t ngx_http_lockstep_add_variables(ngx_conf_t *cf) {
  ngx_str_t name = ngx_string("lockstep_version");
  ngx_http_variable_t *var = ngx_http_add_variable(cf, &name, NGX_HTTP_VAR_NOCACHEABLE);
  if (var == NULL) return NGX_ERROR;
  var->get_handler = ngx_http_lockstep_version_variable;
  return NGX_OK;
}

static void ngx_http_lockstep_release(void *data) { sync_snapshot_release(data); }

static ngx_int_t ngx_http_lockstep_send_text(ngx_http_request_t *r, ngx_uint_t status,
                                             const char *text) {
  size_t len = ngx_strlen(text);
  r->headers_out.status = status;
  r->headers_out.content_length_n = len;
  ngx_str_set(&r->headers_out.content_type, "text/plain");
  ngx_int_t rc = ngx_http_send_header(r);
  if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) return rc;
  ngx_buf_t *b = ngx_calloc_buf(r->pool);
  if (b == NULL) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  b->pos = (u_char *)text;
  b->last = (u_char *)text + len;
  b->memory = 1;
  b->last_buf = (r == r->main) ? 1 : 0;
  b->last_in_chain = 1;
  ngx_chain_t out = {b, NULL};
  return ngx_http_output_filter(r, &out);
}

/* GET <location><key>: the key's value from one pinned version. */
static ngx_int_t ngx_http_lockstep_handler(ngx_http_request_t *r) {
  if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) return NGX_HTTP_NOT_ALLOWED;
  ngx_int_t rc = ngx_http_discard_request_body(r);
  if (rc != NGX_OK) return rc;
  if (lockstep_handle == NULL) {
    return ngx_http_lockstep_send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "lockstep is not configured in this worker\n");
  }
  ngx_http_core_loc_conf_t *clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
  if (r->uri.len <= clcf->name.len ||
      ngx_strncmp(r->uri.data, clcf->name.data, clcf->name.len) != 0) {
    return ngx_http_lockstep_send_text(r, NGX_HTTP_NOT_FOUND, "no key in the path\n");
  }
  const uint8_t *key = r->uri.data + clcf->name.len;
  size_t key_len = r->uri.len - clcf->name.len;

  sync_snapshot *snap = NULL;
  sync_result res = sync_snapshot_acquire(lockstep_handle, &snap);
  if (res == SYNC_NOT_READY) {
    return ngx_http_lockstep_send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "no data from the data server yet\n");
  }
  if (res != SYNC_OK) {
    ngx_http_lockstep_log_result(NGX_LOG_ERR, r->connection->log, "snapshot", res);
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
  }
  /* The snapshot lives as long as the request, so the body can point into it. */
  ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, 0);
  if (cln == NULL) {
    sync_snapshot_release(snap);
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
  }
  cln->handler = ngx_http_lockstep_release;
  cln->data = snap;

  uint64_t version = 0;
  sync_snapshot_version(snap, &version);
  ngx_table_elt_t *h = ngx_list_push(&r->headers_out.headers);
  if (h == NULL) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  u_char *vbuf = ngx_pnalloc(r->pool, NGX_INT64_LEN);
  if (vbuf == NULL) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  h->hash = 1;
  ngx_str_set(&h->key, "X-Lockstep-Version");
  h->value.data = vbuf;
  h->value.len = ngx_sprintf(vbuf, "%uL", version) - vbuf;
#if defined(nginx_version) && nginx_version >= 1023000
  h->next = NULL;
#endif

  const uint8_t *value = NULL;
  size_t len = 0;
  res = sync_snapshot_get(snap, key, key_len, &value, &len);
  if (res == SYNC_NOT_FOUND) {
    return ngx_http_lockstep_send_text(r, NGX_HTTP_NOT_FOUND, "no such key\n");
  }
  if (res != SYNC_OK) {
    ngx_http_lockstep_log_result(NGX_LOG_ERR, r->connection->log, "get", res);
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
  }
  r->headers_out.status = NGX_HTTP_OK;
  r->headers_out.content_length_n = len;
  ngx_str_set(&r->headers_out.content_type, "application/octet-stream");
  rc = ngx_http_send_header(r);
  if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) return rc;
  ngx_buf_t *b = ngx_calloc_buf(r->pool);
  if (b == NULL) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  b->pos = (u_char *)value;
  b->last = (u_char *)value + len;
  b->memory = 1;
  b->last_buf = (r == r->main) ? 1 : 0;
  b->last_in_chain = 1;
  ngx_chain_t out = {b, NULL};
  return ngx_http_output_filter(r, &out);
}

static char *ngx_http_lockstep_serve(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) {
  (void)cmd;
  (void)conf;
  ngx_http_core_loc_conf_t *clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
  clcf->handler = ngx_http_lockstep_handler;
  return NGX_CONF_OK;
}
