/*
 * ngx_http_lockstep_module: serves values from liblockstep's synchronized cache.
 *
 *   load_module modules/ngx_http_lockstep_module.so;
 *   http {
 *       lockstep_url  http://127.0.0.1:7420;
 *       lockstep_name web-1;                  # shown in `lockstep status`, with the pid
 *       # lockstep_token secret;  lockstep_bootstrap_wait 2s;  lockstep_cache_dir off;
 *       # lockstep_ca_file /etc/lockstep/ca.pem;  (an https:// url's authorities)
 *       # lockstep_blob_url http://cache:8080;  (downloads through an HTTP cache)
 *       server {
 *           location /prices/ { lockstep_serve; }     # GET /prices/<key> -> the value
 *           location = /lockstep { lockstep_status; } # this worker's handle, as JSON
 *           add_header X-Lockstep-Version $lockstep_active_version;
 *       }
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

#include <lockstep.h>


/* Room for the options string: the url list, token, name and cache directory. */
#define NGX_HTTP_LOCKSTEP_OPTIONS_LEN  2048

/* Room for sync_last_error's message in the status page. */
#define NGX_HTTP_LOCKSTEP_ERROR_LEN    512


typedef struct {
    ngx_str_t     url;
    ngx_str_t     token;
    ngx_str_t     name;
    ngx_msec_t    bootstrap_wait;
    ngx_str_t     cache_dir;   /* unset: the library's default; "off": no host cache */
    ngx_str_t     ca_file;     /* unset: the system's roots for an https:// data server */
    ngx_str_t     blob_url;    /* unset: downloads from the data server itself */
} ngx_http_lockstep_main_conf_t;


/* What a $lockstep_* variable shows of the handle's stats. */
typedef enum {
    NGX_HTTP_LOCKSTEP_VAR_ACTIVE = 0,
    NGX_HTTP_LOCKSTEP_VAR_STAGED,
    NGX_HTTP_LOCKSTEP_VAR_LAGGING,
    NGX_HTTP_LOCKSTEP_VAR_LAST_CHECKIN
} ngx_http_lockstep_var_e;


