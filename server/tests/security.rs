//! The data server against abuse and for rotation: named tokens reloaded on SIGHUP while real
//! clients read, and limits on what a connection may cost.

#[path = "../../tests/support/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::observer::Observer;
use common::*;

/// A data server whose log goes to a file the test reads.
struct Logged {
    server: Server,
    log: PathBuf,
}

impl Logged {
    fn start(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Logged {
        Self::start_limited(dir, extra, env, None)
    }

    /// Like [`Logged::start`], with the soft open-file limit a service manager might leave.
    fn start_limited(
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        soft_nofile: Option<u64>,
    ) -> Logged {
        use std::os::unix::process::CommandExt;
        let log = dir.join("server.log");
        let mut command = Command::new(bin());
        if let Some(soft) = soft_nofile {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                    lim.rlim_cur = soft.min(lim.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                    Ok(())
                });
            }
        }
        let mut child = command
            .arg("serve")
            .arg("--db")
            .arg(dir.join("db.sqlite"))
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("LOCKSTEP_ADMIN_TOKEN")
            .env_remove("LOCKSTEP_READ_TOKEN")
            .envs(env.iter().copied())
            .env("LOCKSTEP_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let url = first_line(&mut child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(&format!("{url}/v1/ready"), None, &[]).status != 200 {
            assert!(Instant::now() < deadline, "never ready: {}", read(&log));
            std::thread::sleep(Duration::from_millis(10));
        }
        Logged {
            server: Server {
                child,
                url,
                db: dir.join("db.sqlite"),
            },
            log,
        }
    }

    fn log(&self) -> String {
        read(&self.log)
    }

    fn hangup(&self) {
        let r = unsafe { libc::kill(self.server.child.id() as i32, libc::SIGHUP) };
        assert_eq!(r, 0);
    }

    fn pid_alive(&mut self) -> bool {
        matches!(self.server.child.try_wait(), Ok(None))
    }
}

fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix("lockstep: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned()
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn put_as(s: &Server, token: &str, key: &str, value: &str) -> Answer {
    post(
        &format!("{}/v1/admin/put", s.url),
        Some(token),
        serde_json::json!({ "key": key, "value": value })
            .to_string()
            .as_bytes(),
    )
}

fn checkin_status(s: &Server, token: Option<&str>) -> u16 {
    get(&format!("{}/v1/checkin?name=probe", s.url), token, &[]).status
}

/// Polls until `f` holds (a reload is asynchronous to the signal), at most 10 s.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Refused check-ins (401 or 403) the data server has answered, from its metrics.
fn refused_checkins(s: &Server, token: &str) -> u64 {
    let text =
        String::from_utf8(get(&format!("{}/metrics", s.url), Some(token), &[]).body).unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("lockstep_http_request_duration_seconds_count")
                && l.contains("/v1/checkin")
                && (l.contains("\"401\"") || l.contains("\"403\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

fn sha256_hex(secret: &str) -> String {
    // The same digest `sha256sum` prints, as README tells operators to make it.
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(secret.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[test]
fn tokens_rotate_through_the_file_and_sighup_while_clients_read() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let write = |text: &str| {
        // Written aside and renamed, as an operator's editor or config tool would.
        let tmp = dir.path().join("tokens.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &tokens).unwrap();
    };
    let hashed_admin = format!("sha256:{}", sha256_hex("ops-secret-1"));
    write(&format!(
        "# name scope secret\nops admin {hashed_admin}\nweb-old read read-secret-1\n"
    ));
    let mut s = Logged::start(
        dir.path(),
        &[
            "--tokens",
            tokens.to_str().unwrap(),
            "--interval",
            "200ms",
            "--min-window",
            "100ms",
        ],
        &[],
    );
    let pid = s.server.child.id();
    assert_eq!(put_as(&s.server, "ops-secret-1", "k", "v1").status, 200);
    // The hashed form is not itself a token.
    assert_eq!(put_as(&s.server, &hashed_admin, "k", "x").status, 403);
    assert_eq!(checkin_status(&s.server, None), 401);

    let old = Observer::start_with(
        &s.server.url,
        "web-a",
        "k",
        60.0,
        None,
        "token=read-secret-1",
    );
    old.wait_ready();
    old.wait_value("v1", Duration::from_secs(10));
    let refused_before = refused_checkins(&s.server, "ops-secret-1");

    // Step 1: the new read token joins; both are valid.
    write(&format!(
        "ops admin {hashed_admin}\nweb-old read read-secret-1\nweb-new read read-secret-2\n"
    ));
    s.hangup();
    // This probe's own refusals, before the reload lands, are the only ones allowed.
    let probe_refused = std::cell::Cell::new(0u64);
    eventually("the new read token works", || {
        let status = checkin_status(&s.server, Some("read-secret-2"));
        if status == 401 || status == 403 {
            probe_refused.set(probe_refused.get() + 1);
        }
        status == 200
    });
    assert_eq!(checkin_status(&s.server, Some("read-secret-1")), 200);

    // Step 2: a client moves to the new token while the old one still reads.
    let new = Observer::start_with(
        &s.server.url,
        "web-b",
        "k",
        60.0,
        None,
        "token=read-secret-2",
    );
    new.wait_ready();
    assert_eq!(put_as(&s.server, "ops-secret-1", "k", "v2").status, 200);
    old.wait_value("v2", Duration::from_secs(10));
    new.wait_value("v2", Duration::from_secs(10));

    // A file that does not parse leaves the tokens as they were, and the log says where. Its
    // fields are in the wrong order, so the secret stands where the scope belongs: the log
    // must still not show it (checked at the end).
    write(&format!(
        "ops admin {hashed_admin}\nweb-new read-secret-2 read\n"
    ));
    s.hangup();
    eventually("the parse error is logged", || s.log().contains("line 2"));
    assert_eq!(checkin_status(&s.server, Some("read-secret-1")), 200);

    // No client failed a check-in during all of it.
    assert_eq!(
        refused_checkins(&s.server, "ops-secret-1"),
        refused_before + probe_refused.get()
    );
    for o in [&old, &new] {
        let failures = o.report().stat_history("failures", 0);
        assert!(
            !failures.is_empty() && failures.iter().all(|f| *f == 0),
            "{}: {failures:?}",
            o.name
        );
    }

    // Step 3: the old client is gone; its token is removed.
    drop(old);
    write(&format!(
        "ops admin {hashed_admin}\nweb-new read read-secret-2\n"
    ));
    s.hangup();
    eventually("the old read token stops working", || {
        checkin_status(&s.server, Some("read-secret-1")) == 403
    });
    assert_eq!(put_as(&s.server, "ops-secret-1", "k", "v3").status, 200);
    new.wait_value("v3", Duration::from_secs(10));
    let failures = new.report().stat_history("failures", 0);
    assert!(failures.iter().all(|f| *f == 0), "{failures:?}");

    // A read token cannot edit, and nothing changes.
    let refused = put_as(&s.server, "read-secret-2", "k", "evil");
    assert_eq!(
        refused.status,
        403,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("only read"));
    let key = get(
        &format!("{}/v1/admin/key?key=k", s.server.url),
        Some("read-secret-2"),
        &[],
    );
    assert!(
        String::from_utf8_lossy(&key.body).contains("v3"),
        "{}",
        String::from_utf8_lossy(&key.body)
    );

    // The same process all along, and the audit log and the logs name the token, never its
    // secret.
    assert!(s.pid_alive());
    assert_eq!(s.server.child.id(), pid);
    let audit = get(
        &format!("{}/v1/admin/audit", s.server.url),
        Some("read-secret-2"),
        &[],
    )
    .json();
    let puts: Vec<&serde_json::Value> = audit.as_array().unwrap().iter().collect();
    assert_eq!(puts.len(), 3, "{audit:#}");
    assert!(puts.iter().all(|e| e["who"] == "ops"), "{audit:#}");
    let log = s.log();
    assert!(
        log.contains("who=ops") || log.contains("\"who\":\"ops\""),
        "{log}"
    );
    for secret in [
        "ops-secret-1",
        "read-secret-1",
        "read-secret-2",
        &hashed_admin[7..],
    ] {
        assert!(!log.contains(secret), "the log shows a secret: {log}");
        assert!(!audit.to_string().contains(secret));
    }
}

#[test]
fn single_token_variables_still_work_as_tokens_named_admin_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = Logged::start(
        dir.path(),
        &[],
        &[
            ("LOCKSTEP_ADMIN_TOKEN", "a-secret"),
            ("LOCKSTEP_READ_TOKEN", "r-secret"),
        ],
    );
    assert_eq!(put_as(&s.server, "a-secret", "k", "v").status, 200);
    assert_eq!(put_as(&s.server, "r-secret", "k", "w").status, 403);
    assert_eq!(checkin_status(&s.server, Some("r-secret")), 200);
    assert_eq!(checkin_status(&s.server, None), 401);
    let audit = get(
        &format!("{}/v1/admin/audit", s.server.url),
        Some("r-secret"),
        &[],
    )
    .json();
    assert_eq!(audit[0]["who"], "admin", "{audit:#}");
    assert!(s.log().contains("admin: admin; read: read"), "{}", s.log());
}

#[test]
fn open_check_ins_are_warned_about_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = Logged::start(dir.path(), &[], &[("LOCKSTEP_ADMIN_TOKEN", "a-secret")]);
    assert_eq!(checkin_status(&s.server, None), 200);
    assert!(s.log().contains("no read token"), "{}", s.log());
}

/// Sends `head` on a fresh connection and returns what comes back within `wait` (the
/// status line's code, or 0 for nothing), and how long it took.
fn raw(url: &str, head: &str, wait: Duration) -> (u16, Duration, String) {
    use std::io::{Read, Write};
    let addr = url.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let started = Instant::now();
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let code = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, started.elapsed(), text)
}

fn post_head(path: &str, token: Option<&str>, length: u64) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

#[test]
fn a_declared_body_that_never_comes_is_answered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Logged::start(
        dir.path(),
        &["--body-timeout", "1s"],
        &[("LOCKSTEP_ADMIN_TOKEN", "a-secret")],
    );
    let wait = Duration::from_secs(10);
    let url = &s.server.url;
    // Declared beyond --max-body-bytes: refused from the head alone, token or not.
    for token in [None, Some("a-secret")] {
        let (code, took, text) = raw(url, &post_head("/v1/admin/put", token, 10 << 30), wait);
        assert_eq!(code, 413, "{text}");
        assert!(text.contains("--max-body-bytes"), "{text}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // Within the limit but without a token: refused before any of it is read.
    let (code, took, text) = raw(url, &post_head("/v1/admin/put", None, 1 << 20), wait);
    assert_eq!(code, 401, "{text}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let (code, _, text) = raw(
        url,
        &post_head("/v1/admin/put", Some("wrong"), 1 << 20),
        wait,
    );
    assert_eq!(code, 403, "{text}");
    // With the token, the body has --body-timeout to arrive.
    let (code, took, text) = raw(
        url,
        &post_head("/v1/admin/put", Some("a-secret"), 1 << 20),
        wait,
    );
    assert_eq!(code, 408, "{text}");
    assert!(text.contains("--body-timeout"), "{text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(checkin_status(&s.server, None), 200);
}

/// The process's peak resident set (VmHWM), so memory held only while the bodies came in is
/// counted too.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn big_bodies_without_a_token_are_never_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let s = Logged::start(dir.path(), &[], &[("LOCKSTEP_ADMIN_TOKEN", "a-secret")]);
    let pid = s.server.child.id();
    // A few requests first, so the baseline includes the runtime's warm-up.
    for _ in 0..5 {
        assert_eq!(checkin_status(&s.server, None), 200);
    }
    let before = peak_rss_kb(pid);
    let addr = s.server.url.strip_prefix("http://").unwrap().to_owned();
    let senders: Vec<_> = (0..16)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut c = std::net::TcpStream::connect(&addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let body = 60usize << 20;
                let head = post_head("/v1/admin/import", None, body as u64);
                c.write_all(head.as_bytes()).unwrap();
                // The answer may come from the head alone: read it before the close that
                // follows can reset the connection.
                let mut answer = vec![0u8; 512];
                c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let early = c.read(&mut answer).unwrap_or(0);
                if early > 0 {
                    return String::from_utf8_lossy(&answer[..early]).into_owned();
                }
                c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let chunk = vec![b' '; 1 << 20];
                for _ in 0..60 {
                    // The server answers and closes without reading: writes then fail.
                    if c.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let n = c.read(&mut answer).unwrap_or(0);
                String::from_utf8_lossy(&answer[..n]).into_owned()
            })
        })
        .collect();
    let mut refused = 0;
    for h in senders {
        let answer = h.join().unwrap();
        // A reset may come before the answer is read; an answer, when read, is a 401.
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 401"),
            "{answer}"
        );
        refused += usize::from(!answer.is_empty());
    }
    // Not only resets: the server did answer (a crashed one would give none).
    assert!(refused > 0, "no sender read a 401");
    let after = peak_rss_kb(pid);
    println!(
        "peak RSS before {before} kB, after 16 x 60 MB unauthenticated bodies {after} kB \
         ({refused} senders read the 401)"
    );
    assert!(
        after < before + 100 * 1024,
        "peak RSS grew from {before} kB to {after} kB"
    );
    assert_eq!(checkin_status(&s.server, None), 200);
}

/// Raises this process's soft open-file limit to the hard one, and returns that.
fn raise_own_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_max
}

