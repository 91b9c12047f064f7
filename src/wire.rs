//! The data server's HTTP API as both sides see it: paths, headers and JSON bodies.
//!
//! Control messages are JSON; version data is the raw bytes of [`crate::format`]. The client
//! library, the data server and the CLI all compile against this one module, so a field renamed
//! here is renamed everywhere or fails to build.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Liveness probe; no token needed.
pub const PATH_HEALTH: &str = "/v1/health";
/// The retrieval step's check-in (GET with [`CheckinQuery`] as the query string).
pub const PATH_CHECKIN: &str = "/v1/checkin";
/// Prefix of `GET /v1/versions/{number}`.
pub const PATH_VERSIONS: &str = "/v1/versions";
/// The version that should be active now, for a client that is starting up.
pub const PATH_CURRENT: &str = "/v1/versions/current";
/// Prefix of every admin endpoint.
pub const PATH_ADMIN: &str = "/v1/admin";
/// Readiness probe: 200 when the database answers, 503 with the reason when it does not.
pub const PATH_READY: &str = "/v1/ready";
/// Prometheus metrics, in the text exposition format.
pub const PATH_METRICS: &str = "/metrics";

/// The admin endpoints, each [`PATH_ADMIN`] followed by its `ADMIN_*` suffix.
pub const ADMIN_PUT: &str = "/put";
pub const ADMIN_DELETE: &str = "/delete";
pub const ADMIN_IMPORT: &str = "/import";
pub const ADMIN_INTERVAL: &str = "/interval";
pub const ADMIN_ROLLBACK: &str = "/rollback";
pub const ADMIN_STATUS: &str = "/status";
pub const ADMIN_HISTORY: &str = "/history";
pub const ADMIN_DIFF: &str = "/diff";
pub const ADMIN_KEYS: &str = "/keys";
pub const ADMIN_KEY: &str = "/key";
pub const ADMIN_SCHEDULED: &str = "/scheduled";
pub const ADMIN_ROTATIONS: &str = "/rotations";
pub const ADMIN_PIN: &str = "/pin";
pub const ADMIN_UNPIN: &str = "/unpin";
/// The proof of each activation: who switched, when, who was late or missing.
pub const ADMIN_ACTIVATIONS: &str = "/activations";
/// The audit log: who changed what, when and from where.
pub const ADMIN_AUDIT: &str = "/audit";
/// Makes production's content go live now (`{"urgent": true}`).
pub const ADMIN_PUBLISH: &str = "/publish";

/// The full path of an admin endpoint: `admin_path(ADMIN_PUT)` is `/v1/admin/put`.
pub fn admin_path(suffix: &str) -> String {
    format!("{PATH_ADMIN}{suffix}")
}

/// Data-server clock when the answer left, µs since the Unix epoch: stamped as late as
/// possible on every answer, 304 included, so each round trip is also a clock sample.
pub const HEADER_SERVER_TIME: &str = "x-lockstep-server-time-us";
/// Data-server clock when the request arrived, µs since the Unix epoch; sent on every answer
/// with [`HEADER_SERVER_TIME`], which is then stamped as late as possible. The two are NTP's
/// second and third timestamps: the time the server spent between them is not network delay,
/// so a client takes it out of the round trip and of the offset.
pub const HEADER_SERVER_RECEIVED: &str = "x-lockstep-server-received-us";
/// Number of the version in a version response.
pub const HEADER_VERSION: &str = "x-lockstep-version";
/// Checksum of the version in a version response, as 16 hex digits.
pub const HEADER_CHECKSUM: &str = "x-lockstep-checksum";

