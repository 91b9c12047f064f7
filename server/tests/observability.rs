//! What an operator sees of a running data server: the audit log, readiness, and its logs.

#[path = "../../tests/support/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::postgres::{each_backend, Cluster};
use common::*;

fn lockstep(s: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("LOCKSTEP_SERVER", &s.url)
        .env("LOCKSTEP_ADMIN_TOKEN", token)
        .output()
        .unwrap()
}

fn ok(s: &Server, args: &[&str]) -> String {
    let out = lockstep(s, TOKEN, args);
    assert!(
        out.status.success(),
        "lockstep {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn audit(s: &Server) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&ok(s, &["audit", "--json"])).unwrap();
    v.as_array().unwrap().clone()
}

#[test]
fn every_change_is_audited_with_who_what_when_and_from_where() {
    each_backend(|backend, db| {
        let dir = tempfile::tempdir().unwrap();
        let read_token = dir.path().join("read-token");
        std::fs::write(&read_token, "reader-secret").unwrap();
        let s = Server::start(
            db,
            &[
                "--interval",
                "1s",
                "--min-window",
                "500ms",
                "--read-token-file",
                read_token.to_str().unwrap(),
            ],
        );
        let started = now_us();
        ok(&s, &["put", "price", "1.25"]);
        ok(&s, &["put", "price", "1.25"]); // changes nothing: not a change to audit
        ok(&s, &["rm", "price"]);
        let at = "2099-01-01T00:00:00Z";
        ok(&s, &["put", "promo", "10%", "--at", at]);
        let csv = dir.path().join("prices.csv");
        std::fs::write(&csv, "key,value\nprice:fig,3.10\nprice:kiwi,0.50\n").unwrap();
        ok(&s, &["import", csv.to_str().unwrap()]);
        ok(&s, &["interval", "2s"]);
        ok(&s, &["rollback", "1", "--yes"]);
        // Refused requests change nothing and record nothing.
        let refused = lockstep(&s, "wrong-token", &["put", "price", "9"]);
        assert!(!refused.status.success());
        let read_only = lockstep(&s, "reader-secret", &["put", "price", "9"]);
        assert!(!read_only.status.success());
        assert!(
            String::from_utf8_lossy(&read_only.stderr).contains("only read"),
            "{}",
            String::from_utf8_lossy(&read_only.stderr)
        );

        let entries = audit(&s);
        let actions: Vec<&str> = entries
            .iter()
            .rev()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            actions,
            [
                "put",
                "delete",
                "schedule-put",
                "import",
                "interval",
                "rollback"
            ],
            "{backend:?}: {entries:#?}"
        );
        let mut last = started;
        for e in entries.iter().rev() {
            assert_eq!(e["who"], "admin", "{e}");
            assert!(e["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{e}");
            let at_us = e["at_us"].as_i64().unwrap();
            assert!(at_us >= last && at_us <= now_us(), "{e}");
            last = at_us;
        }
        let summary = |action: &str| {
            entries.iter().find(|e| e["action"] == action).unwrap()["summary"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert!(summary("put").contains("price"), "{entries:#?}");
        assert!(summary("schedule-put").contains("promo"), "{entries:#?}");
        assert!(
            summary("schedule-put").contains("2099-01-01"),
            "{entries:#?}"
        );
        assert!(summary("import").contains("2 entries"), "{entries:#?}");
        assert!(summary("rollback").contains("version 1"), "{entries:#?}");

        // The read token reads the log; it is never anonymous.
        let url = format!("{}/v1/admin/audit?limit=2", s.url);
        let read = get(&url, Some("reader-secret"), &[]);
        assert_eq!(read.status, 200);
        assert_eq!(read.json().as_array().unwrap().len(), 2);
        assert_eq!(get(&url, None, &[]).status, 401);
    });
}

/// A data server whose stderr goes to a file, as under a service manager.
fn serve_logging_to(db: &Path, log: &Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(bin())
        .args(extra)
        .arg("serve")
        .arg("--db")
        .arg(db)
        .args(["--listen", "127.0.0.1:0", "--interval", "200ms"])
        .env("LOCKSTEP_ADMIN_TOKEN", TOKEN)
        .env("LOCKSTEP_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("lockstep: listening on ")
        .unwrap()
        .to_owned();
    (child, url)
}

/// Makes a change, a refused request and a rotation, then stops the server and returns its
/// log.
fn exercise(db: &Path, log: &Path, extra: &[&str]) -> String {
    let (mut child, url) = serve_logging_to(db, log, extra);
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&format!("{url}/v1/ready"), None, &[]).status != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let put = post(
        &format!("{url}/v1/admin/put"),
        Some(TOKEN),
        br#"{"key": "price", "value": "2.50"}"#,
    );
    assert_eq!(put.status, 200);
    let refused = post(
        &format!("{url}/v1/admin/put"),
        Some("guessed-secret-123"),
        br#"{"key": "price", "value": "0"}"#,
    );
    assert_eq!(refused.status, 403);
    // Check-ins until one performs a rotation that activates the edit.
    while !std::fs::read_to_string(log).unwrap().contains("rotation") {
        assert!(Instant::now() < deadline, "no rotation logged");
        get(&format!("{url}/v1/checkin?name=probe"), None, &[]);
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    std::fs::read_to_string(log).unwrap()
}

#[test]
fn logs_to_a_file_carry_no_colour_and_name_the_token_never_its_secret() {
    let dir = tempfile::tempdir().unwrap();
    let text = exercise(&dir.path().join("db"), &dir.path().join("text.log"), &[]);
    assert!(!text.contains('\x1b'), "escape codes in a file:\n{text}");
    let put = text
        .lines()
        .find(|l| l.contains("action=\"put\"") || l.contains("action=put"))
        .unwrap_or_else(|| panic!("no put logged:\n{text}"));
    assert!(put.contains("INFO") && put.contains("who=admin"), "{put}");
    let rejected = text
        .lines()
        .find(|l| l.contains("wrong token"))
        .unwrap_or_else(|| panic!("no rejected token logged:\n{text}"));
    assert!(rejected.contains("WARN"), "{rejected}");
    assert!(
        !text.contains("guessed-secret"),
        "a token in the log:\n{text}"
    );
    assert!(!text.contains(TOKEN), "the admin token in the log:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("INFO") && l.contains("rotation")),
        "{text}"
    );

    let json = exercise(
        &dir.path().join("db2"),
        &dir.path().join("json.log"),
        &["--log-format", "json"],
    );
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let put = lines
        .iter()
        .find(|l| l["fields"]["action"] == "put")
        .unwrap_or_else(|| panic!("no put logged:\n{json}"));
    assert_eq!(put["level"], "INFO");
    assert_eq!(put["fields"]["who"], "admin");
    assert!(lines
        .iter()
        .any(|l| l["level"] == "WARN" && l.to_string().contains("wrong token")));
    assert!(!json.contains("guessed-secret"));
}

#[test]
fn readiness_says_why_when_the_database_is_down_and_liveness_stays_up() {
    let Some(cluster) = Cluster::own() else {
        return;
    };
    let db = cluster.new_database();
    let s = Server::start(Path::new(&db), &["--interval", "1s"]);
    let ready = format!("{}/v1/ready", s.url);
    let health = format!("{}/v1/health", s.url);
    assert_eq!(get(&ready, None, &[]).status, 200);
    cluster.stop();
    let down = get(&ready, None, &[]);
    assert_eq!(down.status, 503, "{}", String::from_utf8_lossy(&down.body));
    let why = down.json()["error"].as_str().unwrap().to_owned();
    assert!(why.contains("database"), "{why}");
    assert_eq!(get(&health, None, &[]).status, 200);
    cluster.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&ready, None, &[]).status != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready again after the restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_silent_member_is_greyed_stale_then_expires_from_the_farm_view() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db"),
        &[
            "--interval",
            "200ms",
            "--min-window",
            "100ms",
            "--farm-expiry",
            "8s",
        ],
    );
    let url = format!("{}/v1/checkin?name=ghost&host=gone&pid=42", s.url);
    assert_eq!(get(&url, None, &[]).status, 200);
    let seen = Instant::now();
    let ghost = |s: &Server| -> Option<serde_json::Value> {
        admin_get(s, "/v1/admin/status")["farm"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "ghost")
            .cloned()
    };
    let mut was_stale = false;
    while let Some(m) = ghost(&s) {
        let stale = m["stale"].as_bool().unwrap();
        // Stale after 3 check-in periods and 5 s of slack; never before.
        assert!(
            !stale || seen.elapsed() >= Duration::from_millis(5_500),
            "{m}"
        );
        was_stale |= stale;
        assert!(
            seen.elapsed() < Duration::from_secs(20),
            "the silent member never left the farm view"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let gone = seen.elapsed();
    assert!(
        was_stale,
        "it left the view without being shown stale first"
    );
    assert!(
        gone >= Duration::from_secs(8),
        "it left after {gone:?}, before --farm-expiry"
    );
}

/// Runs SQL on a live data server's SQLite database, as another process would.
fn sqlite3(db: &Path, sql: &str) {
    let out = Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 (Debian's sqlite3 package; scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A change and its audit entry are one: when the entry cannot be written, the change does not
/// happen either (the admin gets an error and production keeps its value), and every change
/// that did happen has its entry.
#[test]
fn a_change_commits_with_its_audit_entry_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let s = Server::start(&db, &["--interval", "1s", "--min-window", "500ms"]);
    ok(&s, &["put", "price", "1"]);
    assert_eq!(audit(&s).len(), 1);
    // The audit table refuses every row from now on.
    sqlite3(
        &db,
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit \
         BEGIN SELECT RAISE(ABORT, 'audit refused by the test'); END;",
    );
    let refused = lockstep(&s, TOKEN, &["put", "price", "2"]);
    assert!(
        !refused.status.success(),
        "a put whose audit entry failed was acknowledged"
    );
    let interval = lockstep(&s, TOKEN, &["interval", "2s"]);
    assert!(
        !interval.status.success(),
        "an interval change without its audit entry"
    );
    let key = admin_get(&s, "/v1/admin/key?key=price");
    assert_eq!(
        key["value"], "1",
        "production changed without its entry: {key}"
    );
    let status = admin_get(&s, "/v1/admin/status");
    assert_eq!(status["sync"]["interval_us"], 1_000_000, "{status:#}");
    sqlite3(&db, "DROP TRIGGER refuse_audit;");
    ok(&s, &["put", "price", "2"]);
    let entries = audit(&s);
    let summaries: Vec<&str> = entries
        .iter()
        .rev()
        .map(|e| e["summary"].as_str().unwrap())
        .collect();
    assert_eq!(summaries, ["price = 1", "price = 2"], "{entries:#?}");

    // The text listing, as people read it: newest first, one line each, when, who, what, from
    // where and the summary.
    let text = ok(&s, &["audit"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let fields: Vec<&str> = lines[0].split_whitespace().collect();
    // An RFC 3339 UTC time to the millisecond, like 2026-11-27T19:07:04.479Z.
    let when = fields[0].as_bytes();
    assert!(
        when.len() == 24 && when[10] == b'T' && when[23] == b'Z',
        "{text}"
    );
    assert_eq!(fields[1..3], ["admin", "put"], "{text}");
    assert!(fields[3].starts_with("127.0.0.1:"), "{text}");
    assert_eq!(fields[4..].join(" "), "price = 2", "{text}");
    assert!(lines[1].ends_with("price = 1"), "{text}");
    assert_eq!(ok(&s, &["audit", "--limit", "1"]).lines().count(), 1);
}

/// Readiness on SQLite: a database that no longer answers the read readiness makes (its sync
/// table gone, as after a bad manual edit) makes the server not ready, saying why, while
/// liveness stays up; it is ready again once the table is back.
#[test]
fn readiness_on_sqlite_says_why_when_the_database_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let s = Server::start(&db, &["--interval", "1s", "--min-window", "500ms"]);
    let ready = format!("{}/v1/ready", s.url);
    let health = format!("{}/v1/health", s.url);
    assert_eq!(get(&ready, None, &[]).status, 200);
    sqlite3(&db, "ALTER TABLE sync RENAME TO sync_away;");
    let down = get(&ready, None, &[]);
    assert_eq!(down.status, 503, "{}", String::from_utf8_lossy(&down.body));
    let why = down.json()["error"].as_str().unwrap().to_owned();
    assert!(why.contains("database") && why.contains("sync"), "{why}");
    assert_eq!(get(&health, None, &[]).status, 200);
    sqlite3(&db, "ALTER TABLE sync_away RENAME TO sync;");
    assert_eq!(get(&ready, None, &[]).status, 200);
}
