//! Test support shared by the workspace's integration tests: the real `lockstep` binary as a
//! child process, `liblockstep.so`, C programs built against it, and HTTP helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lockstep::wire::{CheckinResponse, SyncTable};

pub const TOKEN: &str = "test-admin-token";

/// The workspace root.
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if here.join("server").is_dir() {
        here
    } else {
        here.parent().unwrap().to_owned()
    }
}

/// The cargo target profile directory this test binary was built into (target/debug).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_owned()
}

/// The host-cache root of this test process, exported as `LOCKSTEP_CACHE_DIR` to every
/// client it opens or starts: clients of a data server that a test started never find a
/// schedule another test run left for the same port. Roots of test processes that are gone
/// are removed.
pub fn host_cache_root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = target_dir().join("host-caches");
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let alive = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = base.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        // Rust's environment functions take one lock, so this is safe beside other test
        // threads reading it; no C code in a test process reads this variable.
        std::env::set_var("LOCKSTEP_CACHE_DIR", &dir);
        dir
    })
}

/// A fresh host-cache directory of its own: a process given it is a host of its own.
pub fn own_host_cache(label: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    host_cache_root().join(format!("host-{label}-{n}"))
}

/// Builds `packages` once per test process. A test of the root crate does not get the data
/// server binary or the `.so` from cargo by itself: the binary belongs to the server crate and
/// the `.so` is not linked into tests.
fn cargo_build(once: &'static OnceLock<PathBuf>, packages: &[&str]) -> &'static PathBuf {
    once.get_or_init(|| {
        host_cache_root();
        let mut args = vec!["build"];
        for p in packages {
            args.extend(["-p", p]);
        }
        if target_dir().file_name().is_some_and(|n| n == "release") {
            args.push("--release"); // benches run from target/release
        }
        let status = Command::new(env!("CARGO"))
            .args(&args)
            .current_dir(root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build {packages:?} failed");
        target_dir()
    })
}

pub fn bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    match option_env!("CARGO_BIN_EXE_lockstep") {
        Some(p) => PathBuf::from(p),
        None => cargo_build(&BUILT, &["lockstep", "lockstep-server"]).join("lockstep"),
    }
}

/// Path of liblockstep.so, built if needed.
pub fn library() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    cargo_build(&BUILT, &["lockstep"]).join("liblockstep.so")
}

/// Compiles a C file against include/lockstep.h and liblockstep.so; returns the executable.
pub fn compile_c(source: &Path, extra_flags: &[&str]) -> PathBuf {
    compile_c_with(source, extra_flags, true)
}