/// Shortest activation interval a data server accepts and a client believes: below it, the
/// check-in round trips and downloads of a cycle eat the whole interval.
pub const MIN_INTERVAL_US: i64 = 100_000;
/// Longest activation interval: one day. Every interval that divides a day keeps midnight on
/// the grid, and nothing is gained by activating less than daily; a longer one schedules the
/// next activation so far ahead that a mistyped interval freezes the farm until then.
pub const MAX_INTERVAL_US: i64 = 86_400_000_000;
/// Shortest minimum retrieval window: a check-in and a download need at least a few
/// milliseconds. The longest is the interval itself.
pub const MIN_WINDOW_US: i64 = 10_000;
/// A client waiting for an activation checks in every quarter interval, but at least every
/// [`CHECKIN_PERIOD_MAX_US`] and at most every [`CHECKIN_PERIOD_MIN_US`]. The data server counts
/// on that when it moves an activation earlier (every client learns the new time before it
/// comes) and when it decides a client has gone silent.
pub const CHECKIN_PERIOD_MIN_US: i64 = 200_000;
/// See [`CHECKIN_PERIOD_MIN_US`].
pub const CHECKIN_PERIOD_MAX_US: i64 = 15_000_000;

/// The synchronization table, as a check-in returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SyncTable {
    /// When every client makes `staged_version` its active version (data-server clock, µs).
    pub activation_time_us: i64,
    /// Distance between activation times on the grid, µs.
    pub interval_us: i64,
    /// Least time between a rotation and the activation it schedules, µs.
    pub min_window_us: i64,
    /// The version clients download now and activate at `activation_time_us`.
    pub staged_version: u64,
    /// The version that should be active now.
    pub active_version: u64,
}

/// A check-in's answer: the sync table and the data server's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckinResponse {
    #[serde(flatten)]
    pub sync: SyncTable,
    /// Data-server clock when the answer was made, µs since the Unix epoch.
    pub server_time_us: i64,
    /// True when this very request performed the rotation.
    pub rotated: bool,
    /// Checksum of the staged version (16 hex digits). A client accepts a download only if it
    /// carries this checksum, so a version swapped in transit is refused even when it is
    /// internally consistent.
    #[serde(default)]
    pub staged_checksum: String,
    /// Checksum of the active version (16 hex digits).
    #[serde(default)]
    pub active_checksum: String,
    /// Where to download the staged version: a [`blob_path`] (empty from a data server that
    /// predates blob URLs: the client then asks [`PATH_VERSIONS`]).
    #[serde(default)]
    pub staged_blob: String,
    /// Where to download the active version: a [`blob_path`], or empty as above.
    #[serde(default)]
    pub active_blob: String,
    /// A [`delta_path`] from the active version to the staged one, or empty when the data
    /// server offers none.
    #[serde(default)]
    pub staged_delta_from_active: String,
}

impl SyncTable {
    /// The ETag of a sync table: a client holding it gets 304 until a rotation changes it.
    pub fn etag(&self) -> String {
        // Every field: a client holding an older table must get the new one, whatever changed.
        let SyncTable {
            activation_time_us,
            interval_us,
            min_window_us,
            staged_version,
            active_version,
        } = self;
        format!(
            "\"s{activation_time_us}-{staged_version}-{active_version}-{interval_us}-{min_window_us}\""
        )
    }
}

/// A version checksum as the API writes it: 16 lowercase hex digits.
pub fn checksum_hex(checksum: u64) -> String {
    format!("{checksum:016x}")
}

