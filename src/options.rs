//! Options for opening a handle, given as `key=value` pairs.
//!
//! A string of pairs keeps `sync_open` ABI-compatible as options are added: a new key needs no
//! new struct layout, and an old library rejects a key it does not know with a message naming
//! it rather than misreading memory. Pairs are separated by `;`, `,` or newlines.

use std::time::Duration;

/// Everything a handle is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Data server base URL.
    pub url: String,
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
    /// Testing hook: pretend the local wall clock is this far off (µs), where libfaketime is
    /// not available. Activations never use the wall clock, so this changes only the offset
    /// reported to the farm view.
    pub clock_skew_us: i64,
    /// The host cache's root directory (see [`crate::host_cache`]); None: off, every
    /// process on its own.
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            url: "http://127.0.0.1:7420".into(),
            token: None,
            name: String::new(),
            connect_timeout: Duration::from_secs(2),
            checkin_timeout: Duration::from_secs(5),
            download_timeout: Duration::from_secs(120),
            bootstrap_wait: Duration::from_secs(5),
            allow_not_ready: false,
            max_version_bytes: 4 << 30,
            clock_skew_us: 0,
            cache_dir: Some(crate::host_cache::default_root()),
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
    /// Parses `url=http://host:7420; token=…; name=web1; bootstrap_wait_ms=2000`.
    pub fn parse(text: &str) -> Result<Options, String> {
        let mut o = Options::default();
        for pair in text.split([';', ',', '\n']) {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("option '{pair}' is not key=value"))?;
            let (key, value) = (key.trim(), value.trim());
            match key {
                "url" => {
                    if !(value.starts_with("http://") || value.starts_with("https://")) {
                        return Err(format!(
                            "option 'url' must start with http://, got '{value}'"
                        ));
                    }
                    o.url = value.trim_end_matches('/').to_owned();
                }
                "token" => o.token = Some(value.to_owned()).filter(|t| !t.is_empty()),
                "name" => o.name = value.to_owned(),
                "connect_timeout_ms" => o.connect_timeout = ms(key, value)?,
                "checkin_timeout_ms" | "timeout_ms" => o.checkin_timeout = ms(key, value)?,
                "download_timeout_ms" => o.download_timeout = ms(key, value)?,
                "bootstrap_wait_ms" => o.bootstrap_wait = ms(key, value)?,
                "allow_not_ready" => o.allow_not_ready = flag(key, value)?,
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
                other => return Err(format!("unknown option '{other}'")),
            }
        }
        if o.name.is_empty() {
            o.name = format!("pid-{}", std::process::id());
        }
        Ok(o)
    }
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
}
