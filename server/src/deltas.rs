//! Deltas from one version to another (see [`lockstep::delta`]), made once per pair and kept in
//! memory, so that a farm of clients that hold the active version download only what the
//! staged one changed.
//!
//! A check-in answer names the delta from the active version to the staged one, and the first
//! check-in that names a new pair starts making it in the background (at background priority:
//! that check-in is one of the farm's herd at the activation time), so it is usually ready
//! before the first client asks. Concurrent first requests await that one computation without
//! a blocking thread each (store calls need them). Only deltas to the staged or active version
//! are made: a URL to an older one that has left the cache answers 404, so that cycling old
//! URLs cannot force one costly make after another. A delta no smaller than the version it makes is not worth a round trip: it is remembered as
//! "none", no longer named, and its URL answers 404 (the client then downloads in full).
//! A failure (the database unreachable, a damaged version) is not remembered: the next request
//! tries again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use lockstep::wire;

use crate::api::{ApiError, ApiResult, AppState};
use crate::blobs::Blobs;
use crate::store::Store;

/// Pairs kept: active → staged now and the pairs of the last few rotations (a rollback's, a
/// lagging client's). An older pair is made again if it is ever asked for.
const CACHED_DELTAS: usize = 8;
/// How far below the version it makes a delta's base may be, when a request names a pair this
/// process did not make (another instance's check-in answer, or one from before a restart).
const BASES_SEARCHED: u64 = 8;

/// Deltas made at once: each takes a core for seconds at a million keys.
static DELTA_POOL: crate::background::Pool = crate::background::Pool::new(2);

/// What a pair is known by: base checksum, target version, target checksum.
type Pair = (u64, u64, u64);

/// The delta of one pair once made: `None` when it is no smaller than the version.
#[derive(Default)]
struct Slot {
    made: tokio::sync::OnceCell<Option<Bytes>>,
    /// A check-in has started making it: later ones only name it.
    started: AtomicBool,
}

type Made = Arc<Slot>;

type Pairs = Arc<Mutex<VecDeque<(Pair, Made)>>>;

#[derive(Default)]
pub struct Deltas {
    made: Pairs,
}

impl Deltas {
    fn cell(&self, pair: Pair) -> Made {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, cell)) = made.iter().find(|(p, _)| *p == pair) {
            return cell.clone();
        }
        let cell = Made::default();
        made.push_back((pair, cell.clone()));
        if made.len() > CACHED_DELTAS {
            made.pop_front();
        }
        cell
    }

    fn cached(&self, pair: Pair) -> Option<Made> {
        let made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        made.iter()
            .find(|(p, _)| *p == pair)
            .map(|(_, c)| c.clone())
    }

    /// The delta path a check-in answer names from `(version, checksum)` `base` to `target`,
    /// empty when there is no worthwhile delta; starts making a pair it has not seen.
    pub fn path(
        &self,
        store: &Arc<Store>,
        blobs: &Blobs,
        base: (u64, u64),
        target: (u64, u64),
    ) -> String {
        if base.0 == target.0 || base.0 == 0 {
            return String::new();
        }
        let pair = (base.1, target.0, target.1);
        let cell = self.cell(pair);
        match cell.made.get() {
            Some(None) => return String::new(),
            Some(Some(_)) => {}
            None if cell.started.swap(true, Relaxed) => {}
            None => {
                let (store, pairs) = (store.clone(), self.made.clone());
                tokio::spawn(async move { make(store, &pairs, Some(base.0), pair, &cell).await });
            }
        }
        let name = wire::delta_name(pair.0, pair.1, pair.2);
        wire::delta_path(pair.0, pair.1, pair.2, &blobs.key(&name))
    }
}

/// Why a delta was not made.
enum NotMade {
    /// Its target is neither the staged nor the active version.
    NotCurrent(String),
    Failed(String),
}