/// Reads [`checksum_hex`]'s form back.
pub fn parse_checksum_hex(s: &str) -> Option<u64> {
    (s.len() == 16)
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// The ETag of a version: versions are immutable, so the number and checksum identify them.
pub fn version_etag(version: u64, checksum: u64) -> String {
    format!("\"v{version}-{checksum:016x}\"")
}

/// Prefix of `GET /v1/blobs/{version}-{checksum}-{key}`: a full version at an immutable,
/// cacheable URL that needs no token (see [`blob_path`]).
pub const PATH_BLOBS: &str = "/v1/blobs";
/// Prefix of `GET /v1/deltas/{base_checksum}-{version}-{checksum}-{key}` (see [`delta_path`]).
pub const PATH_DELTAS: &str = "/v1/deltas";
/// The `Cache-Control` of blob and delta answers: their URLs name immutable bytes, so any
/// HTTP cache may keep them for as long as it likes.
pub const BLOB_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";
/// Hex digits of a blob key: the first 16 bytes of an HMAC-SHA256, enough that a key cannot
/// be guessed, short enough for a URL.
pub const BLOB_KEY_HEX_LEN: usize = 32;

/// What a blob key signs for a full version: `{version}-{checksum_hex}`.
pub fn blob_name(version: u64, checksum: u64) -> String {
    format!("{version}-{checksum:016x}")
}

/// What a blob key signs for a delta: `{base_checksum_hex}-{version}-{checksum_hex}`.
pub fn delta_name(base_checksum: u64, version: u64, checksum: u64) -> String {
    format!("{base_checksum:016x}-{version}-{checksum:016x}")
}

/// The path of a full version's blob; `key` is the data server's capability for this name.
pub fn blob_path(version: u64, checksum: u64, key: &str) -> String {
    format!("{PATH_BLOBS}/{}-{key}", blob_name(version, checksum))
}

/// The path of the delta from the version with `base_checksum` to `version`.
pub fn delta_path(base_checksum: u64, version: u64, checksum: u64, key: &str) -> String {
    format!(
        "{PATH_DELTAS}/{}-{key}",
        delta_name(base_checksum, version, checksum)
    )
}

/// Splits the last path segment of a blob or delta URL into the signed name and its key; `None`
/// unless the key is [`BLOB_KEY_HEX_LEN`] lowercase hex digits.
pub fn split_key(segment: &str) -> Option<(&str, &str)> {
    let (name, key) = segment.rsplit_once('-')?;
    let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    (key.len() == BLOB_KEY_HEX_LEN && key.bytes().all(hex)).then_some((name, key))
}

/// Reads [`blob_name`]'s form back: (version, checksum).
pub fn parse_blob_name(name: &str) -> Option<(u64, u64)> {
    let (version, checksum) = name.split_once('-')?;
    // Digits only: `u64::from_str` also takes a leading '+', which would give one blob two names.
    if version.is_empty() || !version.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((version.parse().ok()?, parse_checksum_hex(checksum)?))
}

/// Reads [`delta_name`]'s form back: (base checksum, version, checksum).
pub fn parse_delta_name(name: &str) -> Option<(u64, u64, u64)> {
    let (base, rest) = name.split_once('-')?;
    let (version, checksum) = parse_blob_name(rest)?;
    Some((parse_checksum_hex(base)?, version, checksum))
}

/// What a client says about itself when it checks in, so the farm view can show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckinQuery {
    pub name: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub staged: u64,
    #[serde(default)]
    pub active: u64,
    /// Estimated data-server clock minus local clock, µs.
    #[serde(default)]
    pub offset_us: i64,
    /// Error bound of that estimate (half the best round trip), µs.
    #[serde(default)]
    pub error_us: i64,
    /// 1 when the client missed an activation and is catching up.
    #[serde(default)]
    pub lagging: u8,
    /// "leader" when this client checks in for its whole host (its host cache's other
    /// processes follow it); empty for a process on its own.
    #[serde(default)]
    pub role: String,
    /// The host's followers, encoded by [`ReportedMember::encode`] (at most
    /// [`MAX_REPORTED_MEMBERS`]).
    #[serde(default)]
    pub members: String,
    /// Data-server clock at this process's first check-in, µs (0: not told): the proof of
    /// activation expects a switch only from processes that were up at the activation time.
    #[serde(default)]
    pub since_us: i64,
    /// The last switch, reported at the check-ins after it (see [`SwitchReport`]); absent
    /// (0) from a client that has not switched since it started, or that predates the proof.
    #[serde(default)]
    pub sw_version: u64,
    #[serde(default)]
    pub sw_checksum: String,
    #[serde(default)]
    pub sw_activation_us: i64,
    #[serde(default)]
    pub sw_at_us: i64,
    #[serde(default)]
    pub sw_error_us: i64,
    #[serde(default)]
    pub sw_late: u8,
    /// Milliseconds the data server may hold this check-in when it would answer 304 (see
    /// [`QUERY_WAIT_MS`]); 0: answer at once.
    #[serde(default)]
    pub wait_ms: u64,
}

