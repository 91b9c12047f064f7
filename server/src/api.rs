//! The data server's HTTP API (paths and bodies in [`lockstep::wire`]).
//!
//! Handlers only authenticate, parse, check limits and call the store on a blocking thread;
//! every rule about versions and rotation lives in [`crate::store`]. Every error is a JSON
//! [`ErrorBody`] whose message says what to change, and an error never changes the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lockstep::wire::{
    self, Blob, CheckinQuery, CheckinResponse, DeleteRequest, ErrorBody, ImportRequest,
    IntervalRequest, IntervalResponse, PublishRequest, PublishResponse, PutRequest,
    RollbackRequest, RollbackResponse, WriteResponse,
};
use serde::Deserialize;

use crate::audit::{self, AuditEntry};
use crate::cli::import;
use crate::clock::{format_duration_us, format_us};
use crate::metrics::Metrics;
use crate::store::{
    Change, IntervalChange, PinChange, RollbackOutcome, Store, StoreError, UrgentOutcome,
};
use crate::tokens::{Scope, Tokens};
use crate::{clock, farm, metrics, proof};

/// Size limits on what admins may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_body_bytes: 64 << 20,
        }
    }
}

pub struct AppState {
    pub store: Arc<Store>,
    /// Swapped whole on SIGHUP; a request sees either the old set or the new one.
    pub tokens: Arc<arc_swap::ArcSwap<Tokens>>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Bounds the farm rows of check-ins that carry no token.
    pub open_farm: crate::farm_cap::OpenFarm,
    /// The blob secret and compressed blobs (see [`crate::blobs`]).
    pub blobs: Arc<crate::blobs::Blobs>,
    /// Deltas made from one version to the next (see [`crate::deltas`]).
    pub deltas: crate::deltas::Deltas,
    /// Long-poll check-ins held now, and what wakes them.
    pub waiters: Arc<crate::waiters::Waiters>,
    /// The herd's turn at an activation time (see [`sync_answer`]).
    pub rotation_turn: Arc<tokio::sync::RwLock<()>>,
}

type Shared = Arc<AppState>;

/// An HTTP error with a message for the person or program that caused it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, "{}", self.message);
        } else {
            tracing::debug!(status = %self.status, "{}", self.message);
        }
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::BadRequest(_) => StatusCode::BAD_REQUEST,
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
            StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let mut source: Option<&dyn std::error::Error> = Some(&r);
        while let Some(e) = source {
            if e.is::<crate::listen::BodyTimeout>() {
                return ApiError::new(StatusCode::REQUEST_TIMEOUT, e.to_string());
            }
            source = e.source();
        }
        ApiError::new(
            r.status(),
            format!("request body rejected: {}", r.body_text()),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(format!("bad query string: {}", r.body_text()))
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Runs store work off the async workers: SQLite calls block, and fsync can take milliseconds.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("task failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
}

/// Which token a request carries: its name and scope; `None` when it carries none.
fn token_name(state: &AppState, parts: &Parts) -> Result<Option<(String, Scope)>, ()> {
    let Some(given) = bearer(&parts.headers) else {
        return Ok(None);
    };
    match state.tokens.load().find(given) {
        Some((name, scope)) => Ok(Some((name.to_owned(), scope))),
        None => Err(()),
    }
}

/// The address a request came from, when the server was started with it.
fn peer(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string())
}

/// A wrong token is logged at warn, with where it came from and never what it was.
fn rejected(parts: &Parts, wanted: &str) {
    tracing::warn!(
        peer = %peer(parts),
        path = %parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map_or(parts.uri.path(), |u| u.0.path()),
        "rejected a request with a wrong token (needs the {wanted} token)"
    );
}

/// A request authorised by the admin token: only a handler that takes one can change
/// anything, so no handler can forget to check.
pub struct Admin {
    /// The token's name.
    pub who: String,
    pub peer: String,
}

impl FromRequestParts<Shared> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> ApiResult<Admin> {
        match token_name(state, parts) {
            Ok(Some((name, Scope::Admin))) => Ok(Admin {
                who: name,
                peer: peer(parts),
            }),
            Ok(None) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing admin token: send 'Authorization: Bearer <token>' (the CLI reads LOCKSTEP_ADMIN_TOKEN)",
            )),
            Ok(Some(_)) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this token may only read: changes need the admin token",
            )),
            Err(()) => {
                rejected(parts, "admin");
                Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "admin token is wrong: check LOCKSTEP_ADMIN_TOKEN against the server's",
                ))
            }
        }
    }
}

/// A request authorised to see the admin views: the admin token, or the read token when the
/// server has one. Never anonymous: the views show the farm and who changed what.
pub struct Viewer;

impl FromRequestParts<Shared> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> ApiResult<Viewer> {
        match token_name(state, parts) {
            Ok(Some(_)) => Ok(Viewer),
            Ok(None) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing token: send 'Authorization: Bearer <token>' with the admin or read token",
            )),
            Err(()) => {
                rejected(parts, "admin or read");
                Err(ApiError::new(StatusCode::FORBIDDEN, "token is wrong"))
            }
        }
    }
}

