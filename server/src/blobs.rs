//! Blob URLs: versions (and deltas) at immutable addresses that name their checksum, so an
//! ordinary HTTP cache (nginx `proxy_cache`, Varnish, a CDN) can fan one download out to a farm.
//!
//! # Capability URLs instead of the read token
//! A shared cache answers any holder of a URL without asking the data server, so a token in an
//! `Authorization` header cannot guard what it serves. Each blob URL carries a key instead: the
//! first 16 bytes of HMAC-SHA256(blob secret, the rest of the name). Only the data server can
//! make one, and it hands them out only in check-in answers, which need the read token; holding
//! the URL is the permission, and 128 bits cannot be guessed. The secret is random, made once by
//! a database migration, so every instance on one database signs alike and URLs outlive
//! restarts (an HTTP cache's copies stay good).
//!
//! # Compression
//! A client that sends `Accept-Encoding: zstd` gets the blob compressed when that is smaller.
//! Each blob is compressed once and kept in a small cache; concurrent first requests wait for
//! the one compression rather than each doing it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use lockstep::wire;

use crate::api::{blocking, ApiError, ApiResult, AppState};
use crate::store::{Store, StoreError};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Compressed blobs kept: the active and staged versions and the deltas between them, with
/// room for a rollback's; an older one is compressed again if it is ever asked for.
const ZSTD_CACHE_ENTRIES: usize = 8;
/// zstd's default level: most of the gain at a speed that keeps up with the network.
const ZSTD_LEVEL: i32 = 3;