/// A long-poll check-in: with `If-None-Match` naming the sync table the data server holds now,
/// it answers once the table changes (200) or after this many milliseconds (304), capped by
/// [`MAX_WAIT_MS`]. A data server that predates it answers at once.
pub const QUERY_WAIT_MS: &str = "wait_ms";
/// The longest a data server holds a check-in.
pub const MAX_WAIT_MS: u64 = 60_000;
/// Present (`1`) on a check-in answer the data server held: its time headers bracket the
/// wait, so it is no clock sample.
pub const HEADER_HELD: &str = "x-lockstep-held";
/// [`HEADER_HELD`]'s value on an answer the data server held.
pub const HELD_YES: &str = "1";
/// [`HEADER_HELD`]'s value on a long-poll check-in's 304 answered at once because the data
/// server holds as many as it may (`--max-held-checkins`): not a server without long-poll;
/// the client sleeps until its next check-in and long-polls again after it.
pub const HELD_BUSY: &str = "0";

/// Query parameters of a check-in's switch report ([`CheckinQuery`]'s `sw_*` fields).
pub const QUERY_SINCE: &str = "since_us";
/// The version the client switched to.
pub const QUERY_SWITCH_VERSION: &str = "sw_version";
/// That version's checksum, as [`checksum_hex`] writes it: what the client serves.
pub const QUERY_SWITCH_CHECKSUM: &str = "sw_checksum";
/// The activation time it armed the switch for (data-server µs); 0 for a catch-up.
pub const QUERY_SWITCH_ACTIVATION: &str = "sw_activation_us";
/// The instant readers switched, converted to the data server's clock with the client's
/// latest offset estimate, µs.
pub const QUERY_SWITCH_AT: &str = "sw_at_us";
/// The error bound of that conversion, µs.
pub const QUERY_SWITCH_ERROR: &str = "sw_error_us";
/// 1 when the client switched late: it caught up after the activation time.
pub const QUERY_SWITCH_LATE: &str = "sw_late";

/// A client's proof that it switched, as a check-in reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchReport {
    pub version: u64,
    pub checksum: u64,
    /// The activation time armed for; 0 when the client caught up late.
    pub activation_us: i64,
    /// When readers switched, data-server clock, µs.
    pub switched_us: i64,
    pub error_us: i64,
    pub late: bool,
}

impl CheckinQuery {
    /// The switch this check-in reports, if it reports one that parses.
    pub fn switch_report(&self) -> Option<SwitchReport> {
        if self.sw_version == 0 {
            return None;
        }
        Some(SwitchReport {
            version: self.sw_version,
            checksum: parse_checksum_hex(&self.sw_checksum)?,
            activation_us: self.sw_activation_us,
            switched_us: self.sw_at_us,
            error_us: self.sw_error_us,
            late: self.sw_late != 0,
        })
    }
}

/// The most followers a leader lists in one check-in; a larger host reports the first ones.
pub const MAX_REPORTED_MEMBERS: usize = 256;

/// One follower as a leader reports it in [`CheckinQuery::members`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedMember {
    pub pid: u32,
    pub active: u64,
    pub staged: u64,
    pub lagging: bool,
    /// The follower's `name` option.
    pub name: String,
}

/// `,`, `:` and `%` in a name, escaped so that the list stays parseable.
fn escape_name(name: &str) -> String {
    name.replace('%', "%25")
        .replace(',', "%2C")
        .replace(':', "%3A")
}

fn unescape_name(name: &str) -> String {
    name.replace("%3A", ":")
        .replace("%2C", ",")
        .replace("%25", "%")
}