/// A client's request (check-ins, versions, metrics): the read or admin token when the
/// server has a read token, anything otherwise.
pub struct Reader;

impl FromRequestParts<Shared> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> ApiResult<Reader> {
        if !state.tokens.load().has_read() {
            return Ok(Reader);
        }
        match token_name(state, parts) {
            Ok(Some(_)) => Ok(Reader),
            Ok(None) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing read token: send 'Authorization: Bearer <token>'",
            )),
            Err(()) => {
                rejected(parts, "read");
                Err(ApiError::new(StatusCode::FORBIDDEN, "read token is wrong"))
            }
        }
    }
}

/// The audit entry of a change `admin` makes now. The store writes it in the change's own
/// transaction (see [`crate::store::AuditOf`]), so a change never commits without it.
fn audit_entry(admin: &Admin, action: &str, summary: &str) -> AuditEntry {
    AuditEntry {
        id: 0,
        at_us: clock::now_us(),
        who: admin.who.clone(),
        action: action.to_owned(),
        summary: audit::clip(summary, audit::MAX_SUMMARY_BYTES),
        peer: admin.peer.clone(),
    }
}

/// `base` with another summary.
fn summarised(base: &AuditEntry, summary: &str) -> AuditEntry {
    AuditEntry {
        summary: audit::clip(summary, audit::MAX_SUMMARY_BYTES),
        ..base.clone()
    }
}

/// Logs a change at info once it committed with its audit entry.
fn log_change(entry: Option<AuditEntry>) {
    if let Some(e) = entry {
        tracing::info!(who = %e.who, peer = %e.peer, action = %e.action, "{}", e.summary);
    }
}

/// A key or value for the audit log: its text, or base64 marked as such, clipped.
fn shown(bytes: &[u8]) -> String {
    audit::clip(&Blob::from_bytes(bytes).display(), 128)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let body = body?;
    // serde reads a struct from an array too (["a","b"] as key a, value b): every request
    // body is an object, and nothing else is accepted.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object, like {\"key\": \"k\", \"value\": \"v\"}",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
}

fn parse_time(s: &str) -> ApiResult<i64> {
    clock::parse_rfc3339_us(s).map_err(|e| {
        ApiError::bad_request(format!(
            "bad time '{s}': {e}; write RFC 3339, like 2026-11-27T00:00:00Z"
        ))
    })
}

fn parse_duration_us(what: &str, s: &str) -> ApiResult<i64> {
    clock::parse_duration_us(s).map_err(|e| {
        ApiError::bad_request(format!(
            "bad {what} '{s}': {e}; write it like 500ms, 30s or 10m"
        ))
    })
}

fn check_key(limits: &Limits, key: &[u8]) -> ApiResult<()> {
    import::check_key(key, limits.max_key_bytes).map_err(ApiError::from)
}

fn check_value(limits: &Limits, value: &[u8]) -> ApiResult<()> {
    import::check_value(value, limits.max_value_bytes).map_err(ApiError::from)
}

impl From<import::Refused> for ApiError {
    fn from(r: import::Refused) -> Self {
        let status = if r.too_large {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, r.message)
    }
}

fn blob(what: &str, b: Blob) -> ApiResult<Vec<u8>> {
    b.into_bytes()
        .map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

/// Stamps every answer with the server's clock when the request arrived and when the answer
/// leaves: NTP's second and third timestamps. Outermost layer, so the first is taken before
/// any routing, authentication or database work and the second after all of it, and a client
/// can subtract exactly the time the server spent.
async fn stamp_server_clock(request: Request, next: Next) -> Response {
    let received_us = clock::now_us();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::HeaderName::from_static(wire::HEADER_SERVER_RECEIVED),
        HeaderValue::from(received_us),
    );
    headers.insert(
        header::HeaderName::from_static(wire::HEADER_SERVER_TIME),
        HeaderValue::from(clock::now_us()),
    );
    response
}