static ngx_int_t ngx_http_lockstep_add_variables(ngx_conf_t *cf);
static void *ngx_http_lockstep_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_lockstep_init_main_conf(ngx_conf_t *cf, void *conf);
static char *ngx_http_lockstep_serve(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_lockstep_status(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_lockstep_init_process(ngx_cycle_t *cycle);
static void ngx_http_lockstep_exit_process(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_lockstep_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_lockstep_serve_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_lockstep_status_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_lockstep_send(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *type, u_char *data, size_t len);
static void ngx_http_lockstep_log_result(ngx_uint_t level, ngx_log_t *log,
    const char *what, sync_result rc);
static void ngx_http_lockstep_release(void *data);
static void ngx_http_lockstep_note_refused(ngx_log_t *log);


/* This worker's handle; NULL in the master, or when sync_open failed. */
static sync_handle  *ngx_http_lockstep_handle;

/* 1 once this worker has logged that the data server refuses its token: said once, not on
 * every request that then gets a 503; cleared when a check-in succeeds again. */
static ngx_uint_t    ngx_http_lockstep_refused_logged;


static ngx_command_t  ngx_http_lockstep_commands[] = {

    { ngx_string("lockstep_url"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_lockstep_main_conf_t, url),
      NULL },

    { ngx_string("lockstep_token"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_lockstep_main_conf_t, token),
      NULL },

    { ngx_string("lockstep_name"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_lockstep_main_conf_t, name),
      NULL },

    { ngx_string("lockstep_bootstrap_wait"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_lockstep_main_conf_t, bootstrap_wait),
      NULL },

    { ngx_string("lockstep_cache_dir"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_lockstep_main_conf_t, cache_dir),
      NULL },

    { ngx_string("lockstep_ca_file"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_lockstep_main_conf_t, ca_file),
      NULL },

    { ngx_string("lockstep_blob_url"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_lockstep_main_conf_t, blob_url),
      NULL },

    { ngx_string("lockstep_serve"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_lockstep_serve,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("lockstep_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_lockstep_status,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_lockstep_module_ctx = {
    ngx_http_lockstep_add_variables,       /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_http_lockstep_create_main_conf,    /* create main configuration */
    ngx_http_lockstep_init_main_conf,      /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_lockstep_module = {
    NGX_MODULE_V1,
    &ngx_http_lockstep_module_ctx,         /* module context */
    ngx_http_lockstep_commands,            /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_lockstep_init_process,        /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_lockstep_exit_process,        /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_variable_t  ngx_http_lockstep_vars[] = {

    /* The version this worker serves now; $lockstep_version is its older name. */
    { ngx_string("lockstep_version"), NULL, ngx_http_lockstep_variable,
      NGX_HTTP_LOCKSTEP_VAR_ACTIVE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("lockstep_active_version"), NULL, ngx_http_lockstep_variable,
      NGX_HTTP_LOCKSTEP_VAR_ACTIVE, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    /* The version armed for the next activation; 0 when none is. */
    { ngx_string("lockstep_staged_version"), NULL, ngx_http_lockstep_variable,
      NGX_HTTP_LOCKSTEP_VAR_STAGED, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    /* 1 while this worker caught up late and has not yet activated on time. */
    { ngx_string("lockstep_lagging"), NULL, ngx_http_lockstep_variable,
      NGX_HTTP_LOCKSTEP_VAR_LAGGING, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    /* The last successful check-in, µs since the epoch on the data server's clock. */
    { ngx_string("lockstep_last_checkin"), NULL, ngx_http_lockstep_variable,
      NGX_HTTP_LOCKSTEP_VAR_LAST_CHECKIN, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


static ngx_int_t
ngx_http_lockstep_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_lockstep_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static void *
ngx_http_lockstep_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_lockstep_main_conf_t  *lmcf;

    lmcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_lockstep_main_conf_t));
    if (lmcf == NULL) {
        return NULL;
    }

    lmcf->bootstrap_wait = NGX_CONF_UNSET_MSEC;

    return lmcf;
}


static char *
ngx_http_lockstep_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_lockstep_main_conf_t  *lmcf = conf;

    ngx_conf_init_msec_value(lmcf->bootstrap_wait, 2000);

    if (sync_abi_version() != SYNC_ABI_VERSION) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "liblockstep ABI version %uD does not match the %uD "
                           "this module was built for",
                           sync_abi_version(), (uint32_t) SYNC_ABI_VERSION);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_lockstep_serve(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_lockstep_serve_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_lockstep_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_lockstep_status_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_lockstep_init_process(ngx_cycle_t *cycle)
{
    u_char                         *p, *last;
    size_t                          len;
    sync_result                     rc;
    sync_handle                    *h;
    ngx_str_t                       name;
    ngx_http_lockstep_main_conf_t  *lmcf;
    u_char                          options[NGX_HTTP_LOCKSTEP_OPTIONS_LEN];

    lmcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_lockstep_module);
    if (lmcf == NULL || lmcf->url.len == 0) {
        return NGX_OK;  /* not configured */
    }

    ngx_str_set(&name, "nginx");
    if (lmcf->name.len) {
        name = lmcf->name;
    }

    last = options + sizeof(options);

    p = ngx_slprintf(options, last,
                     "url=%V;name=%V-%P;bootstrap_wait_ms=%M;allow_not_ready=1",
                     &lmcf->url, &name, ngx_pid, lmcf->bootstrap_wait);

    if (lmcf->token.len) {
        p = ngx_slprintf(p, last, ";token=%V", &lmcf->token);
    }

    if (lmcf->cache_dir.len == 3
        && ngx_strncmp(lmcf->cache_dir.data, "off", 3) == 0)
    {
        p = ngx_slprintf(p, last, ";cache_dir=");

    } else if (lmcf->cache_dir.len) {
        p = ngx_slprintf(p, last, ";cache_dir=%V", &lmcf->cache_dir);
    }

    if (lmcf->ca_file.len) {
        p = ngx_slprintf(p, last, ";ca_file=%V", &lmcf->ca_file);
    }

    if (lmcf->blob_url.len) {
        p = ngx_slprintf(p, last, ";blob_url=%V", &lmcf->blob_url);
    }

    if (p == last) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0,
                      "lockstep: the lockstep_* settings are too long");
        return NGX_OK;
    }

    len = p - options;
    h = NULL;

    rc = sync_open((const char *) options, len, &h);
    if (rc != SYNC_OK) {
        /* The worker still starts; lockstep locations answer 503. */
        ngx_http_lockstep_log_result(NGX_LOG_ALERT, cycle->log,
                                     "sync_open failed", rc);
        return NGX_OK;
    }

    ngx_http_lockstep_handle = h;

    /* A token refused during the bootstrap wait is said at start, not at the first 503. */
    ngx_http_lockstep_note_refused(cycle->log);

    return NGX_OK;
}


static void
ngx_http_lockstep_exit_process(ngx_cycle_t *cycle)
{
    sync_close(ngx_http_lockstep_handle);  /* NULL is a no-op */
    ngx_http_lockstep_handle = NULL;
}


static ngx_int_t
ngx_http_lockstep_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char      *p;
    sync_stats   st;

    ngx_memzero(&st, sizeof(sync_stats));
    st.struct_size = sizeof(sync_stats);

    if (ngx_http_lockstep_handle == NULL
        || sync_stats_get(ngx_http_lockstep_handle, &st) != SYNC_OK)
    {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->data = p;

    switch (data) {

    case NGX_HTTP_LOCKSTEP_VAR_ACTIVE:
        if (st.active_version == 0) {
            v->not_found = 1;   /* nothing arrived yet */
            return NGX_OK;
        }

        p = ngx_sprintf(p, "%uL", st.active_version);
        break;

    case NGX_HTTP_LOCKSTEP_VAR_STAGED:
        p = ngx_sprintf(p, "%uL", st.staged_version);
        break;

    case NGX_HTTP_LOCKSTEP_VAR_LAGGING:
        *p++ = st.lagging ? '1' : '0';
        break;

    default: /* NGX_HTTP_LOCKSTEP_VAR_LAST_CHECKIN */
        if (st.last_checkin_us <= 0) {
            v->not_found = 1;   /* never checked in */
            return NGX_OK;
        }

        p = ngx_sprintf(p, "%L", st.last_checkin_us);
        break;
    }

    v->len = p - v->data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


/* GET <location><key>: the key's value from one pinned version. */
static ngx_int_t
ngx_http_lockstep_serve_handler(ngx_http_request_t *r)
{
    size_t                     key_len, len;
    uint64_t                   version;
    ngx_int_t                  rc;
    ngx_str_t                  type;
    sync_result                res;
    const uint8_t             *key, *value;
    sync_snapshot             *snap;
    ngx_table_elt_t           *h;
    ngx_pool_cleanup_t        *cln;
    ngx_http_core_loc_conf_t  *clcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_str_set(&type, "text/plain");

    if (ngx_http_lockstep_handle == NULL) {
        return ngx_http_lockstep_send(r, NGX_HTTP_SERVICE_UNAVAILABLE, &type,
                   (u_char *) "lockstep is not configured in this worker\n",
                   sizeof("lockstep is not configured in this worker\n") - 1);
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (r->uri.len <= clcf->name.len
        || ngx_strncmp(r->uri.data, clcf->name.data, clcf->name.len) != 0)
    {
        return ngx_http_lockstep_send(r, NGX_HTTP_NOT_FOUND, &type,
                                      (u_char *) "no key in the path\n",
                                      sizeof("no key in the path\n") - 1);
    }

    key = r->uri.data + clcf->name.len;
    key_len = r->uri.len - clcf->name.len;

    snap = NULL;
    res = sync_snapshot_acquire(ngx_http_lockstep_handle, &snap);

    if (res == SYNC_NOT_READY) {
        ngx_http_lockstep_note_refused(r->connection->log);
        return ngx_http_lockstep_send(r, NGX_HTTP_SERVICE_UNAVAILABLE, &type,
                   (u_char *) "no data from the data server yet\n",
                   sizeof("no data from the data server yet\n") - 1);
    }

    if (res != SYNC_OK) {
        ngx_http_lockstep_log_result(NGX_LOG_ERR, r->connection->log,
                                     "snapshot", res);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* The snapshot lives as long as the request, so the body can point into it. */

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        sync_snapshot_release(snap);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_lockstep_release;
    cln->data = snap;

    version = 0;
    (void) sync_snapshot_version(snap, &version);

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->value.data = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (h->value.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "X-Lockstep-Version");
    h->value.len = ngx_sprintf(h->value.data, "%uL", version) - h->value.data;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif

    value = NULL;
    len = 0;
    res = sync_snapshot_get(snap, key, key_len, &value, &len);

    if (res == SYNC_NOT_FOUND) {
        return ngx_http_lockstep_send(r, NGX_HTTP_NOT_FOUND, &type,
                                      (u_char *) "no such key\n",
                                      sizeof("no such key\n") - 1);
    }

    if (res != SYNC_OK) {
        ngx_http_lockstep_log_result(NGX_LOG_ERR, r->connection->log, "get",
                                     res);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&type, "application/octet-stream");

    return ngx_http_lockstep_send(r, NGX_HTTP_OK, &type, (u_char *) value, len);
}


/* GET <location>: this worker's handle, as one JSON object. */
static ngx_int_t
ngx_http_lockstep_status_handler(ngx_http_request_t *r)
{
    u_char      *body, *p;
    size_t       err_len, len;
    ngx_int_t    rc;
    ngx_str_t    type;
    sync_stats   st;
    u_char       err[NGX_HTTP_LOCKSTEP_ERROR_LEN];

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_str_set(&type, "application/json");

    if (ngx_http_lockstep_handle == NULL) {
        return ngx_http_lockstep_send(r, NGX_HTTP_SERVICE_UNAVAILABLE, &type,
                   (u_char *) "{\"error\":\"lockstep is not configured in this worker\"}\n",
                   sizeof("{\"error\":\"lockstep is not configured in this worker\"}\n")
                   - 1);
    }

    ngx_memzero(&st, sizeof(sync_stats));
    st.struct_size = sizeof(sync_stats);

    if (sync_stats_get(ngx_http_lockstep_handle, &st) != SYNC_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    err_len = 0;
    if (sync_last_error(ngx_http_lockstep_handle, (char *) err, sizeof(err),
                        &err_len)
        != SYNC_OK)
    {
        err_len = 0;
    }

    /* The fixed text, 20 numbers of at most 20 digits, and the error escaped. */
    len = 640 + 20 * NGX_INT64_LEN + err_len
          + ngx_escape_json(NULL, err, err_len);

    body = ngx_pnalloc(r->pool, len);
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_slprintf(body, body + len,
                     "{\"pid\":%P,\"active_version\":%uL,\"staged_version\":%uL,"
                     "\"next_activation_us\":%L,\"last_checkin_us\":%L,"
                     "\"lagging\":%s,\"consecutive_failures\":%uL,"
                     "\"clock_offset_us\":%L,\"clock_error_us\":%L,"
                     "\"checkins\":%uL,\"activations\":%uL,"
                     "\"rejected_versions\":%uL,\"last_activation_us\":%L,"
                     "\"host_role\":%uD,\"unconfirmed\":%s,\"confirmed_us\":%L,"
                     "\"cache_failures\":%uL,\"bytes_downloaded\":%uL,"
                     "\"deltas_applied\":%uL,\"full_downloads\":%uL,"
                     "\"last_error\":\"",
                     ngx_pid, st.active_version, st.staged_version,
                     st.next_activation_us, st.last_checkin_us,
                     st.lagging ? "true" : "false", st.consecutive_failures,
                     st.clock_offset_us, st.clock_error_us, st.checkins,
                     st.activations, st.rejected_versions,
                     st.last_activation_us, st.host_role,
                     st.unconfirmed ? "true" : "false", st.confirmed_us,
                     st.cache_failures, st.bytes_downloaded,
                     st.deltas_applied, st.full_downloads);

    p = (u_char *) ngx_escape_json(p, err, err_len);
    p = ngx_cpymem(p, "\"}\n", 3);

    return ngx_http_lockstep_send(r, NGX_HTTP_OK, &type, body, p - body);
}


static ngx_int_t
ngx_http_lockstep_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, u_char *data, size_t len)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;
    r->headers_out.content_length_n = len;
    r->headers_out.content_type = *type;
    r->headers_out.content_type_len = type->len;

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = data;
    b->last = data + len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


static void
ngx_http_lockstep_log_result(ngx_uint_t level, ngx_log_t *log,
    const char *what, sync_result rc)
{
    size_t  n;
    char    msg[NGX_HTTP_LOCKSTEP_ERROR_LEN];

    n = 0;
    if (sync_error_message(rc, msg, sizeof(msg), &n) != SYNC_OK) {
        n = 0;
    }

    ngx_log_error(level, log, 0, "lockstep: %s: %*s", what, n, msg);
}


/* Logs, once per worker, that the data server refuses lockstep_token (401 or 403): the one
 * failure that retrying cannot fix, so it must not read like an outage. */
static void
ngx_http_lockstep_note_refused(ngx_log_t *log)
{
    size_t      n;
    sync_stats  st;
    char        err[NGX_HTTP_LOCKSTEP_ERROR_LEN];

    ngx_memzero(&st, sizeof(sync_stats));
    st.struct_size = sizeof(sync_stats);

    if (ngx_http_lockstep_handle == NULL
        || sync_stats_get(ngx_http_lockstep_handle, &st) != SYNC_OK)
    {
        return;
    }

    if (st.last_failure != SYNC_UNAUTHORIZED) {
        if (st.last_failure == SYNC_OK) {
            ngx_http_lockstep_refused_logged = 0;
        }
        return;
    }

    if (ngx_http_lockstep_refused_logged) {
        return;
    }

    ngx_http_lockstep_refused_logged = 1;

    n = 0;
    if (sync_last_error(ngx_http_lockstep_handle, err, sizeof(err), &n) != SYNC_OK) {
        n = 0;
    }

    ngx_log_error(NGX_LOG_ERR, log, 0,
                  "lockstep: the data server refused lockstep_token (%*s); "
                  "lockstep locations answer 503 until it accepts the token",
                  n, err);
}


static void
ngx_http_lockstep_release(void *data)
{
    sync_snapshot_release(data);
}
