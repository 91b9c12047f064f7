//! Observer processes: tests/c/observer.c, a client of liblockstep.so in its own process,
//! reporting every change of the active version on the CLOCK_MONOTONIC time line.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{compile_c, root};

/// One change of the active version seen by an observer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub version: u64,
    /// CLOCK_MONOTONIC ns of the first read that saw it.
    pub first_new_ns: i64,
    /// CLOCK_MONOTONIC ns of the last read that saw the version before.
    pub last_old_ns: i64,
    pub value: String,
    /// When that first read of the new version ended, and that last read of the old one
    /// began: the switch lies between `last_old_start_ns` and `first_new_end_ns`.
    pub first_new_end_ns: i64,
    pub last_old_start_ns: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub ready: Option<u64>,
    pub changes: Vec<Change>,
    /// The last STATS line, as key=value pairs.
    pub stats: Vec<(String, i64)>,
    pub stats_lines: usize,
    /// Every STATS line so far, oldest first.
    pub stats_history: Vec<Vec<(String, i64)>>,
    pub done: bool,
    /// How long `sync_close` took, ns (from the DONE line).
    pub close_ns: Option<i64>,
}

impl Report {
    pub fn stat(&self, key: &str) -> Option<i64> {
        self.stats.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// `key` of every STATS line from the `since`-th on.
    pub fn stat_history(&self, key: &str, since: usize) -> Vec<i64> {
        self.stats_history
            .iter()
            .skip(since)
            .filter_map(|l| l.iter().find(|(k, _)| k == key).map(|(_, v)| *v))
            .collect()
    }
}

pub struct Observer {
    pub name: String,
    child: Child,
    report: Arc<Mutex<Report>>,
}

pub fn observer_exe() -> &'static PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile_c(&root().join("tests/c/observer.c"), &[]))
}

/// Where Debian's faketime package puts libfaketime.
pub fn libfaketime() -> PathBuf {
    for p in [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("libfaketime not found: apt-get install faketime");
}

impl Observer {
    /// Starts an observer reading `key` for `seconds`; `faketime` like "-2h" skews its wall
    /// clock (never its monotonic clock).
    pub fn start(
        url: &str,
        name: &str,
        key: &str,
        seconds: f64,
        faketime: Option<&str>,
    ) -> Observer {
        Self::start_with(url, name, key, seconds, faketime, "")
    }

    /// Like [`Observer::start`], with extra `sync_open` options ("checkin_timeout_ms=500").
    pub fn start_with(
        url: &str,
        name: &str,
        key: &str,
        seconds: f64,
        faketime: Option<&str>,
        options: &str,
    ) -> Observer {
        // Each observer is a host of its own unless the options say otherwise, so every
        // one measures its own clock and talks to the data server itself.
        let options = if options.contains("cache_dir=") {
            options.to_owned()
        } else {
            format!(
                "{options};cache_dir={}",
                super::own_host_cache(name).display()
            )
        };
        let mut cmd = Command::new(observer_exe());
        cmd.args([url, name, key, &seconds.to_string(), &options])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(skew) = faketime {
            cmd.env("LD_PRELOAD", libfaketime())
                .env("FAKETIME", skew)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_NO_CACHE", "1");
        }
        Self::from_command(cmd, name)
    }

    /// Starts an observer from a prepared command (for custom environments).
    pub fn from_command(mut cmd: Command, name: &str) -> Observer {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start observer");
        let stdout = child.stdout.take().unwrap();
        let report = Arc::new(Mutex::new(Report::default()));
        let r = report.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace();
                let mut rep = r.lock().unwrap();
                match parts.next() {
                    Some("READY") => rep.ready = parts.next().and_then(|v| v.parse().ok()),
                    Some("CHANGE") => {
                        let f: Vec<&str> = parts.collect();
                        rep.changes.push(Change {
                            version: f[0].parse().unwrap(),
                            first_new_ns: f[1].parse().unwrap(),
                            last_old_ns: f[2].parse().unwrap(),
                            value: f.get(3).unwrap_or(&"").to_string(),
                            first_new_end_ns: f.get(4).and_then(|v| v.parse().ok()).unwrap_or(0),
                            last_old_start_ns: f.get(5).and_then(|v| v.parse().ok()).unwrap_or(0),
                        });
                    }
                    Some("STATS") => {
                        rep.stats = parts
                            .filter_map(|kv| {
                                let (k, v) = kv.split_once('=')?;
                                Some((k.to_owned(), v.parse().ok()?))
                            })
                            .collect();
                        rep.stats_lines += 1;
                        let line = rep.stats.clone();
                        rep.stats_history.push(line);
                    }
                    Some("DONE") => {
                        rep.done = true;
                        rep.close_ns = parts.next().and_then(|v| v.parse().ok());
                    }
                    _ => {}
                }
            }
        });
        Observer {
            name: name.to_owned(),
            child,
            report,
        }
    }

    pub fn report(&self) -> Report {
        self.report.lock().unwrap().clone()
    }

    /// Waits until the observer is serving its first version.
    pub fn wait_ready(&self) -> u64 {
        self.wait_for(Duration::from_secs(30), |r| r.ready)
            .unwrap_or_else(|| panic!("observer {} never became ready", self.name))
    }

    /// Polls the report until `f` gives Some, or the timeout.
    pub fn wait_for<T>(&self, timeout: Duration, f: impl Fn(&Report) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(&self.report()) {
                return Some(v);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The first change to a version whose value is `value`.
    pub fn wait_value(&self, value: &str, timeout: Duration) -> Change {
        self.wait_for(timeout, |r| {
            r.changes.iter().find(|c| c.value == value).cloned()
        })
        .unwrap_or_else(|| {
            panic!(
                "observer {} never saw value {value}: {:?}",
                self.name,
                self.report()
            )
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
