//! Options for opening a handle, given as `key=value` pairs.
//!
//! A string of pairs keeps `sync_open` ABI-compatible as options are added: a new key needs no
//! new struct layout, and an old library rejects a key it does not know with a message naming
//! it rather than misreading memory.
//!
//! Pairs are separated by `;` or newlines. A `,` separates the data servers of `url`
//! (`url=http://a:7420,http://b:7420`). Older strings that separated pairs with `,` still
//! parse where that is unambiguous: after a `,`, text that starts with a known option's name
//! and `=` begins a new pair. Anything else after a `,` (outside `url`) is refused with a
//! message, rather than guessed at.

use std::time::Duration;

/// Everything a handle is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The data servers, as given: `url` joined by `,` (also names the host cache directory).
    pub url: String,
    /// Data-server base URLs, tried in turn: the retrieval thread stays with one while it
    /// answers and moves to the next when it fails.
    pub urls: Vec<String>,
    /// Read token sent as a bearer token, if the data server requires one.
    pub token: Option<String>,
    /// This client's name in the farm view.
    pub name: String,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout for a check-in.
    pub checkin_timeout: Duration,
    /// Whole-request timeout for a version download.
    pub download_timeout: Duration,
    /// How long `open` waits for the first version.
    pub bootstrap_wait: Duration,
    /// If the first version has not arrived by then: true returns a handle that answers
    /// NOT_READY until it does; false fails the open.
    pub allow_not_ready: bool,
    /// Largest version accepted from the network.
    pub max_version_bytes: u64,
    /// Between check-ins, ask the data server to hold a check-in until the sync table
    /// changes (`long_poll=0`: sleep instead, as before long-poll existed).
    pub long_poll: bool,
    /// Testing hook: pretend the local wall clock is this far off (µs), where libfaketime is
    /// not available. Activations never use the wall clock, so this changes only the offset
    /// reported to the farm view.
    pub clock_skew_us: i64,
    /// The host cache's root directory (see [`crate::host_cache`]); None: off, every
    /// process on its own.
    pub cache_dir: Option<std::path::PathBuf>,
    /// PEM file of the certificate authorities an `https://` data server is verified
    /// against, instead of the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Where version and delta downloads go (an HTTP cache in front of the data servers),
    /// without a trailing `/`; None: the data server that answered the check-in.
    pub blob_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: "http://127.0.0.1:7420".into(),
            urls: vec!["http://127.0.0.1:7420".into()],
            token: None,
            name: String::new(),
            connect_timeout: Duration::from_secs(2),
            checkin_timeout: Duration::from_secs(5),
            download_timeout: Duration::from_secs(120),
            bootstrap_wait: Duration::from_secs(5),
            allow_not_ready: false,
            max_version_bytes: 4 << 30,
            long_poll: true,
            clock_skew_us: 0,
            cache_dir: Some(crate::host_cache::default_root()),
            ca_file: None,
            blob_url: None,
        }
    }
}

fn ms(key: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("option '{key}' wants milliseconds, got '{value}'"))
}

fn flag(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("option '{key}' wants 1 or 0, got '{value}'")),
    }
}

impl Options {
    /// Parses `url=http://host:7420,http://other:7420; token=…; name=web1`.
    pub fn parse(text: &str) -> Result<Options, String> {
        let mut o = Options::default();
        for (key, value) in pairs(text)? {
            let (key, value) = (key.as_str(), value.as_str());
            match key {
                "url" => {
                    let urls: Vec<String> = value
                        .split(',')
                        .map(|u| u.trim().trim_end_matches('/').to_owned())
                        .collect();
                    for u in &urls {
                        if !(u.starts_with("http://") || u.starts_with("https://")) {
                            return Err(format!(
                                "option 'url' wants http:// or https:// URLs separated by ',', \
                                 got '{u}'"
                            ));
                        }
                    }
                    o.url = urls.join(",");
                    o.urls = urls;
                }
                "token" => o.token = Some(value.to_owned()).filter(|t| !t.is_empty()),
                "name" => o.name = value.to_owned(),
                "connect_timeout_ms" => o.connect_timeout = ms(key, value)?,
                "checkin_timeout_ms" | "timeout_ms" => o.checkin_timeout = ms(key, value)?,
                "download_timeout_ms" => o.download_timeout = ms(key, value)?,
                "bootstrap_wait_ms" => o.bootstrap_wait = ms(key, value)?,
                "allow_not_ready" => o.allow_not_ready = flag(key, value)?,
                "long_poll" => o.long_poll = flag(key, value)?,
                "max_version_bytes" => {
                    o.max_version_bytes = value.parse().map_err(|_| {
                        format!("option 'max_version_bytes' wants a number, got '{value}'")
                    })?
                }
                "clock_skew_us" => {
                    o.clock_skew_us = value.parse().map_err(|_| {
                        format!("option 'clock_skew_us' wants a number, got '{value}'")
                    })?
                }
                // Empty turns the host cache off.
                "cache_dir" => o.cache_dir = Some(value).filter(|v| !v.is_empty()).map(Into::into),
                "ca_file" => o.ca_file = Some(value).filter(|v| !v.is_empty()).map(Into::into),
                "blob_url" => {
                    let u = value.trim_end_matches('/');
                    if !(u.is_empty() || u.starts_with("http://") || u.starts_with("https://")) {
                        return Err(format!(
                            "option 'blob_url' wants one http:// or https:// URL, got '{u}'"
                        ));
                    }
                    o.blob_url = Some(u.to_owned()).filter(|u| !u.is_empty());
                }
                other => return Err(format!("unknown option '{other}'")),
            }
        }
        if o.name.is_empty() {
            o.name = format!("pid-{}", std::process::id());
        }
        Ok(o)
    }
}