#[test]
fn slow_and_idle_connections_do_not_starve_check_ins() {
    use std::io::{Read, Write};
    let hard = raise_own_nofile();
    // 2000 idle connections as the issue asks, fewer where the hard open-file limit does not
    // leave room for them beside the 200 slowloris ones (this process holds those twice).
    let n_idle = 2000.min(hard.saturating_sub(600) as usize);
    println!("hard open-file limit {hard}: {n_idle} idle connections");
    let dir = tempfile::tempdir().unwrap();
    // The data server starts with a soft limit of 1024, as a default service would.
    let s = Logged::start_limited(
        dir.path(),
        &["--header-timeout", "15s"],
        &[("LOCKSTEP_ADMIN_TOKEN", "a-secret")],
        Some(1024),
    );
    let addr = s.server.url.strip_prefix("http://").unwrap().to_owned();
    // Raised to the hard limit, and said so.
    let open_files: u64 = s
        .log()
        .split("open_files=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no open_files figure: {}", s.log()));
    assert_eq!(open_files, hard);

    let started = Instant::now();
    let idle: Vec<std::net::TcpStream> = (0..n_idle)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // Slowloris: a request head a byte at a time, never finished.
    let slow: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.write_all(b"GET /v1/checkin?name=slow HTTP/1.1\r\n")
                .unwrap();
            c
        })
        .collect();
    let dribble = {
        let mut slow: Vec<_> = slow.iter().map(|c| c.try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            for _ in 0..24 {
                for c in slow.iter_mut() {
                    let _ = c.write_all(b"X");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let opened = started.elapsed();
    println!("{} connections opened in {opened:?}", n_idle + 200);
    assert!(opened < Duration::from_secs(4), "opening took {opened:?}");
    let mut took = Vec::new();
    // Enough samples that the p99 is not simply the maximum.
    while took.len() < 500 {
        let t = Instant::now();
        // A new connection each time: accepting is what a full descriptor table breaks.
        let r = agent()
            .get(&format!(
                "{}/v1/checkin?name=web-{}",
                s.server.url,
                took.len() % 10
            ))
            .call()
            .expect("a check-in failed");
        assert_eq!(r.status().as_u16(), 200);
        took.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(2));
    }
    // Measured while all of them were still open.
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "the check-ins took past the slowloris dribble: {:?}",
        started.elapsed()
    );
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    println!(
        "{} check-ins beside {n_idle} idle and 200 slowloris connections: median {:?}, p99 {:?}, max {:?}",
        took.len(),
        took[took.len() / 2],
        p99,
        took.last().unwrap()
    );
    // The promise is a p99 under 50 ms. The allowance is for this test's own machine: two
    // cores shared with other builds and tests, a debug build, and the 2200 connections
    // opened by this same process; quiet runs here measure 7 to 35 ms.
    let promise = Duration::from_millis(50);
    let allowance = Duration::from_millis(250);
    assert!(
        p99 < promise + allowance,
        "p99 {p99:?}: over the 50 ms promise plus the {allowance:?} allowance"
    );
    dribble.join().unwrap();

    // Past --header-timeout, the server has closed both kinds: a read sees the end.
    std::thread::sleep(Duration::from_secs(17).saturating_sub(started.elapsed()));
    let closed = |c: &std::net::TcpStream| {
        let mut c = c.try_clone().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        match c.read(&mut buf) {
            Ok(0) => true,
            // hyper may answer a timed-out head with a 408 before it closes.
            Ok(n) => String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    for (i, c) in slow.iter().enumerate() {
        assert!(closed(c), "slowloris connection {i} is still open");
    }
    for (i, c) in idle.iter().enumerate() {
        assert!(closed(c), "idle connection {i} is still open");
    }
    assert_eq!(checkin_status(&s.server, None), 200);
}

/// Sends a GET for `path` on a fresh connection and reads only the answer's head: the
/// connection and the declared `Content-Length`.
fn get_head_only(addr: &str, path: &str) -> (std::net::TcpStream, u64) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "the head ended early");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (c, length)
}

#[test]
fn a_client_that_never_reads_its_answer_is_cut_off() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let s = Logged::start(
        dir.path(),
        &[
            "--write-timeout",
            "2s",
            "--max-value-bytes",
            "33554432",
            "--interval",
            "200ms",
            "--min-window",
            "100ms",
        ],
        &[("LOCKSTEP_ADMIN_TOKEN", "a-secret")],
    );
    let addr = s.server.url.strip_prefix("http://").unwrap().to_owned();
    // Larger than what the kernel buffers on both sides of a loopback connection.
    let big = 24usize << 20;
    assert_eq!(
        put_as(&s.server, "a-secret", "big", &"x".repeat(big)).status,
        200
    );
    eventually("the large version is active", || {
        get_head_only(&addr, "/v1/versions/current").1 > big as u64
    });

    let (mut c, length) = get_head_only(&addr, "/v1/versions/current");
    // Reads nothing for longer than --write-timeout, then all there is.
    std::thread::sleep(Duration::from_secs(5));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match c.read(&mut buf) {
            Ok(0) => break "closed",
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
            Err(e) => panic!("still open after {got} of {length} bytes: {e}"),
        }
    };
    println!("cut off ({ended}) after {got} of {length} bytes");
    assert!(
        got < length,
        "the whole answer came: {got} of {length} bytes"
    );
    assert_eq!(checkin_status(&s.server, None), 200);
}

