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
        let log = dir.join("server.log");
        let mut child = Command::new(bin())
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
    eventually("the new read token works", || {
        checkin_status(&s.server, Some("read-secret-2")) == 200
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

    // A file that does not parse leaves the tokens as they were, and the log says where.
    write(&format!(
        "ops admin {hashed_admin}\nweb-new reed read-secret-2\n"
    ));
    s.hangup();
    eventually("the parse error is logged", || s.log().contains("line 2"));
    assert_eq!(checkin_status(&s.server, Some("read-secret-1")), 200);

    // No client failed a check-in during all of it.
    assert_eq!(refused_checkins(&s.server, "ops-secret-1"), refused_before);
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