/// Every option this build knows: after a `,`, one of these and `=` starts a new pair.
const KEYS: &[&str] = &[
    "url",
    "token",
    "name",
    "connect_timeout_ms",
    "checkin_timeout_ms",
    "timeout_ms",
    "download_timeout_ms",
    "bootstrap_wait_ms",
    "allow_not_ready",
    "long_poll",
    "max_version_bytes",
    "clock_skew_us",
    "cache_dir",
    "ca_file",
    "blob_url",
];

fn starts_pair(text: &str) -> bool {
    text.split_once('=')
        .is_some_and(|(k, _)| KEYS.contains(&k.trim()))
}

/// Splits options into `(key, value)` pairs by the grammar in the module notes.
fn pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for segment in text.split([';', '\n']) {
        let mut parts = segment.split(',');
        let first = parts.next().unwrap_or("").trim();
        if first.is_empty() && segment.trim().is_empty() {
            continue;
        }
        let mut current = split_pair(first)?;
        for part in parts {
            let part = part.trim();
            if current.0 == "url" && (part.starts_with("http://") || part.starts_with("https://")) {
                current.1.push(',');
                current.1.push_str(part);
            } else if starts_pair(part) {
                out.push(std::mem::replace(&mut current, split_pair(part)?));
            } else if part.is_empty() {
                continue;
            } else {
                return Err(format!(
                    "option '{}' is followed by ',{part}', which is neither a data-server URL \
                     nor another option: separate options with ';'",
                    current.0
                ));
            }
        }
        out.push(current);
    }
    Ok(out)
}

fn split_pair(pair: &str) -> Result<(String, String), String> {
    let (key, value) = pair
        .split_once('=')
        .ok_or_else(|| format!("option '{pair}' is not key=value"))?;
    Ok((key.trim().to_owned(), value.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_rejects_unknown_keys() {
        let o = Options::parse(
            "url=http://10.0.0.5:7420/; token=abc\nname=web-1, bootstrap_wait_ms=250;allow_not_ready=1",
        )
        .unwrap();
        assert_eq!(o.url, "http://10.0.0.5:7420");
        assert_eq!(o.token.as_deref(), Some("abc"));
        assert_eq!(o.name, "web-1");
        assert_eq!(o.bootstrap_wait, Duration::from_millis(250));
        assert!(o.allow_not_ready);
        assert!(Options::parse("colour=blue")
            .unwrap_err()
            .contains("colour"));
        assert!(Options::parse("url").is_err());
        assert!(Options::parse("url=ftp://x").is_err());
        assert!(Options::parse("bootstrap_wait_ms=soon").is_err());
        assert!(Options::parse("").unwrap().name.starts_with("pid-"));
        assert_eq!(Options::parse("cache_dir=").unwrap().cache_dir, None);
        assert_eq!(
            Options::parse("cache_dir=/srv/c").unwrap().cache_dir,
            Some("/srv/c".into())
        );
        assert!(Options::parse("").unwrap().cache_dir.is_some());
    }

    #[test]
    fn url_takes_a_list_and_old_comma_separated_strings_still_parse() {
        let o = Options::parse("url=http://a:7420, http://b:7420/;name=w").unwrap();
        assert_eq!(o.urls, vec!["http://a:7420", "http://b:7420"]);
        assert_eq!(o.url, "http://a:7420,http://b:7420");
        assert_eq!(o.name, "w");
        // The old grammar: pairs separated by ','.
        let o = Options::parse("url=http://a:7420,name=web-1,bootstrap_wait_ms=250").unwrap();
        assert_eq!(o.urls, vec!["http://a:7420"]);
        assert_eq!(o.name, "web-1");
        assert_eq!(o.bootstrap_wait, Duration::from_millis(250));
        let o = Options::parse("url=http://a:1,http://b:2,token=t,name=n").unwrap();
        assert_eq!(o.urls.len(), 2);
        assert_eq!(o.token.as_deref(), Some("t"));
        // A ',' that is neither: refused, never guessed.
        let e = Options::parse("token=abc,def").unwrap_err();
        assert!(e.contains("separate options with ';'"), "{e}");
        assert!(Options::parse("url=http://a:1,ftp://b").is_err());
        assert!(Options::parse("name=x,colour=blue").is_err());
    }

    #[test]
    fn blob_url_takes_one_http_url_and_empty_means_the_data_server() {
        let o = Options::parse("url=http://a:1;blob_url=http://cache:8080/").unwrap();
        assert_eq!(o.blob_url.as_deref(), Some("http://cache:8080"));
        assert_eq!(Options::parse("blob_url=").unwrap().blob_url, None);
        assert_eq!(Options::parse("").unwrap().blob_url, None);
        let e = Options::parse("blob_url=cache:8080").unwrap_err();
        assert!(e.contains("blob_url"), "{e}");
        assert!(Options::parse("blob_url=http://a,http://b").is_err());
    }
}
