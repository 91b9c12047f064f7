//! Deltas from one version to another (see [`lockstep::delta`]), made once per pair and kept in
//! memory, so that a farm of clients that hold the active version download only what the
//! staged one changed.
//!
//! A check-in answer names the delta from the active version to the staged one, and the first
//! check-in that names a new pair starts making it in the background, so it is usually ready
//! before the first client asks. Concurrent first requests wait for that one computation. A
//! delta no smaller than the version it makes is not worth a round trip: it is remembered as
//! "none", no longer named, and its URL answers 404 (the client then downloads in full).
//! A failure (the database unreachable, a damaged version) is not remembered: the next request
//! tries again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

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

/// What a pair is known by: base checksum, target version, target checksum.
type Pair = (u64, u64, u64);

/// The delta of one pair once made: `None` when it is no smaller than the version.
#[derive(Default)]
struct Slot {
    made: OnceLock<Option<Bytes>>,
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

    fn forget(&self, pair: Pair) {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        made.retain(|(p, cell)| *p != pair || cell.made.get().is_some());
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
                tokio::task::spawn_blocking(move || make(&store, &pairs, base.0, pair, &cell));
            }
        }
        let name = wire::delta_name(pair.0, pair.1, pair.2);
        wire::delta_path(pair.0, pair.1, pair.2, &blobs.key(&name))
    }
}

/// Makes the delta of `pair` from version `base_version` into `cell`, once; an error leaves
/// the cell empty and forgets it, so that the next request tries again.
fn make(
    store: &Store,
    pairs: &Pairs,
    base_version: u64,
    pair: Pair,
    cell: &Made,
) -> Result<(), String> {
    let mut failed = None;
    cell.made
        .get_or_init(|| match compute(store, base_version, pair) {
            Ok(d) => d,
            Err(e) => {
                failed = Some(e);
                None
            }
        });
    match failed {
        Some(e) => {
            // The cell holds a None that only means "failed": drop it, so it is made again.
            let mut made = pairs.lock().unwrap_or_else(|e| e.into_inner());
            made.retain(|(p, c)| *p != pair || !Arc::ptr_eq(c, cell));
            tracing::warn!(base = base_version, version = pair.1, "delta not made: {e}");
            Err(e)
        }
        None => Ok(()),
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
    let cell = state.deltas.cell(pair);
    let made = match cell.made.get() {
        Some(made) => made.clone(),
        None => {
            let s = state.clone();
            let cell = cell.clone();
            let made = tokio::task::spawn_blocking(move || {
                let base = find_base(&s.store, pair.1, pair.0).ok_or_else(|| {
                    format!(
                        "no version below {} here has checksum {:016x}",
                        pair.1, pair.0
                    )
                })?;
                make(&s.store, &s.deltas.made, base, pair, &cell)?;
                Ok::<_, String>(cell.made.get().cloned().flatten())
            })
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            match made {
                Ok(made) => made,
                Err(e) => {
                    state.deltas.forget(pair);
                    return Err(ApiError::new(StatusCode::NOT_FOUND, e));
                }
            }
        }
    };
    let bytes = made.ok_or_else(none)?;
    Ok(state
        .blobs
        .immutable_response(&headers, name, &format!("d{name}"), bytes)
        .await)
}