impl ReportedMember {
    /// `pid:active:staged:lagging:name` items separated by `,`.
    pub fn encode(members: &[ReportedMember]) -> String {
        members
            .iter()
            .take(MAX_REPORTED_MEMBERS)
            .map(|m| {
                format!(
                    "{}:{}:{}:{}:{}",
                    m.pid,
                    m.active,
                    m.staged,
                    m.lagging as u8,
                    escape_name(&m.name)
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses [`ReportedMember::encode`]'s form, skipping items that do not parse.
    pub fn decode(s: &str) -> Vec<ReportedMember> {
        s.split(',')
            .take(MAX_REPORTED_MEMBERS)
            .filter_map(|item| {
                let mut f = item.splitn(5, ':');
                Some(ReportedMember {
                    pid: f.next()?.parse().ok()?,
                    active: f.next()?.parse().ok()?,
                    staged: f.next()?.parse().ok()?,
                    lagging: f.next()? == "1",
                    name: unescape_name(f.next().unwrap_or("")),
                })
            })
            .collect()
    }
}

/// Bytes in JSON: a plain string when they are UTF-8, otherwise `{"b64": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Blob {
    Text(String),
    Base64 { b64: String },
}

impl Blob {
    pub fn from_bytes(bytes: &[u8]) -> Blob {
        match std::str::from_utf8(bytes) {
            Ok(s) => Blob::Text(s.to_owned()),
            Err(_) => Blob::Base64 {
                b64: base64::engine::general_purpose::STANDARD.encode(bytes),
            },
        }
    }

    pub fn into_bytes(self) -> Result<Vec<u8>, String> {
        match self {
            Blob::Text(s) => Ok(s.into_bytes()),
            Blob::Base64 { b64 } => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| format!("invalid base64: {e}")),
        }
    }

    /// For people: the text, or the base64 form marked as such.
    pub fn display(&self) -> String {
        match self {
            Blob::Text(s) => s.clone(),
            Blob::Base64 { b64 } => format!("base64:{b64}"),
        }
    }
}

/// `POST /v1/admin/put`: set one key, now or at `at` (RFC 3339).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRequest {
    pub key: Blob,
    pub value: Blob,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Goes live at now + the urgent window (see `POST /v1/admin/publish`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub urgent: bool,
}

/// `POST /v1/admin/delete`: remove one key, now or at `at` (RFC 3339).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    pub key: Blob,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Goes live at now + the urgent window (see `POST /v1/admin/publish`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub urgent: bool,
}

/// One key and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub key: Blob,
    pub value: Blob,
}

/// `POST /v1/admin/import`: set many keys in one transaction; all or nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub entries: Vec<Entry>,
    /// Goes live at now + the urgent window (see `POST /v1/admin/publish`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub urgent: bool,
}

/// `POST /v1/admin/interval`: durations written like `500ms`, `30s`, `10m`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntervalRequest {
    pub interval: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_window: Option<String>,
    /// How soon an urgent change goes live (1ms to 10m); absent: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgent_window: Option<String>,
}

/// Answer to `POST /v1/admin/interval`: the sync table after the change, and what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalResponse {
    #[serde(flatten)]
    pub sync: SyncTable,
    /// The activation time before the change; `sync.activation_time_us` is where it moved.
    pub previous_activation_us: i64,
    pub message: String,
}

/// `POST /v1/admin/rollback`: stage a new version with the content of `version`; production
/// becomes that content too, so edits made since are discarded from production.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub version: u64,
    /// Only report how production would change; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// False: refuse (409) if production differs from `version`'s content, so edits made after
    /// a preview are never discarded unseen. Absent: true.
    #[serde(default = "yes")]
    pub discard_edits: bool,
    /// Goes live at now + the urgent window (see `POST /v1/admin/publish`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub urgent: bool,
}

fn yes() -> bool {
    true
}

/// Answer to `POST /v1/admin/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackResponse {
    /// The new staged version; absent on a dry run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    pub dry_run: bool,
    /// The activation the rolled-back content goes live at.
    pub live_by_us: i64,
    /// How production changes: from its content now to the content of the version rolled
    /// back to (`old` is production's value, `new` the version's).
    pub production: KeyChanges,
    pub message: String,
}

