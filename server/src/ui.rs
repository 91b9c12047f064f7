//! The admin web page under `/ui/`: plain HTML, CSS and JavaScript modules built into the
//! binary, so a data server needs no other files and no Node toolchain.
//!
//! The page holds no authority of its own. It keeps the token the operator pastes in
//! `sessionStorage` and sends it as `Authorization: Bearer` on each fetch of the admin API.
//! Since the API authenticates by that header and never by a cookie, a page of another origin
//! cannot make an authenticated request: a browser sends no such header across origins
//! without a CORS preflight, and the data server grants none. The Content-Security-Policy
//! below lets the page load only its own files and talk only to its own origin, so even
//! injected markup could neither run a script nor send the token elsewhere.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// Where the page lives; every asset is below it.
pub const PATH_UI: &str = "/ui";

/// Only this origin's files may load, scripts only from files (no inline script, no
/// `eval`), fetches only to this origin, no framing, no forms posting anywhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
    /// Fixed at compile time: the assets cannot change while the binary runs.
    etag: &'static str,
}

/// FNV-1a, at compile time, so that every asset's ETag is a constant.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

const fn hex_etag(hash: u64) -> [u8; 18] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = DIGITS[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

macro_rules! asset {
    ($name:literal, $type:expr) => {{
        const BYTES: &[u8] = include_bytes!(concat!("../ui/", $name));
        const ETAG: [u8; 18] = hex_etag(fnv1a(BYTES));
        Asset {
            name: $name,
            content_type: $type,
            bytes: BYTES,
            etag: match std::str::from_utf8(&ETAG) {
                Ok(s) => s,
                Err(_) => panic!("hex is ASCII"),
            },
        }
    }};
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("format.js", JS),
    asset!("production.js", JS),
    asset!("versions.js", JS),
    asset!("settings.js", JS),
    asset!("farm.js", JS),
    asset!("timeline.js", JS),
    asset!("audit.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

/// The page's routes, for any state: merged into the API's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    // Relative links in the page need the trailing slash.
    Router::new()
        .route(
            PATH_UI,
            get(|| async { Redirect::permanent(&format!("{PATH_UI}/")) }),
        )
        .route(&format!("{PATH_UI}/"), get(index))
        .route(&format!("{PATH_UI}/{{file}}"), get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (
            StatusCode::NOT_FOUND,
            security_headers(),
            "no such file in the admin page\n",
        )
            .into_response();
    };
    let etag = HeaderValue::from_static(asset.etag);
    // `no-cache` still lets the browser keep a copy, but it asks each time; the ETag makes
    // that a 304, and a new binary's page is never mixed with an old one's modules.
    let caching = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag),
    ];
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == asset.etag);
    if fresh {
        return (StatusCode::NOT_MODIFIED, security_headers(), caching).into_response();
    }
    (
        security_headers(),
        caching,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.bytes,
    )
        .into_response()
}

fn security_headers() -> [(header::HeaderName, HeaderValue); 4] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_served() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for asset in ASSETS
            .iter()
            .filter(|a| a.content_type == JS || a.name == "index.html")
        {
            let text = std::str::from_utf8(asset.bytes).expect("utf-8");
            for quote in ["\"./", "'./", "src=\"", "href=\""] {
                for part in text.split(quote).skip(1) {
                    let end = part.find(['"', '\'']).unwrap_or(part.len());
                    let target = part[..end].trim_start_matches("./");
                    if target.starts_with('#') || target.is_empty() || target.contains(':') {
                        continue;
                    }
                    assert!(
                        names.contains(&target),
                        "{} refers to {target}, which is not served",
                        asset.name
                    );
                }
            }
        }
    }

    #[test]
    fn etags_differ_when_the_bytes_do() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        let mut etags: Vec<&str> = ASSETS.iter().map(|a| a.etag).collect();
        etags.sort_unstable();
        etags.dedup();
        assert_eq!(etags.len(), ASSETS.len());
    }
}