/// Like [`compile_c`]; `link` false leaves liblockstep.so out, for programs that dlopen it.
pub fn compile_c_with(source: &Path, extra_flags: &[&str], link: bool) -> PathBuf {
    let lib_dir = library().parent().unwrap().to_owned();
    let stem = source.file_stem().unwrap().to_str().unwrap();
    let suffix = extra_flags.join("").replace(['-', '=', '/'], "");
    let out = lib_dir.join(format!("c-{stem}{suffix}"));
    let output = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .args(extra_flags)
        .arg("-I")
        .arg(root().join("include"))
        .arg(source)
        .arg("-o")
        .arg(&out)
        .args(if link {
            vec![
                "-L".to_owned(),
                lib_dir.display().to_string(),
                format!("-Wl,-rpath,{}", lib_dir.display()),
                "-llockstep".to_owned(),
            ]
        } else {
            vec![]
        })
        .output()
        .expect("run cc");
    assert!(
        output.status.success(),
        "cc {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// A free TCP port on loopback (for servers that must come back on the same address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// CLOCK_MONOTONIC in ns: the same clock in every process on this host, and one libfaketime
/// leaves alone under FAKETIME_DONT_FAKE_MONOTONIC=1 (the library's own clock).
pub fn mono_ns() -> i64 {
    lockstep::clock::mono_ns()
}

/// Converts a wall-clock time (µs, this host's real clock, which is the data server's) to
/// CLOCK_MONOTONIC ns.
pub fn wall_us_to_mono_ns(wall_us: i64) -> i64 {
    let before = mono_ns();
    let wall = now_us();
    let after = mono_ns();
    (before + after) / 2 + (wall_us - wall) * 1000
}

/// A data server child process; killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub db: PathBuf,
}

impl Server {
    pub fn start(db: &Path, extra: &[&str]) -> Server {
        Self::start_at(db, "127.0.0.1:0", extra)
    }

    /// Starts on a given address, so a restarted server comes back where clients look.
    pub fn start_at(db: &Path, listen: &str, extra: &[&str]) -> Server {
        Self::start_env(db, listen, extra, &[])
    }

    /// Like [`Server::start_at`], with extra environment (libfaketime, say).
    pub fn start_env(db: &Path, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        host_cache_root();
        let mut child = Command::new(bin())
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", listen])
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
        // The server listens before its database answers (503 until then): give it a moment
        // to be ready, but no more, so a test of a server whose database is down goes on.
        let ready = format!("{url}{}", lockstep::wire::PATH_READY);
        let deadline = Instant::now() + Duration::from_secs(5);
        while get(&ready, None, &[]).status != 200 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
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

/// The nice values of a process's threads whose name (`comm`) is `name`; the process's own
/// (its main thread's) first.
pub fn thread_nices(pid: u32, name: &str) -> (i32, Vec<i32>) {
    let nice = |tid: &str| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
        // Field 19; the name (field 2) may hold spaces, so count from its parenthesis.
        let after = stat.get(stat.rfind(')')? + 2..)?;
        after.split(' ').nth(16)?.parse().ok()
    };
    let main = nice(&pid.to_string()).expect("the process is running");
    let named = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| {
            let tid = task.file_name().to_string_lossy().into_owned();
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            (comm.trim_end() == name).then(|| nice(&tid)).flatten()
        })
        .collect();
    (main, named)
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

/// A version that holds every edit committed before this call: the one active from the second
/// activation after it (invariant 7). The version staged at the first rotation may lack an edit
/// made while it was being built ahead of time; it is restaged after that rotation only when
/// there is still a check-in period before the next activation.
pub fn version_with_edits_so_far(s: &Server) -> u64 {
    let first = checkin(s, "probe").sync.activation_time_us;
    let second = wait_rotation_past(s, first).activation_time_us;
    wait_rotation_past(s, second).active_version
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

/// Waits until the version active on the data server holds `key` = `value` (the edit has been
/// through its rotations).
pub fn wait_active(s: &Server, key: &str, value: &str) -> SyncTable {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sync = checkin(s, "publisher").sync;
        if value_in_version(s, key, sync.active_version).as_deref() == Some(value) {
            return sync;
        }
        assert!(
            Instant::now() < deadline,
            "{key}={value} never became active"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A data server with fast cycles for client tests (interval 200 ms).
pub fn fast_server(db: &Path) -> Server {
    Server::start(db, &["--interval", "200ms", "--min-window", "100ms"])
}
/// `n` check-ins released together just after `at_us`, spread over the given servers.
pub fn concurrent_checkins(
    urls: &[String],
    n: usize,
    at_us: i64,
) -> Vec<(u16, Option<CheckinResponse>)> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let url = format!("{}/v1/checkin?name=c{i}", urls[i % urls.len()]);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let agent = agent();
                barrier.wait();
                sleep_until_us(at_us + 2_000);
                let mut r = agent.get(&url).call().expect("check-in");
                let status = r.status().as_u16();
                let body = r.body_mut().read_to_vec().unwrap();
                (status, serde_json::from_slice(&body).ok())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

pub fn assert_exactly_one_rotation(results: &[(u16, Option<CheckinResponse>)], t: i64) {
    for (status, body) in results {
        assert_eq!(*status, 200, "a check-in failed: {body:?}");
    }
    let answers: Vec<&CheckinResponse> = results.iter().map(|(_, b)| b.as_ref().unwrap()).collect();
    let rotated = answers.iter().filter(|a| a.rotated).count();
    assert_eq!(rotated, 1, "expected exactly one check-in to rotate");
    let tables: std::collections::BTreeSet<_> = answers.iter().map(|a| a.sync).collect();
    assert_eq!(
        tables.len(),
        1,
        "check-ins disagree on the sync table: {tables:?}"
    );
    assert!(answers[0].sync.activation_time_us > t);
}

pub mod observer;
pub mod postgres;
pub mod proxy;