/// `POST /v1/admin/publish`: make production's content go live at now + the urgent window
/// (`urgent` must be true: without it production goes live at the activations anyway).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    #[serde(default)]
    pub urgent: bool,
}

/// Answer to an urgent write (`POST /v1/admin/publish`, or a write with `urgent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResponse {
    /// The version staged now.
    pub version: u64,
    /// When production's content goes live: now + the urgent window, or, queued, the earliest
    /// after the activation already staged.
    pub live_by_us: i64,
    /// Queued for the rotation at the activation already staged (too close to move, another
    /// urgent activation pending, or a scheduled change it would bring forward).
    pub queued: bool,
    /// Production's content was live already.
    pub already_live: bool,
    pub message: String,
}

/// Answer to an admin write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResponse {
    /// Production entries changed (or scheduled changes recorded).
    pub changed: u64,
    /// When the change is due to go live at the latest, µs, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_by_us: Option<i64>,
    /// A version number, for writes that create one (rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    pub message: String,
}

/// One production entry, as `GET /v1/admin/keys` and `/v1/admin/key` return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub key: Blob,
    pub value: Blob,
    pub changed_by: String,
    pub changed_at_us: i64,
}

/// A change waiting for its effective time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledChange {
    pub id: i64,
    pub effective_us: i64,
    /// "put" or "delete".
    pub op: String,
    pub key: Blob,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Blob>,
    pub created_by: String,
}

/// One process holding a handle (a web server, or a pre-fork master that opened one), as the
/// data server last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FarmMember {
    pub name: String,
    pub host: String,
    pub pid: u32,
    pub staged: u64,
    pub active: u64,
    pub offset_us: i64,
    pub error_us: i64,
    pub lagging: bool,
    pub last_checkin_us: i64,
    /// Time since that check-in when the status was taken, µs.
    #[serde(default)]
    pub silent_us: i64,
    /// Silent for longer than a live client ever is: probably gone.
    #[serde(default)]
    pub stale: bool,
}

/// `GET /v1/admin/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub sync: SyncTable,
    pub server_time_us: i64,
    pub production_keys: u64,
    pub pending_scheduled: u64,
    pub versions: u64,
    pub rotations: u64,
    pub farm: Vec<FarmMember>,
}

/// One row of `GET /v1/admin/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u64,
    pub checksum: String,
    pub size: u64,
    pub entries: u64,
    pub created_us: i64,
    #[serde(default)]
    pub staged_us: Option<i64>,
    #[serde(default)]
    pub activated_us: Option<i64>,
    /// Why it was made: "initial", "rotation", "scheduled", "rollback of N".
    pub reason: String,
}

/// One row of the rotation log, `GET /v1/admin/rotations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationRecord {
    /// The activation time whose passing triggered this rotation.
    pub activation_time_us: i64,
    pub rotated_at_us: i64,
    pub active_version: u64,
    pub staged_version: u64,
    /// The activation time it scheduled next.
    pub next_activation_us: i64,
    /// Name of the client whose check-in performed it (the patent's "first web server").
    pub rotated_by: String,
    /// The activation time was scheduled by an urgent request (`lockstep put --urgent`), off
    /// the grid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub urgent: bool,
}

/// `GET /v1/admin/diff?a=A&b=B`: what changes from A to B.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffResponse {
    pub a: u64,
    pub b: u64,
    #[serde(flatten)]
    pub changes: KeyChanges,
}

/// What changes from one content to another, key by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChanges {
    pub added: Vec<Entry>,
    pub removed: Vec<Blob>,
    pub changed: Vec<ChangedEntry>,
}

impl KeyChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// A key whose value differs between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedEntry {
    pub key: Blob,
    pub old: Blob,
    pub new: Blob,
}