/// The key of a blob or delta `name` (see [`wire::blob_name`], [`wire::delta_name`]): hex of
/// the first 16 bytes of HMAC-SHA256(secret, name).
pub fn blob_key(secret: &[u8], name: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(name.as_bytes());
    let tag = mac.finalize().into_bytes();
    tag[..wire::BLOB_KEY_HEX_LEN / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compressed form of one blob: `None` when zstd did not make it smaller. Requests that find
/// it being made await it without a blocking thread of their own, which store calls need.
type Compressed = Arc<tokio::sync::OnceCell<Option<Bytes>>>;

/// Compressions at once: each takes a core for a second or more at 100 MB.
static ZSTD_POOL: crate::background::Pool = crate::background::Pool::new(2);

/// The blob secret and the compressed blobs of this process.
pub struct Blobs {
    secret: Vec<u8>,
    zstd: Mutex<VecDeque<(String, Compressed)>>,
}

impl Blobs {
    /// Reads the database's blob secret, on a thread of its own: start-up calls this from the
    /// runtime, where the PostgreSQL driver cannot block.
    pub fn load(store: &Store) -> Result<Blobs, StoreError> {
        let secret = std::thread::scope(|s| s.spawn(|| store.blob_secret()).join())
            .unwrap_or_else(|_| {
                Err(StoreError::Corrupt(
                    "reading the blob secret panicked".into(),
                ))
            })?;
        if secret.len() < 16 {
            return Err(StoreError::Corrupt(
                "the blob secret in the database is shorter than 16 bytes".into(),
            ));
        }
        Ok(Blobs {
            secret,
            zstd: Mutex::default(),
        })
    }

    pub fn key(&self, name: &str) -> String {
        blob_key(&self.secret, name)
    }

    /// The blob path of a version, as a check-in answer gives it.
    pub fn blob_path(&self, version: u64, checksum: u64) -> String {
        wire::blob_path(
            version,
            checksum,
            &self.key(&wire::blob_name(version, checksum)),
        )
    }

    /// True when `key` is the key of `name`, compared in constant time so that a timing
    /// difference cannot lead a guesser digit by digit.
    pub fn key_matches(&self, name: &str, key: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.key(name).as_bytes().ct_eq(key.as_bytes()).into()
    }

    /// `bytes` compressed, made once per `name` by whichever request asks first.
    async fn compressed(&self, name: &str, bytes: Bytes) -> Option<Bytes> {
        let cell = {
            let mut cache = self.zstd.lock().unwrap_or_else(|e| e.into_inner());
            match cache.iter().find(|(n, _)| n == name) {
                Some((_, cell)) => cell.clone(),
                None => {
                    let cell = Compressed::default();
                    cache.push_back((name.to_owned(), cell.clone()));
                    if cache.len() > ZSTD_CACHE_ENTRIES {
                        cache.pop_front();
                    }
                    cell
                }
            }
        };
        cell.get_or_init(|| async move {
            // At background priority: the first downloads of a new staged version come with
            // the farm's check-ins of its activation time.
            ZSTD_POOL
                .run("zstd", move || {
                    zstd::bulk::compress(&bytes, ZSTD_LEVEL)
                        .ok()
                        .filter(|z| z.len() < bytes.len())
                        .map(Bytes::from)
                })
                .await
                .ok()
                .flatten()
        })
        .await
        .clone()
    }

    /// The answer for immutable bytes at a blob or delta URL: strong `ETag: "<etag>"`
    /// (`"<etag>-zstd"` for the compressed form), cacheable for a year, `Vary:
    /// Accept-Encoding`, 304 when `If-None-Match` names the form this request would get, zstd
    /// when the request accepts it and it is smaller. `name` keys the compressed form, so it
    /// must name these bytes and no others. The delta route answers with this too.
    pub async fn immutable_response(
        &self,
        req_headers: &HeaderMap,
        name: &str,
        etag: &str,
        bytes: Bytes,
    ) -> Response {
        let zstd = match accepts_zstd(req_headers) {
            true => self.compressed(name, bytes.clone()).await,
            false => None,
        };
        let tag = match zstd {
            Some(_) => format!("\"{etag}-zstd\""),
            None => format!("\"{etag}\""),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ETAG,
            HeaderValue::from_str(&tag).expect("ascii etag"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(wire::BLOB_CACHE_CONTROL),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if crate::api::if_none_match(req_headers, &tag) {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let body = match zstd {
            Some(z) => {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
                z
            }
            None => bytes,
        };
        (headers, Body::from(body)).into_response()
    }
}

/// True when `Accept-Encoding` lists zstd with a weight above zero.
fn accepts_zstd(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            parts.next().is_some_and(|c| c.eq_ignore_ascii_case("zstd"))
                && parts.all(|p| {
                    p.strip_prefix("q=")
                        .is_none_or(|q| q.parse::<f32>().is_ok_and(|q| q > 0.0))
                })
        })
}

/// `GET /v1/blobs/{version}-{checksum}-{key}`: a version's bytes, to anyone holding the URL.
pub async fn blob(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(segment): Path<String>,
) -> ApiResult<Response> {
    let malformed = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "malformed blob name '{}': want {{version}}-{{16 hex digits of checksum}}-{{{} hex \
                 digits of key}}, as a check-in answer gives it",
                segment.chars().take(120).collect::<String>(),
                wire::BLOB_KEY_HEX_LEN
            ),
        )
    };
    let (name, key) = wire::split_key(&segment).ok_or_else(malformed)?;
    let (version, checksum) = wire::parse_blob_name(name).ok_or_else(malformed)?;
    if wire::blob_name(version, checksum) != name {
        return Err(malformed());
    }
    let not_here = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no blob at this URL: its key is not this data server's for version {version} \
                 with checksum {checksum:016x} (take blob URLs from a check-in answer)"
            ),
        )
    };
    if !state.blobs.key_matches(name, key) {
        return Err(not_here());
    }
    let store = state.store.clone();
    let stored = blocking(move || store.version_bytes(version)).await?;
    if stored.checksum != checksum {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "version {version} has checksum {:016x} here, not {checksum:016x}",
                stored.checksum
            ),
        ));
    }
    let mut response = state
        .blobs
        .immutable_response(&headers, name, &wire::checksum_hex(checksum), stored.bytes)
        .await;
    let h = response.headers_mut();
    h.insert(
        header::HeaderName::from_static(wire::HEADER_VERSION),
        HeaderValue::from(version),
    );
    h.insert(
        header::HeaderName::from_static(wire::HEADER_CHECKSUM),
        HeaderValue::from_str(&wire::checksum_hex(checksum)).expect("hex"),
    );
    if response.status() == StatusCode::OK {
        use axum::body::HttpBody;
        state.store.count_download(version);
        let sent = response.body().size_hint().exact().unwrap_or(0);
        state.metrics.download(sent as usize);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_32_hex_digits_and_depend_on_secret_and_name() {
        let k = blob_key(b"secret one", "1-00000000000000ab");
        assert_eq!(k.len(), wire::BLOB_KEY_HEX_LEN);
        assert!(wire::split_key(&format!("1-00000000000000ab-{k}")).is_some());
        assert_ne!(k, blob_key(b"secret two", "1-00000000000000ab"));
        assert_ne!(k, blob_key(b"secret one", "2-00000000000000ab"));
        assert_eq!(k, blob_key(b"secret one", "1-00000000000000ab"));
    }

    fn blobs() -> Blobs {
        Blobs {
            secret: b"a test secret of some length".to_vec(),
            zstd: Mutex::default(),
        }
    }

    async fn answer(blobs: &Blobs, name: &str, bytes: &[u8], headers: &[(&str, &str)]) -> Response {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let bytes = Bytes::copy_from_slice(bytes);
        blobs
            .immutable_response(&h, name, "00000000000000ab", bytes)
            .await
    }

    #[tokio::test]
    async fn zstd_is_served_only_when_asked_for_and_smaller() {
        let blobs = blobs();
        let repetitive = b"the same price again ".repeat(1000);
        let mut rng = fastrand::Rng::with_seed(3);
        let random: Vec<u8> = (0..20_000).map(|_| rng.u8(..)).collect();
        let zstd = [("accept-encoding", "zstd")];
        let encoding = |r: &Response| r.headers().get(header::CONTENT_ENCODING).cloned();
        let etag = |r: &Response| r.headers()[header::ETAG].to_str().unwrap().to_owned();

        let r = answer(&blobs, "1-00000000000000ab", &repetitive, &zstd).await;
        assert_eq!(encoding(&r).unwrap(), "zstd");
        assert_eq!(etag(&r), "\"00000000000000ab-zstd\"");
        let r = answer(&blobs, "1-00000000000000ab", &repetitive, &[]).await;
        assert_eq!(encoding(&r), None);
        assert_eq!(etag(&r), "\"00000000000000ab\"");
        // Random bytes do not shrink: sent as they are, whatever the request accepts.
        let r = answer(&blobs, "2-00000000000000ab", &random, &zstd).await;
        assert_eq!(encoding(&r), None);
        assert_eq!(r.status(), StatusCode::OK);
        // 304 only for the form this request would get.
        let plain_tag = [("if-none-match", "\"00000000000000ab\"")];
        let r = answer(&blobs, "1-00000000000000ab", &repetitive, &plain_tag).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let both = [zstd[0], plain_tag[0]];
        let r = answer(&blobs, "1-00000000000000ab", &repetitive, &both).await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "a zstd request revalidated a plain copy"
        );
    }

    #[test]
    fn zstd_is_accepted_only_with_a_positive_weight() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            accepts_zstd(&h)
        };
        assert!(with("zstd"));
        assert!(with("gzip, zstd;q=0.5"));
        assert!(with("br,ZSTD"));
        assert!(!with("gzip, br"));
        assert!(!with("zstd;q=0"));
        assert!(!with("zstdx"));
        assert!(!accepts_zstd(&HeaderMap::new()));
    }
}