pub fn router(state: Shared) -> Router {
    let max_body = state.limits.max_body_bytes;
    let admin = Router::new()
        .route(wire::ADMIN_PUT, post(admin_put))
        .route(wire::ADMIN_DELETE, post(admin_delete))
        .route(wire::ADMIN_IMPORT, post(admin_import))
        .route(wire::ADMIN_INTERVAL, post(admin_interval))
        .route(wire::ADMIN_ROLLBACK, post(admin_rollback))
        .route(wire::ADMIN_PIN, post(admin_pin))
        .route(wire::ADMIN_UNPIN, post(admin_unpin))
        .route(wire::ADMIN_STATUS, get(admin_status))
        .route(wire::ADMIN_HISTORY, get(admin_history))
        .route(wire::ADMIN_DIFF, get(admin_diff))
        .route(wire::ADMIN_KEYS, get(admin_keys))
        .route(wire::ADMIN_KEY, get(admin_key))
        .route(wire::ADMIN_SCHEDULED, get(admin_scheduled))
        .route(wire::ADMIN_ROTATIONS, get(admin_rotations))
        .route(wire::ADMIN_ACTIVATIONS, get(admin_activations))
        .route(wire::ADMIN_AUDIT, get(admin_audit))
        .route(wire::ADMIN_PUBLISH, post(admin_publish))
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .route(wire::PATH_HEALTH, get(health))
        .route(wire::PATH_READY, get(ready))
        .route(wire::PATH_METRICS, get(metrics))
        .route(wire::PATH_CHECKIN, get(checkin))
        .route(wire::PATH_CURRENT, get(current_version))
        .route(&format!("{}/{{number}}", wire::PATH_VERSIONS), get(version))
        // No token: the URL is the capability (see `crate::blobs`).
        .route(
            &format!("{}/{{name}}", wire::PATH_BLOBS),
            get(crate::blobs::blob),
        )
        .route(
            &format!("{}/{{name}}", wire::PATH_DELTAS),
            get(crate::deltas::delta),
        )
        .nest(wire::PATH_ADMIN, admin)
        .merge(crate::ui::router())
        // A route layer: it sees the matched route's pattern.
        .route_layer(middleware::from_fn_with_state(state.clone(), time_request))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(stamp_server_clock))
        .with_state(state)
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

