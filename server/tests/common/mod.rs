//! Runs the real `lockstep` binary as a child process for the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockstep::wire::{CheckinResponse, SyncTable};

pub const TOKEN: &str = "test-admin-token";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lockstep")
}

/// A data server child process; killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub db: PathBuf,
}

impl Server {
    pub fn start(db: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(bin())
            .arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("LOCKSTEP_ADMIN_TOKEN", TOKEN)
            .env("LOCKSTEP_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start lockstep serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("lockstep: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from server: {line:?}"))
            .to_owned();
        Server {
            child,
            url,
            db: db.to_owned(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

pub struct Answer {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

fn finish(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut r = r.expect("request failed");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Answer {
    let mut req = agent().get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    finish(req.call())
}

pub fn post(url: &str, token: Option<&str>, body: &[u8]) -> Answer {
    let mut req = agent().post(url).header("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    finish(req.send(body))
}

pub fn admin_get(s: &Server, path: &str) -> serde_json::Value {
    let a = get(&format!("{}{path}", s.url), Some(TOKEN), &[]);
    assert_eq!(
        a.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&a.body)
    );
    a.json()
}

pub fn admin_post(s: &Server, path: &str, body: serde_json::Value) -> serde_json::Value {
    let a = post(
        &format!("{}{path}", s.url),
        Some(TOKEN),
        body.to_string().as_bytes(),
    );
    assert_eq!(
        a.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&a.body)
    );
    a.json()
}

pub fn put(s: &Server, key: &str, value: &str) {
    admin_post(
        s,
        "/v1/admin/put",
        serde_json::json!({"key": key, "value": value}),
    );
}

pub fn checkin(s: &Server, name: &str) -> CheckinResponse {
    let a = get(&format!("{}/v1/checkin?name={name}", s.url), None, &[]);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    serde_json::from_slice(&a.body).unwrap()
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// Sleeps until the wall clock (shared with the server: same host) reaches `t_us`.
pub fn sleep_until_us(t_us: i64) {
    let d = t_us - now_us();
    if d > 0 {
        std::thread::sleep(Duration::from_micros(d as u64));
    }
}

/// Checks in until a rotation has happened after `after_us`; returns the table after it.
pub fn wait_rotation_past(s: &Server, after_us: i64) -> SyncTable {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        sleep_until_us(after_us + 1_000);
        let r = checkin(s, "waiter");
        if r.sync.activation_time_us > after_us {
            return r.sync;
        }
        assert!(Instant::now() < deadline, "no rotation past {after_us}");
    }
}

pub fn value_in_version(s: &Server, key: &str, version: u64) -> Option<String> {
    let a = get(
        &format!("{}/v1/admin/key?key={key}&version={version}", s.url),
        Some(TOKEN),
        &[],
    );
    match a.status {
        200 => Some(a.json()["value"].as_str().unwrap().to_owned()),
        404 => None,
        other => panic!("status {other}: {}", String::from_utf8_lossy(&a.body)),
    }
}

pub fn rotation_count(s: &Server) -> usize {
    admin_get(s, "/v1/admin/rotations")
        .as_array()
        .unwrap()
        .len()
}