/// Every 4xx/5xx body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trips_text_and_binary() {
        for bytes in [&b"plain"[..], &[0xff, 0x00, 0x80][..]] {
            let blob = Blob::from_bytes(bytes);
            let json = serde_json::to_string(&blob).unwrap();
            let back: Blob = serde_json::from_str(&json).unwrap();
            assert_eq!(back.into_bytes().unwrap(), bytes);
        }
        assert_eq!(
            serde_json::to_string(&Blob::from_bytes(b"a")).unwrap(),
            "\"a\""
        );
    }

    #[test]
    fn blob_and_delta_paths_parse_back_and_refuse_other_spellings() {
        let key = "0123456789abcdef0123456789abcdef";
        let path = blob_path(42, 0xfeed, key);
        assert_eq!(path, format!("/v1/blobs/42-000000000000feed-{key}"));
        let segment = path.strip_prefix("/v1/blobs/").unwrap();
        let (name, k) = split_key(segment).unwrap();
        assert_eq!((name, k), ("42-000000000000feed", key));
        assert_eq!(parse_blob_name(name), Some((42, 0xfeed)));
        let delta = delta_path(7, 42, 0xfeed, key);
        let (name, _) = split_key(delta.strip_prefix("/v1/deltas/").unwrap()).unwrap();
        assert_eq!(parse_delta_name(name), Some((7, 42, 0xfeed)));
        for bad in [
            "42-000000000000feed",
            "42-000000000000feed-0123",
            "42-000000000000feed-0123456789ABCDEF0123456789abcdef",
        ] {
            assert_eq!(split_key(bad), None, "{bad}");
        }
        for bad in [
            "+42-000000000000feed",
            "-000000000000feed",
            "42-feed",
            "x-1",
        ] {
            assert_eq!(parse_blob_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn checkin_response_is_flat_json() {
        let r = CheckinResponse {
            sync: SyncTable {
                activation_time_us: 10,
                interval_us: 5,
                min_window_us: 2,
                staged_version: 3,
                active_version: 2,
            },
            server_time_us: 9,
            rotated: false,
            staged_checksum: "00000000000000ab".into(),
            active_checksum: String::new(),
            staged_blob: blob_path(3, 0xab, &"0".repeat(BLOB_KEY_HEX_LEN)),
            active_blob: String::new(),
            staged_delta_from_active: String::new(),
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["staged_version"], 3);
        assert_eq!(serde_json::from_value::<CheckinResponse>(v).unwrap(), r);
        let members = vec![
            ReportedMember {
                pid: 7,
                active: 3,
                staged: 4,
                lagging: true,
                name: "php:fpm,1%".into(),
            },
            ReportedMember {
                pid: 8,
                active: 3,
                staged: 0,
                lagging: false,
                name: String::new(),
            },
        ];
        assert_eq!(
            ReportedMember::decode(&ReportedMember::encode(&members)),
            members
        );
        assert_eq!(checksum_hex(0xab), "00000000000000ab");
        assert_eq!(parse_checksum_hex("00000000000000ab"), Some(0xab));
    }

    #[test]
    fn a_switch_report_travels_under_the_query_names_clients_send() {
        let q = CheckinQuery {
            name: "web".into(),
            since_us: 5,
            sw_version: 7,
            sw_checksum: checksum_hex(0xab),
            sw_activation_us: 1_000,
            sw_at_us: 1_010,
            sw_error_us: 20,
            sw_late: 1,
            ..Default::default()
        };
        let v = serde_json::to_value(&q).unwrap();
        for name in [
            QUERY_SINCE,
            QUERY_SWITCH_VERSION,
            QUERY_SWITCH_CHECKSUM,
            QUERY_SWITCH_ACTIVATION,
            QUERY_SWITCH_AT,
            QUERY_SWITCH_ERROR,
            QUERY_SWITCH_LATE,
        ] {
            assert!(v.get(name).is_some(), "{name}");
        }
        let r = q.switch_report().unwrap();
        assert_eq!((r.version, r.checksum, r.late), (7, 0xab, true));
        // An old client sends none of it; a garbled checksum is no report.
        assert_eq!(CheckinQuery::default().switch_report(), None);
        let garbled = CheckinQuery {
            sw_checksum: "xyz".into(),
            ..q
        };
        assert_eq!(garbled.switch_report(), None);
    }
}