/// Times every request for `lockstep_http_request_duration_seconds`, by route pattern.
async fn time_request(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    // A held check-in takes as long as nothing changes: apart, so that it does not hide how
    // fast check-ins are answered.
    let held = response.headers().get(wire::HEADER_HELD);
    let route = match held.is_some_and(|v| v == wire::HELD_YES) {
        true => format!("{route} (held)"),
        false => route,
    };
    state.metrics.request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn health() -> Response {
    Json(serde_json::json!({ "status": "ok", "server_time_us": clock::now_us() })).into_response()
}

/// The retrieval step: rotate if due, remember the client, answer with the sync table and the
/// server clock (304 when the client already holds this sync table).
async fn checkin(
    _: Reader,
    State(state): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<CheckinQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let answered = checkin_answer(&state, &headers, query).await;
    state.metrics.checkin(match &answered {
        Ok(r) if r.status() == StatusCode::NOT_MODIFIED => "not_modified",
        Ok(_) => "ok",
        Err(_) => "error",
    });
    answered
}

async fn checkin_answer(
    state: &AppState,
    headers: &HeaderMap,
    query: Result<Query<CheckinQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let by = if q.name.is_empty() {
        "anonymous".to_owned()
    } else {
        q.name.clone()
    };
    let wait_ms = q.wait_ms.min(wire::MAX_WAIT_MS);
    let (sync, rotated, staged_checksum, active_checksum) = sync_answer(state, &by).await?;
    // Recorded on arrival, held or not: a client waiting here is alive.
    let now = clock::now_us();
    if let Some(row) = proof::row_of_checkin(&q, now) {
        state.store.record_switch(row);
    }
    let members = farm::members_of_checkin(q, now);
    let members = if state.tokens.load().has_read() {
        members
    } else {
        state.open_farm.admit(members, now)
    };
    state.store.record_checkin(members);
    let etag = sync.etag();
    if !rotated && if_none_match(headers, &etag) {
        if wait_ms > 0 {
            return held_checkin(state, headers, &by, etag, wait_ms).await;
        }
        return Ok(not_modified(&etag));
    }
    Ok(table_answer(
        state,
        sync,
        rotated,
        staged_checksum,
        active_checksum,
    ))
}

/// The sync table a check-in answers with (rotating first if due), whether this call rotated,
/// and the staged and active versions' checksums.
async fn sync_answer(state: &AppState, by: &str) -> ApiResult<(wire::SyncTable, bool, u64, u64)> {
    let store = state.store.clone();
    // Most check-ins find nothing due and a table this process read a moment ago: answer
    // them without a blocking task or a database read.
    if let Some(answer) = recent_answer(&store) {
        return Ok(answer);
    }
    // The herd at an activation time: the whole farm checks in at once, and one check-in
    // rotates while the others wait for the table it leaves (`Store::rotate_if_due`). They
    // wait here, on the runtime, rather than each on a blocking thread of its own: a thousand
    // threads started and parked at that instant would take the cores from the answers. The
    // rotating one holds the turn for writing; the others wait to read it, so they are all let
    // go together when it ends, and each answers from the table it left (or, if that is more
    // than 50 ms old by then, takes the turn for a read of its own). Only when the table says
    // the time has passed: with nothing due, reads run side by side, and a database out of
    // reach is waited for by each check-in at once, not in turn. (With one due, the check-ins
    // that wait behind a failed rotation fail at once: see `Store::rotate_if_due`.)
    let mut turn = None;
    if store.rotation_due(clock::now_us()) {
        drop(state.rotation_turn.read().await);
        if let Some(answer) = recent_answer(&store) {
            return Ok(answer);
        }
        turn = Some(state.rotation_turn.clone().write_owned().await);
        if let Some(answer) = recent_answer(&store) {
            return Ok(answer);
        }
    }
    let by = by.to_owned();
    blocking(move || {
        // Held until the rotation ends, even if this check-in's client stops waiting: the
        // next one would start another blocking thread to wait for the same rotation.
        let _turn = turn;
        let (sync, rotated) = store.rotate_if_due(clock::now_us(), &by)?;
        let staged = store.version_checksum(sync.staged_version)?;
        let active = store.version_checksum(sync.active_version)?;
        Ok((sync, rotated, staged, active))
    })
    .await
}

/// The answer from the sync table this process read a moment ago, if nothing is due by it.
fn recent_answer(store: &Store) -> Option<(wire::SyncTable, bool, u64, u64)> {
    let sync = store.recent_sync_table(clock::now_us())?;
    let staged = store.known_checksum(sync.staged_version)?;
    let active = store.known_checksum(sync.active_version)?;
    Some((sync, false, staged, active))
}

fn etag_header(etag: &str) -> (header::HeaderName, HeaderValue) {
    (
        header::ETAG,
        HeaderValue::from_str(etag).expect("ascii etag"),
    )
}

fn not_modified(etag: &str) -> Response {
    (StatusCode::NOT_MODIFIED, [etag_header(etag)]).into_response()
}

/// A check-in's 200: the sync table with the data server's clock.
fn table_answer(
    state: &AppState,
    sync: wire::SyncTable,
    rotated: bool,
    staged_checksum: u64,
    active_checksum: u64,
) -> Response {
    let etag = sync.etag();
    let body = CheckinResponse {
        sync,
        server_time_us: clock::now_us(),
        rotated,
        staged_checksum: wire::checksum_hex(staged_checksum),
        active_checksum: wire::checksum_hex(active_checksum),
        staged_blob: state.blobs.blob_path(sync.staged_version, staged_checksum),
        active_blob: state.blobs.blob_path(sync.active_version, active_checksum),
        staged_delta_from_active: state.deltas.path(
            &state.store,
            &state.blobs,
            (sync.active_version, active_checksum),
            (sync.staged_version, staged_checksum),
        ),
    };
    ([etag_header(&etag)], Json(body)).into_response()
}

/// A long-poll check-in whose client holds the current table: answered when the table
/// changes (200) or after `wait_ms` (304). Either answer says it was held, so the client
/// takes no clock sample from it. Past `--max-held-checkins`, a 304 at once that says so.
async fn held_checkin(
    state: &AppState,
    headers: &HeaderMap,
    by: &str,
    etag: String,
    wait_ms: u64,
) -> ApiResult<Response> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
    let Some(mut hold) = state.waiters.hold(etag.clone()) else {
        // Held ones would take every connection: admin writes, downloads and new clients
        // must still get one.
        let mut busy = not_modified(&etag);
        busy.headers_mut().insert(
            header::HeaderName::from_static(wire::HEADER_HELD),
            HeaderValue::from_static(wire::HELD_BUSY),
        );
        busy.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(crate::waiters::BUSY_RETRY_AFTER_S),
        );
        return Ok(busy);
    };
    let mut answer = loop {
        if hold.next(deadline).await == crate::waiters::Wake::Over {
            break not_modified(&etag);
        }
        let (sync, rotated, staged, active) = sync_answer(state, by).await?;
        if rotated || !if_none_match(headers, &sync.etag()) {
            break table_answer(state, sync, rotated, staged, active);
        }
    };
    drop(hold);
    answer.headers_mut().insert(
        header::HeaderName::from_static(wire::HEADER_HELD),
        HeaderValue::from_static(wire::HELD_YES),
    );
    Ok(answer)
}

pub(crate) fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*")
}