#[test]
fn idle_connections_give_way_at_max_connections() {
    let dir = tempfile::tempdir().unwrap();
    let s = Logged::start(
        dir.path(),
        // Idle connections alone would hold their places for 30 s.
        &["--max-connections", "50", "--header-timeout", "30s"],
        &[("LOCKSTEP_ADMIN_TOKEN", "a-secret")],
    );
    let addr = s.server.url.strip_prefix("http://").unwrap().to_owned();
    let started = Instant::now();
    let idle: Vec<std::net::TcpStream> = (0..60)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    eventually("the full house is logged", || {
        s.log().contains("50 connections open (--max-connections)")
    });
    let quick = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build();
    let quick: ureq::Agent = quick.into();
    for i in 0..20 {
        let r = quick
            .get(&format!("{}/v1/checkin?name=web-{i}", s.server.url))
            .call()
            .unwrap_or_else(|e| panic!("check-in {i} failed beside 60 idle connections: {e}"));
        assert_eq!(r.status().as_u16(), 200);
    }
    println!(
        "20 check-ins done {:?} after opening 60 idle connections",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the check-ins waited for the idle connections' header timeout"
    );
    drop(idle);
}

#[test]
fn anonymous_check_ins_cannot_bloat_the_farm() {
    let dir = tempfile::tempdir().unwrap();
    let s = Logged::start(
        dir.path(),
        &[
            "--max-open-farm-members",
            "50",
            "--interval",
            "1s",
            "--min-window",
            "500ms",
        ],
        &[("LOCKSTEP_ADMIN_TOKEN", "a-secret")],
    );
    let agent = agent();
    // Leaders that each report 200 followers (pid:active:staged:lagging:name): followers are
    // farm rows too, and count against the same cap.
    let leader_checkin = |i: u32| {
        let followers: Vec<String> = (0..200)
            .map(|f| format!("{}:0:0:0:f", 100_000 + i * 1000 + f))
            .collect();
        agent
            .get(&format!(
                "{}/v1/checkin?name=lead-{i}&host=h&pid={i}&role=leader&members={}",
                s.server.url,
                followers.join(",")
            ))
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    for i in 0..20 {
        assert_eq!(leader_checkin(i), 200);
    }
    for i in 0..300 {
        let r = agent
            .get(&format!(
                "{}/v1/checkin?name=bot-{i}&host=h&pid={}",
                s.server.url,
                1000 + i
            ))
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let farm = || {
        let status = get(
            &format!("{}/v1/admin/status", s.server.url),
            Some("a-secret"),
            &[],
        );
        status.json()["farm"].as_array().unwrap().clone()
    };
    eventually("the farm holds 50 members", || farm().len() == 50);
    // The first leader went in before its followers took the room.
    assert!(
        farm().iter().any(|m| m["name"] == "lead-0"),
        "{:#?}",
        farm()
    );
    // Members already in keep checking in.
    assert_eq!(leader_checkin(0), 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(farm().len(), 50);
    eventually("the refusals are logged", || {
        s.log().contains("--max-open-farm-members")
    });
}

#[test]
fn plain_http_on_a_reachable_address_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .arg("serve")
        .arg("--db")
        .arg(dir.path().join("db"))
        .args(["--listen", "0.0.0.0:0"])
        .env("LOCKSTEP_ADMIN_TOKEN", "a-secret")
        .env("LOCKSTEP_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    first_line(&mut child);
    let _ = child.kill();
    let _ = child.wait();
    let log = read(&dir.path().join("log"));
    assert!(log.contains("plain HTTP"), "{log}");
}

#[test]
fn management_bodies_have_exact_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Logged::start(dir.path(), &[], &[("LOCKSTEP_ADMIN_TOKEN", "a-secret")]);
    assert_eq!(put_as(&s.server, "a-secret", "a", "1").status, 200);
    let url = |p: &str| format!("{}/v1/admin/{p}", s.server.url);
    for (path, body) in [
        ("put", r#"["a","b"]"#),
        ("put", r#"{"key":"a","value":"2","extra":1}"#),
        ("put", r#""a""#),
        ("delete", r#"["a"]"#),
        ("import", r#"[[{"key":"a","value":"3"}]]"#),
        ("import", r#"{"entries":[{"key":"a","value":"3","x":0}]}"#),
        ("interval", r#"["1s"]"#),
        ("rollback", r#"[1]"#),
        ("pin", r#"[1]"#),
        ("pin", r#"{"version":1,"pinned":false}"#),
        ("unpin", r#"{"version":1,"message":"x"}"#),
        (
            "import",
            r#"{"entries":[{"key":"a","value":"4"},{"key":"a","value":"5"}]}"#,
        ),
    ] {
        let a = post(&url(path), Some("a-secret"), body.as_bytes());
        assert_eq!(
            a.status,
            400,
            "{path} {body}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert!(!a.json()["error"].as_str().unwrap().is_empty());
    }
    for query in [
        "history?limit=0",
        "history?limt=5",
        "audit?limit=0",
        "activations?limit=0",
        "keys?limit=0",
        "keys?prefix=a&bogus=1",
        "key?key=a&verison=1",
        "diff?a=1&b=1&c=1",
    ] {
        let a = get(&url(query), Some("a-secret"), &[]);
        assert_eq!(
            a.status,
            400,
            "{query}: {}",
            String::from_utf8_lossy(&a.body)
        );
    }
    let key = get(&format!("{}?key=a", url("key")), Some("a-secret"), &[]);
    assert!(
        String::from_utf8_lossy(&key.body).contains("\"1\""),
        "{}",
        String::from_utf8_lossy(&key.body)
    );
    let audit = get(&url("audit"), Some("a-secret"), &[]).json();
    assert_eq!(audit.as_array().unwrap().len(), 1, "{audit:#}");
}