/// Makes the delta of `pair` from version `base_version` (found by its checksum when `None`)
/// into `cell`, once: one request makes it on a background thread, the others await it. An error
/// leaves the cell empty and forgets it, so that the next request tries again.
async fn make(
    store: Arc<Store>,
    pairs: &Pairs,
    base_version: Option<u64>,
    pair: Pair,
    cell: &Made,
) -> Result<Option<Bytes>, NotMade> {
    let made = cell
        .made
        .get_or_try_init(|| async {
            DELTA_POOL
                .run("delta", move || {
                    let sync = store
                        .sync_table()
                        .map_err(|e| NotMade::Failed(e.to_string()))?;
                    if pair.1 != sync.staged_version && pair.1 != sync.active_version {
                        return Err(NotMade::NotCurrent(format!(
                            "no delta to version {}: deltas are made only to the staged or active \
                         version; download it whole",
                            pair.1
                        )));
                    }
                    let base = match base_version {
                        Some(base) => base,
                        None => find_base(&store, pair.1, pair.0).ok_or_else(|| {
                            NotMade::Failed(format!(
                                "no version below {} here has checksum {:016x}",
                                pair.1, pair.0
                            ))
                        })?,
                    };
                    compute(&store, base, pair).map_err(NotMade::Failed)
                })
                .await
                .map_err(NotMade::Failed)?
        })
        .await;
    match made {
        Ok(made) => Ok(made.clone()),
        Err(e) => {
            let mut made = pairs.lock().unwrap_or_else(|e| e.into_inner());
            made.retain(|(p, c)| *p != pair || !Arc::ptr_eq(c, cell));
            if let NotMade::Failed(e) = &e {
                tracing::warn!(version = pair.1, "delta not made: {e}");
            }
            Err(e)
        }
    }
}

fn compute(store: &Store, base_version: u64, pair: Pair) -> Result<Option<Bytes>, String> {
    let (base_checksum, version, checksum) = pair;
    let base = store
        .version_bytes(base_version)
        .map_err(|e| e.to_string())?;
    let target = store.version_bytes(version).map_err(|e| e.to_string())?;
    if base.checksum != base_checksum || target.checksum != checksum {
        return Err("the pair's checksums are not the stored versions'".into());
    }
    let started = std::time::Instant::now();
    let delta = lockstep::delta::make(&base.bytes, &target.bytes).map_err(|e| e.to_string())?;
    tracing::debug!(
        base = base_version,
        version,
        delta_bytes = delta.len(),
        version_bytes = target.bytes.len(),
        ms = started.elapsed().as_millis() as u64,
        "delta made"
    );
    Ok((delta.len() < target.bytes.len()).then(|| Bytes::from(delta)))
}

/// The version below `version` whose checksum is `base_checksum`, if this database holds one
/// among the few a delta is ever made from.
fn find_base(store: &Store, version: u64, base_checksum: u64) -> Option<u64> {
    let active = store.sync_table().ok().map(|s| s.active_version);
    active
        .into_iter()
        .chain((1..=BASES_SEARCHED).filter_map(|back| version.checked_sub(back)))
        .filter(|&n| n != 0 && n != version)
        .find(|&n| store.version_checksum(n).ok() == Some(base_checksum))
}

/// `GET /v1/deltas/{base_checksum}-{version}-{checksum}-{key}`: the delta of a pair, to anyone
/// holding the URL; 404 when there is none worth sending.
pub async fn delta(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(segment): Path<String>,
) -> ApiResult<Response> {
    let malformed = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
            "malformed delta name '{}': want {{16 hex digits of base checksum}}-{{version}}-{{16 \
             hex digits of checksum}}-{{{} hex digits of key}}, as a check-in answer gives it",
            segment.chars().take(120).collect::<String>(),
                wire::BLOB_KEY_HEX_LEN
            ),
        )
    };
    let (name, key) = wire::split_key(&segment).ok_or_else(malformed)?;
    let pair = wire::parse_delta_name(name).ok_or_else(malformed)?;
    if wire::delta_name(pair.0, pair.1, pair.2) != name {
        return Err(malformed());
    }
    if !state.blobs.key_matches(name, key) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no delta at this URL: its key is not this data server's (take delta URLs from a \
             check-in answer)",
        ));
    }
    let none = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no delta to version {} smaller than the version itself: download it whole",
                pair.1
            ),
        )
    };
    let cell = match state.deltas.cached(pair) {
        Some(cell) => cell,
        None => {
            // A pair to an old version would push a current one out of the cache.
            let store = state.store.clone();
            let sync = match store.recent_sync_table(crate::clock::now_us()) {
                Some(sync) => sync,
                None => tokio::task::spawn_blocking(move || store.sync_table())
                    .await
                    .map_err(|e| {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                    })??,
            };
            if pair.1 != sync.staged_version && pair.1 != sync.active_version {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no delta to version {}: deltas are made only to the staged or active \
                         version; download it whole",
                        pair.1
                    ),
                ));
            }
            state.deltas.cell(pair)
        }
    };
    let made = make(state.store.clone(), &state.deltas.made, None, pair, &cell).await;
    let bytes = match made {
        Ok(made) => made.ok_or_else(none)?,
        Err(NotMade::NotCurrent(e) | NotMade::Failed(e)) => {
            return Err(ApiError::new(StatusCode::NOT_FOUND, e));
        }
    };
    Ok(state
        .blobs
        .immutable_response(&headers, name, &format!("d{name}"), bytes)
        .await)
}