async fn serve_version(state: &AppState, headers: &HeaderMap, number: u64) -> ApiResult<Response> {
    let store = state.store.clone();
    let stored = blocking(move || store.version_bytes(number)).await?;
    let etag = wire::version_etag(stored.version, stored.checksum);
    let common = [
        (
            header::ETAG,
            HeaderValue::from_str(&etag).expect("ascii etag"),
        ),
        (
            header::HeaderName::from_static(wire::HEADER_VERSION),
            HeaderValue::from(stored.version),
        ),
        (
            header::HeaderName::from_static(wire::HEADER_CHECKSUM),
            HeaderValue::from_str(&wire::checksum_hex(stored.checksum)).expect("hex"),
        ),
    ];
    if if_none_match(headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    state.store.count_download(stored.version);
    state.metrics.download(stored.bytes.len());
    Ok((
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        Body::from(stored.bytes),
    )
        .into_response())
}

async fn version(
    _: Reader,
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(number): Path<String>,
) -> ApiResult<Response> {
    let number: u64 = number
        .parse()
        .map_err(|_| ApiError::bad_request(format!("'{number}' is not a version number")))?;
    serve_version(&state, &headers, number).await
}

/// Bootstrap: the version that should be active now (rotating first if a rotation is due).
async fn current_version(
    _: Reader,
    State(state): State<Shared>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let store = state.store.clone();
    let (sync, _) = blocking(move || store.rotate_if_due(clock::now_us(), "bootstrap")).await?;
    serve_version(&state, &headers, sync.active_version).await
}

fn write_response(changed: u64, live_by_us: Option<i64>, message: String) -> Json<WriteResponse> {
    Json(WriteResponse {
        changed,
        live_by_us,
        version: None,
        message,
    })
}

async fn apply_or_schedule(
    state: &AppState,
    admin: &Admin,
    change: Change,
    at: Option<String>,
    action: &str,
    what: String,
    urgent: bool,
) -> ApiResult<Json<WriteResponse>> {
    let store = state.store.clone();
    let who = admin.who.clone();
    if urgent {
        if at.is_some() {
            return Err(ApiError::bad_request(
                "urgent goes live now: it cannot be given with at",
            ));
        }
        return apply_urgent(
            state,
            admin,
            vec![change],
            &format!("{action}-urgent"),
            what,
        )
        .await;
    }
    match at {
        Some(at) => {
            let effective = parse_time(&at)?;
            let base = audit_entry(admin, &format!("schedule-{action}"), "");
            let audit_of = move |live: &i64| {
                let summary = format!(
                    "{what} at {}, live at {}",
                    clock::format_us(effective),
                    clock::format_us(*live)
                );
                Some(summarised(&base, &summary))
            };
            let of = audit_of.clone();
            let live =
                blocking(move || store.schedule(&change, effective, &who, clock::now_us(), &of))
                    .await?;
            log_change(audit_of(&live));
            Ok(write_response(
                1,
                Some(live),
                format!(
                    "scheduled for {}; goes live at the activation at {}",
                    clock::format_us(effective),
                    clock::format_us(live)
                ),
            ))
        }
        None => {
            let entry = audit_entry(admin, action, &what);
            let audit_of = move |changed: &u64| (*changed > 0).then(|| entry.clone());
            let of = audit_of.clone();
            let (changed, sync) = blocking(move || {
                let changed = store.apply(&[change], &who, clock::now_us(), &of)?;
                Ok((changed, store.sync_table()?))
            })
            .await?;
            let live = sync.activation_time_us.saturating_add(sync.interval_us);
            log_change(audit_of(&changed));
            Ok(write_response(
                changed,
                Some(live),
                if changed == 0 {
                    "production already had this; nothing changed".to_owned()
                } else {
                    format!(
                        "production changed; live everywhere by {}",
                        clock::format_us(live)
                    )
                },
            ))
        }
    }
}

async fn admin_put(
    admin: Admin,
    State(state): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<WriteResponse>> {
    let req: PutRequest = parse_json(body)?;
    let key = blob("key", req.key)?;
    let value = blob("value", req.value)?;
    check_key(&state.limits, &key)?;
    check_value(&state.limits, &value)?;
    let what = format!("{} = {}", shown(&key), shown(&value));
    let change = Change::Put(key, value);
    apply_or_schedule(&state, &admin, change, req.at, "put", what, req.urgent).await
}

async fn admin_delete(
    admin: Admin,
    State(state): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<WriteResponse>> {
    let req: DeleteRequest = parse_json(body)?;
    let key = blob("key", req.key)?;
    check_key(&state.limits, &key)?;
    let what = shown(&key);
    let change = Change::Delete(key);
    apply_or_schedule(&state, &admin, change, req.at, "delete", what, req.urgent).await
}

async fn admin_import(
    admin: Admin,
    State(state): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<WriteResponse>> {
    let req: ImportRequest = parse_json(body)?;
    let limits = &state.limits;
    let changes: Vec<Change> = import::import_entries(
        req.entries,
        limits.max_key_bytes,
        limits.max_value_bytes,
        shown,
    )?
    .into_iter()
    .map(|(key, value)| Change::Put(key, value))
    .collect();
    let n = changes.len();
    if req.urgent {
        let what = format!("{n} entries");
        return apply_urgent(&state, &admin, changes, "import-urgent", what).await;
    }
    let store = state.store.clone();
    let base = audit_entry(&admin, "import", "");
    let audit_of = move |changed: &u64| {
        let summary = format!("{n} entries, {changed} changed production");
        Some(summarised(&base, &summary))
    };
    let of = audit_of.clone();
    let changed = blocking(move || store.apply(&changes, "import", clock::now_us(), &of)).await?;
    log_change(audit_of(&changed));
    Ok(write_response(
        changed,
        None,
        format!("imported {n} entries, {changed} changed production"),
    ))
}

async fn admin_interval(
    admin: Admin,
    State(state): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<IntervalResponse>> {
    let req: IntervalRequest = parse_json(body)?;
    let interval = parse_duration_us("interval", &req.interval)?;
    if let Some(w) = req.urgent_window.as_deref() {
        let window = parse_duration_us("urgent_window", w)?;
        let store = state.store.clone();
        let entry = audit_entry(&admin, "urgent-window", &format!("urgent window {w}"));
        let audit_of = move |_: &i64| Some(entry.clone());
        let of = audit_of.clone();
        blocking(move || store.set_urgent_window(window, &of)).await?;
        log_change(audit_of(&window));
    }
    let window = req
        .min_window
        .as_deref()
        .map(|w| parse_duration_us("min_window", w))
        .transpose()?;
    let store = state.store.clone();
    let base = audit_entry(&admin, "interval", "");
    let audit_of = move |c: &IntervalChange| {
        (c.before != c.after).then(|| summarised(&base, &interval_message(c)))
    };
    let of = audit_of.clone();
    let change =
        blocking(move || store.set_interval_audited(Some(interval), window, clock::now_us(), &of))
            .await?;
    log_change(audit_of(&change));
    Ok(Json(IntervalResponse {
        sync: change.after,
        previous_activation_us: change.before.activation_time_us,
        message: interval_message(&change),
    }))
}

/// What an interval change did, in one sentence.
pub fn interval_message(c: &IntervalChange) -> String {
    let (before, after) = (&c.before, &c.after);
    let settings = format!(
        "interval {}, minimum retrieval window {}",
        format_duration_us(after.interval_us),
        format_duration_us(after.min_window_us)
    );
    if (before.interval_us, before.min_window_us) == (after.interval_us, after.min_window_us) {
        return format!(
            "{settings} already; the next activation stays at {}",
            format_us(after.activation_time_us)
        );
    }
    let at = format_us(after.activation_time_us);
    if after.activation_time_us != before.activation_time_us {
        format!(
            "{settings}; the next activation moves to {at} (it was {}), with the staged version \
             as it is, and every activation after it is on the new grid",
            format_us(before.activation_time_us)
        )
    } else if c.held_by_schedule {
        format!(
            "{settings}; the next activation stays at {at}, since the staged version holds \
             changes scheduled for that time; the new interval applies after it"
        )
    } else {
        format!("{settings}; the next activation stays at {at}, sooner than the new grid allows")
    }
}

async fn admin_rollback(
    admin: Admin,
    State(state): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<RollbackResponse>> {
    let req: RollbackRequest = parse_json(body)?;
    if req.urgent && !req.dry_run {
        return rollback_urgent(&state, &admin, req).await;
    }
    let store = state.store.clone();
    let base = audit_entry(&admin, "rollback", "");
    let target = req.version;
    let audit_of = move |out: &RollbackOutcome| {
        out.version
            .map(|_| summarised(&base, &rollback_message(target, out)))
    };
    let of = audit_of.clone();
    let out = blocking(move || {
        store.rollback(
            req.version,
            req.dry_run,
            req.discard_edits,
            "rollback",
            clock::now_us(),
            &of,
        )
    })
    .await?;
    log_change(audit_of(&out));
    Ok(Json(RollbackResponse {
        version: out.version,
        dry_run: req.dry_run,
        live_by_us: out.activation_time_us,
        message: rollback_message(req.version, &out),
        production: out.production,
    }))
}

/// What an urgent request did, in one sentence.
fn urgent_message(out: &UrgentOutcome) -> String {
    let at = format_us(out.live_at_us);
    if out.already_live {
        format!(
            "production's content is live already; nothing to make live (version {})",
            out.version
        )
    } else if !out.queued {
        format!(
            "urgent: production's content is staged as version {} and goes live everywhere at {at}",
            out.version
        )
    } else if out.live_at_us == out.after_us {
        format!(
            "urgent: production's content is staged already and goes live at {at}, the \
             activation every client has armed"
        )
    } else {
        format!(
            "urgent: queued for the activation at {} (every client has armed it, or an urgent \
             activation is pending, or the staged version holds a change scheduled for it); \
             production's content goes live at about {at}",
            format_us(out.after_us)
        )
    }
}

fn publish_response(out: &UrgentOutcome) -> PublishResponse {
    PublishResponse {
        version: out.version,
        live_by_us: out.live_at_us,
        queued: out.queued,
        already_live: out.already_live,
        message: urgent_message(out),
    }
}

/// Changes production and makes it live at now + the urgent window, in one transaction.
async fn apply_urgent(
    state: &AppState,
    admin: &Admin,
    changes: Vec<Change>,
    action: &str,
    what: String,
) -> ApiResult<Json<WriteResponse>> {
    let store = state.store.clone();
    let who = admin.who.clone();
    let base = audit_entry(admin, action, "");
    let audit_of = move |(changed, out): &(u64, UrgentOutcome)| {
        let summary = format!(
            "{what}; {changed} changed production; {}",
            urgent_message(out)
        );
        Some(summarised(&base, &summary))
    };
    let of = audit_of.clone();
    let done = blocking(move || store.apply_urgent(&changes, &who, clock::now_us(), &of)).await?;
    log_change(audit_of(&done));
    let (changed, out) = done;
    Ok(write_response(
        changed,
        Some(out.live_at_us),
        urgent_message(&out),
    ))
}

async fn rollback_urgent(
    state: &AppState,
    admin: &Admin,
    req: RollbackRequest,
) -> ApiResult<Json<RollbackResponse>> {
    let store = state.store.clone();
    let base = audit_entry(admin, "rollback-urgent", "");
    let target = req.version;
    let audit_of = move |(_, out): &(RollbackOutcome, UrgentOutcome)| {
        let summary = format!("to version {target}; {}", urgent_message(out));
        Some(summarised(&base, &summary))
    };
    let of = audit_of.clone();
    let done = blocking(move || {
        store.rollback_urgent(target, req.discard_edits, "rollback", clock::now_us(), &of)
    })
    .await?;
    log_change(audit_of(&done));
    let (out, urgent) = done;
    Ok(Json(RollbackResponse {
        version: out.version.or(Some(urgent.version)),
        dry_run: false,
        live_by_us: urgent.live_at_us,
        message: format!("rollback to version {target}: {}", urgent_message(&urgent)),
        production: out.production,
    }))
}

/// `POST /v1/admin/publish {"urgent": true}`: production's content goes live at now + the
/// urgent window.
async fn admin_publish(
    admin: Admin,
    State(state): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PublishResponse>> {
    let req: PublishRequest = parse_json(body)?;
    if !req.urgent {
        return Err(ApiError::bad_request(
            "publish needs urgent: true (without it production goes live at the next \
             activations anyway)",
        ));
    }
    let store = state.store.clone();
    let who = admin.who.clone();
    let base = audit_entry(&admin, "publish-urgent", "");
    let audit_of = move |out: &UrgentOutcome| {
        (!out.already_live).then(|| summarised(&base, &urgent_message(out)))
    };
    let of = audit_of.clone();
    let out = blocking(move || store.urgent(&who, clock::now_us(), &of)).await?;
    log_change(audit_of(&out));
    Ok(Json(publish_response(&out)))
}

/// What a rollback to `target` did, or with a dry run would do, in one sentence.
fn rollback_message(target: u64, out: &RollbackOutcome) -> String {
    let at = format_us(out.activation_time_us);
    let keys =
        out.production.added.len() + out.production.removed.len() + out.production.changed.len();
    match out.version {
        Some(v) => format!(
            "version {v} has the content of version {target}; it goes live at {at}; production \
             changed in {keys} keys"
        ),
        None if keys == 0 => format!(
            "dry run: production already has the content of version {target}; a rollback would \
             only stage it for {at}"
        ),
        None => format!(
            "dry run: a rollback to version {target} would change {keys} production keys and \
             stage it for {at}"
        ),
    }
}

async fn admin_pin(
    admin: Admin,
    State(state): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PinChange>> {
    pin(state, admin, body, true).await
}

async fn admin_unpin(
    admin: Admin,
    State(state): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<PinChange>> {
    pin(state, admin, body, false).await
}

/// Pins or unpins a version: retention keeps a pinned version's content.
/// What a pin or unpin request may hold: the answer's other fields are not inputs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    version: u64,
}

async fn pin(
    state: Shared,
    admin: Admin,
    body: Result<Bytes, BytesRejection>,
    pinned: bool,
) -> ApiResult<Json<PinChange>> {
    let req: PinRequest = parse_json(body)?;
    let version = req.version;
    let store = state.store.clone();
    let action = if pinned { "pin" } else { "unpin" };
    let entry = audit_entry(&admin, action, &format!("version {version}"));
    let audit_of = move |_: &()| Some(entry.clone());
    let of = audit_of.clone();
    blocking(move || store.pin(version, pinned, &of)).await?;
    log_change(audit_of(&()));
    let message = match pinned {
        true => format!("version {version} is pinned: retention keeps its content"),
        false => format!(
            "version {version} is unpinned: retention drops its content once it is neither \
             among the newest versions kept nor within the time kept"
        ),
    };
    Ok(Json(PinChange {
        version,
        pinned,
        message,
    }))
}

async fn admin_status(_: Viewer, State(state): State<Shared>) -> ApiResult<Response> {
    let store = state.store.clone();
    Ok(Json(blocking(move || store.status(clock::now_us())).await?).into_response())
}

/// Query strings are exact too: a misspelt parameter is a 400, not silently ignored, and a
/// limit is at least 1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitQuery {
    limit: Option<std::num::NonZeroU64>,
}

impl LimitQuery {
    /// The `limit` asked for, `default` without one, never above `max`.
    fn or(&self, default: u64, max: u64) -> u64 {
        self.limit.map_or(default, |n| n.get()).min(max)
    }
}

/// Versions `GET /v1/admin/history` lists without a `limit`.
const DEFAULT_HISTORY_LIMIT: u64 = 100;

async fn admin_history(
    _: Viewer,
    State(state): State<Shared>,
    query: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let store = state.store.clone();
    let limit = q.or(DEFAULT_HISTORY_LIMIT, u64::MAX);
    Ok(Json(blocking(move || store.history(limit)).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffQuery {
    a: u64,
    b: u64,
}

async fn admin_diff(
    _: Viewer,
    State(state): State<Shared>,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let store = state.store.clone();
    Ok(Json(blocking(move || store.diff(q.a, q.b)).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysQuery {
    #[serde(default)]
    prefix: String,
    limit: Option<std::num::NonZeroUsize>,
}

async fn admin_keys(
    _: Viewer,
    State(state): State<Shared>,
    query: Result<Query<KeysQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let store = state.store.clone();
    let limit = q.limit.map_or(10_000, |n| n.get());
    Ok(
        Json(blocking(move || store.production_list(q.prefix.as_bytes(), limit)).await?)
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyQuery {
    key: Option<String>,
    key_b64: Option<String>,
    version: Option<u64>,
}

async fn admin_key(
    _: Viewer,
    State(state): State<Shared>,
    query: Result<Query<KeyQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let key = match (q.key, q.key_b64) {
        (Some(k), None) => k.into_bytes(),
        (None, Some(b)) => blob("key_b64", Blob::Base64 { b64: b })?,
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of key= or key_b64=",
            ))
        }
    };
    let store = state.store.clone();
    let shown = Blob::from_bytes(&key).display();
    let missing = |where_: String| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("key '{shown}' is not in {where_}"),
        )
    };
    match q.version {
        None => {
            let k = key.clone();
            match blocking(move || store.production_get(&k)).await? {
                Some(info) => Ok(Json(info).into_response()),
                None => Err(missing("production".into())),
            }
        }
        Some(v) => {
            let content = blocking(move || store.version_content(v)).await?;
            match content.get(&key) {
                Some(value) => Ok(Json(wire::Entry {
                    key: Blob::from_bytes(&key),
                    value: Blob::from_bytes(value),
                })
                .into_response()),
                None => Err(missing(format!("version {v}"))),
            }
        }
    }
}

async fn admin_scheduled(_: Viewer, State(state): State<Shared>) -> ApiResult<Response> {
    let store = state.store.clone();
    Ok(Json(blocking(move || store.scheduled_pending()).await?).into_response())
}

async fn admin_rotations(_: Viewer, State(state): State<Shared>) -> ApiResult<Response> {
    let store = state.store.clone();
    Ok(Json(blocking(move || store.rotations()).await?).into_response())
}

/// Activations listed without a `limit`.
const DEFAULT_ACTIVATIONS_LIMIT: u64 = 20;
/// The most activations one request may ask for: each reads its reports and the farm.
const MAX_ACTIVATIONS_LIMIT: u64 = 1_000;

async fn admin_activations(
    _: Viewer,
    State(state): State<Shared>,
    query: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let limit = q.or(DEFAULT_ACTIVATIONS_LIMIT, MAX_ACTIVATIONS_LIMIT);
    let store = state.store.clone();
    Ok(Json(blocking(move || store.activations(limit, clock::now_us())).await?).into_response())
}

/// Audit entries listed without a `limit`.
const DEFAULT_AUDIT_LIMIT: u64 = 100;

async fn admin_audit(
    _: Viewer,
    State(state): State<Shared>,
    query: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let limit = q.or(DEFAULT_AUDIT_LIMIT, 100_000);
    let store = state.store.clone();
    Ok(Json(blocking(move || store.audit(limit)).await?).into_response())
}

/// Readiness: 200 when the database answers a read, 503 saying why when it does not.
async fn ready(State(state): State<Shared>) -> Response {
    let store = state.store.clone();
    match blocking(move || store.ready()).await {
        Ok(sync) => Json(serde_json::json!({
            "status": "ready",
            "server_time_us": clock::now_us(),
            "active_version": sync.active_version,
        }))
        .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "not ready",
                "error": format!("the database does not answer: {}", e.message),
            })),
        )
            .into_response(),
    }
}

async fn metrics(_: Reader, State(state): State<Shared>) -> ApiResult<Response> {
    let store = state.store.clone();
    let (status, last) = blocking(move || {
        let now = clock::now_us();
        let status = store.status(now)?;
        // The newest activation whose reports are in: a younger one lists every member that
        // has not checked in since as missing.
        let age = metrics::settled_after_us(status.sync.interval_us);
        let settled = now.saturating_sub(age);
        // At most one activation an interval, so this many reach back past `age`.
        let scan = (age / status.sync.interval_us.max(1) + 2).clamp(2, 64) as u64;
        let last = store
            .activations(scan, now)?
            .into_iter()
            .find(|a| a.activation_time_us <= settled);
        Ok((status, last))
    })
    .await?;
    state.metrics.held_checkins(state.waiters.held());
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics.render(&status, last.as_ref()),
    )
        .into_response())
}
