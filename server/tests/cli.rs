//! The management CLI against a real data server.

#[path = "../../tests/support/mod.rs"]
mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn lockstep(s: &Server, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("LOCKSTEP_SERVER", &s.url)
        .env("LOCKSTEP_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap()
}

fn ok(s: &Server, args: &[&str]) -> String {
    let out = lockstep(s, args);
    assert!(
        out.status.success(),
        "lockstep {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(s: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(s, &all)).unwrap()
}

#[test]
fn cli_round_trips_put_get_ls_import_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "200ms", "--min-window", "100ms"],
    );
    ok(&s, &["put", "price:apple", "1.25"]);
    let file = dir.path().join("pear.txt");
    std::fs::write(&file, "2.00").unwrap();
    ok(&s, &["put", "price:pear", "--file", file.to_str().unwrap()]);
    assert_eq!(ok(&s, &["get", "price:apple"]).trim(), "1.25");
    assert_eq!(ok(&s, &["get", "price:pear"]).trim(), "2.00");

    let json_file = dir.path().join("prices.json");
    std::fs::write(
        &json_file,
        r#"{"price:plum": "0.80", "promo:winter": "10%"}"#,
    )
    .unwrap();
    ok(&s, &["import", json_file.to_str().unwrap()]);
    let csv_file = dir.path().join("prices.csv");
    std::fs::write(
        &csv_file,
        "key,value\nprice:fig,3.10\n\"price:kiwi\",\"0,50\"\n",
    )
    .unwrap();
    ok(&s, &["import", csv_file.to_str().unwrap()]);

    let listed = ok(&s, &["ls", "price:"]);
    let keys: Vec<&str> = listed
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "price:apple",
            "price:fig",
            "price:kiwi",
            "price:pear",
            "price:plum"
        ]
    );
    assert_eq!(json(&s, &["get", "price:kiwi"])["value"], "0,50");
    assert_eq!(json(&s, &["ls"]).as_array().unwrap().len(), 6);

    // Let the edits become a version, then change and roll back.
    let good = version_with_edits_so_far(&s);
    assert_eq!(
        ok(&s, &["get", "price:fig", "--version", &good.to_string()]).trim(),
        "3.10"
    );
    ok(&s, &["rm", "price:fig"]);
    ok(&s, &["put", "price:apple", "9.99"]);
    let bad = version_with_edits_so_far(&s);
    let diff = ok(&s, &["diff", &good.to_string(), &bad.to_string()]);
    assert!(diff.contains("- price:fig"), "{diff}");
    assert!(diff.contains("~ price:apple\t1.25 -> 9.99"), "{diff}");

    let r = json(&s, &["rollback", &good.to_string(), "--yes"]);
    let v = r["version"].as_u64().unwrap();
    assert_eq!(ok(&s, &["get", "price:apple"]).trim(), "1.25");
    assert_eq!(
        ok(&s, &["get", "price:fig", "--version", &v.to_string()]).trim(),
        "3.10"
    );
    let history = json(&s, &["history"]);
    assert_eq!(history[0]["version"].as_u64(), Some(v));
    assert_eq!(history[0]["reason"], format!("rollback to {good}"));

    let status = ok(&s, &["status"]);
    assert!(status.contains("next activation"), "{status}");
    let interval = json(&s, &["interval", "30s"]);
    assert_eq!(interval["interval_us"], 30_000_000);
    assert_eq!(interval["min_window_us"], 15_000_000);
}

#[test]
fn cli_errors_exit_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("db"), &[]);
    let cases: Vec<Vec<&str>> = vec![
        vec!["get", "missing"],
        vec!["put", "k", "v", "--at", "not-a-time"],
        vec!["rollback", "99"],
        vec!["interval", "soon"],
        vec!["import", "/nonexistent/file.json"],
    ];
    for args in cases {
        let out = lockstep(&s, &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("lockstep: error: "), "{err}");
    }
    let out = Command::new(bin())
        .args(["ls"])
        .env("LOCKSTEP_SERVER", &s.url)
        .env_remove("LOCKSTEP_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOCKSTEP_ADMIN_TOKEN"));
    let out = Command::new(bin())
        .args(["ls"])
        .env("LOCKSTEP_SERVER", "http://127.0.0.1:9")
        .env("LOCKSTEP_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lockstep serve"));
}

fn fails(s: &Server, args: &[&str]) -> (String, String) {
    let out = lockstep(s, args);
    assert_eq!(out.status.code(), Some(1), "lockstep {args:?}: {out:?}");
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn a_closed_stdout_ends_the_cli_quietly_with_status_0() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("db"), &[]);
    for args in [&["status"][..], &["history"], &["--json", "status"]] {
        let mut child = Command::new(bin())
            .args(args)
            .env("LOCKSTEP_SERVER", &s.url)
            .env("LOCKSTEP_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the answer arrives, as `| head -1` is after one line.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And through a real shell pipe.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' status | head -1",
            bin().display()
        ))
        .env("LOCKSTEP_SERVER", &s.url)
        .env("LOCKSTEP_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn usage_errors_print_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("db"), &[]);
    for args in [
        &["put"][..],
        &["put", "k", "v", "--bogus"],
        &["nosuch"],
        &["history", "--limit", "0"],
        &["rollback", "seven"],
    ] {
        let (stdout, stderr) = fails(&s, args);
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("lockstep: error: "), "{stderr}");
        assert!(
            stderr.contains("usage: lockstep") || stderr.contains("--help"),
            "{stderr}"
        );
    }
    // Help is not an error.
    let out = lockstep(&s, &["put", "--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
}

#[test]
fn under_json_every_error_is_one_json_object_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("db"), &[]);
    for args in [
        &["--json", "get", "missing"][..],
        &["--json", "interval", "2y"],
        &["--json", "put"],
        &["put", "--json"],
        &["--json", "import", "/nonexistent/file.json"],
    ] {
        let (stdout, stderr) = fails(&s, args);
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stderr)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stderr}"));
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.len() > 10, "{args:?}: {stderr}");
    }
}

#[test]
fn intervals_outside_the_range_clients_accept_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("db"), &["--interval", "1s"]);
    let before = json(&s, &["status"])["sync"].clone();
    for args in [
        &["interval", "10d"][..],
        &["interval", "2y"],
        &["interval", "18446744073709551615ns"],
        &["interval", "200000y", "--min-window", "200000y"],
        &["interval", "99ms"],
        &["interval", "1s", "--min-window", "2s"],
        &["interval", "1s", "--min-window", "1ms"],
    ] {
        let (_, stderr) = fails(&s, args);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains("between"), "{args:?}: {stderr}");
    }
    let after = json(&s, &["status"])["sync"].clone();
    assert_eq!(before, after, "a refused interval changed the sync table");
    // The bounds themselves are accepted.
    ok(&s, &["interval", "1d", "--min-window", "1d"]);
    ok(&s, &["interval", "100ms", "--min-window", "10ms"]);

    // `serve` refuses them too, before it listens.
    for args in [&["--interval", "2d"][..], &["--min-window", "20m"]] {
        let out = Command::new(bin())
            .arg("serve")
            .arg("--db")
            .arg(dir.path().join("other.db"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("LOCKSTEP_ADMIN_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("between"), "{args:?}: {err}");
    }
}

#[test]
fn far_future_scheduled_times_print_as_dates() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("db"), &[]); // a 10-minute grid
    let said = ok(&s, &["put", "k", "v", "--at", "9999-12-31T23:45:00Z"]);
    assert!(
        said.contains("scheduled for 9999-12-31T23:45:00Z")
            && said.contains("goes live at the activation at 9999-12-31T23:50:00Z"),
        "{said}"
    );
    // Its activation would fall after the last time there is: refused, in words.
    let (_, err) = fails(&s, &["put", "k", "v", "--at", "9999-12-31T23:55:00Z"]);
    assert!(err.contains("9999-12-31T23:59:59.999Z"), "{err}");
    assert!(!err.contains("µs"), "{err}");
}

#[test]
fn rollback_lists_the_production_keys_it_changes_and_needs_yes_to_discard_edits() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "200ms", "--min-window", "100ms"],
    );
    ok(&s, &["put", "a", "1"]);
    ok(&s, &["put", "b", "1"]);
    let good = version_with_edits_so_far(&s).to_string();
    ok(&s, &["put", "a", "2"]);
    ok(&s, &["rm", "b"]);
    ok(&s, &["put", "c", "3"]);

    let (listed, err) = fails(&s, &["rollback", &good]);
    let mut lines: Vec<&str> = listed.lines().skip(1).collect();
    lines.sort();
    assert_eq!(lines, ["+ b\t1", "- c", "~ a\t2 -> 1"], "{listed}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(
        ok(&s, &["get", "a"]).trim(),
        "2",
        "a refused rollback changed production"
    );
    assert_eq!(ok(&s, &["get", "c"]).trim(), "3");

    let done = ok(&s, &["rollback", &good, "--yes"]);
    for line in ["+ b\t1", "- c", "~ a\t2 -> 1"] {
        assert!(done.lines().any(|l| l == line), "{line:?} missing: {done}");
    }
    assert_eq!(ok(&s, &["get", "a"]).trim(), "1");
    assert_eq!(ok(&s, &["get", "b"]).trim(), "1");
    assert!(!lockstep(&s, &["get", "c"]).status.success());
    // Nothing left to discard: no --yes needed.
    let again = json(&s, &["rollback", &good]);
    assert!(again["version"].is_u64(), "{again}");
    assert_eq!(again["production"]["changed"], serde_json::json!([]));
}

#[test]
fn history_shows_the_newest_100_and_says_when_it_cuts_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("db"), &[]);
    // A change scheduled before the next activation is staged at once, as version 2.
    let soon = time::OffsetDateTime::now_utc() + Duration::from_secs(2);
    let soon = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    ok(&s, &["put", "k", "v", "--at", &soon]);
    // Each rollback to the other content stages a new version at once.
    let mut versions = 2;
    for i in 0..105 {
        admin_post(
            &s,
            "/v1/admin/rollback",
            serde_json::json!({"version": if i % 2 == 0 { 1 } else { 2 }}),
        );
        versions += 1;
    }
    let rows = |text: &str| {
        text.lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .count()
    };
    let out = ok(&s, &["history"]);
    assert_eq!(rows(&out), 100, "{out}");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .contains(&format!("showing the newest 100 of {versions} versions")),
        "{out}"
    );
    let out = ok(&s, &["history", "--limit", "3"]);
    assert_eq!(rows(&out), 3, "{out}");
    assert!(
        out.contains(&format!("showing the newest 3 of {versions}")),
        "{out}"
    );
    let out = ok(&s, &["history", "--all"]);
    assert_eq!(rows(&out), versions, "{out}");
    assert!(!out.contains("showing"), "{out}");
    assert_eq!(
        json(&s, &["history", "--all"]).as_array().unwrap().len(),
        versions
    );
    assert_eq!(
        json(&s, &["history", "--limit", "5"])
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

#[test]
fn status_marks_a_silent_member_stale_and_says_how_long_each_has_been_silent() {
    let dir = tempfile::tempdir().unwrap();
    // Interval 200 ms: clients check in every 200 ms, so stale means silent over 5.6 s.
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "200ms", "--min-window", "100ms"],
    );
    checkin(&s, "gone");
    let until = std::time::Instant::now() + Duration::from_millis(6_500);
    while std::time::Instant::now() < until {
        checkin(&s, "alive");
        std::thread::sleep(Duration::from_millis(100));
    }
    checkin(&s, "alive");
    let status = json(&s, &["status"]);
    let member = |name: &str| {
        status["farm"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in {status}"))
            .clone()
    };
    let gone = member("gone");
    assert_eq!(gone["stale"], true, "{gone}");
    assert!(gone["silent_us"].as_i64().unwrap() >= 6_000_000, "{gone}");
    let alive = member("alive");
    assert_eq!(alive["stale"], false, "{alive}");
    // Starting the CLI takes a moment on a loaded machine; stale is over 5.6 s.
    assert!(alive["silent_us"].as_i64().unwrap() < 3_000_000, "{alive}");

    checkin(&s, "alive");
    let text = ok(&s, &["status"]);
    assert!(
        text.contains("2 processes holding a handle on 1 host, 1 of them stale"),
        "{text}"
    );
    let line = |name: &str| member_line(&text, name);
    assert!(line("gone").ends_with("s ago, stale"), "{text}");
    assert!(line("alive").ends_with(" ago"), "{text}");
}

/// The line of `lockstep status` that lists the process named `name` (pid, then name).
fn member_line(text: &str, name: &str) -> String {
    text.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("{name}: {text}"))
        .to_owned()
}

fn checkin_as(s: &Server, query: &str) {
    let a = get(&format!("{}/v1/checkin?{query}", s.url), None, &[]);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
}

#[test]
fn status_groups_the_farm_by_host_with_its_leader_its_followers_and_what_they_hold() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("db"), &[]);
    checkin_as(
        &s,
        "name=web&host=h1&pid=10&role=leader&active=3&staged=4\
         &members=11:3:4:0:worker-a,12:2:4:1",
    );
    checkin_as(&s, "name=cron&host=h1&pid=20&active=3&staged=4");
    checkin_as(&s, "name=solo&host=h2&pid=30&active=3&staged=4");

    let text = ok(&s, &["status"]);
    assert!(
        text.contains("5 processes holding a handle on 2 hosts\n"),
        "{text}"
    );
    let h1 = text.find("host h1:").unwrap_or_else(|| panic!("{text}"));
    let h2 = text.find("host h2:").unwrap_or_else(|| panic!("{text}"));
    assert!(
        text[h1..].starts_with(
            "host h1: 4 processes, leader pid 10, 2 following, 1 on their own, 1 lagging\n"
        ),
        "{text}"
    );
    assert!(
        text[h1..h2].contains(
            "versions     active 3, staged 4: 3 processes; active 2, staged 4: 1 process\n"
        ),
        "{text}"
    );
    // Each process under its host: the leader first, then those on their own, then followers.
    let order: Vec<&str> = text[h1..h2]
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|w| ["web", "cron", "worker-a", "-"].contains(w))
        .collect();
    assert_eq!(order, ["web", "cron", "worker-a", "-"], "{text}");
    let words = |name: &str| -> Vec<String> {
        member_line(&text, name)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(words("web")[..3], ["10", "web", "leader"]);
    assert_eq!(words("cron")[..3], ["20", "cron", "alone"]);
    assert_eq!(words("worker-a")[..4], ["11", "worker-a", "follows", "10"]);
    // A follower whose name its leader did not give: pid, no name, its leader, lagging.
    let unnamed = member_line(&text, "-");
    assert!(unnamed.trim_start().starts_with("12  -"), "{text}");
    assert!(unnamed.contains("follows 10"), "{text}");
    assert!(unnamed.contains(" yes "), "{text}");
    assert!(
        text[h2..].contains("host h2: 1 process, 1 on their own\n"),
        "{text}"
    );

    let j = json(&s, &["status"]);
    assert_eq!(j["hosts"][0]["leader_pid"], 10, "{j}");
    assert_eq!(j["hosts"][0]["following"], 2, "{j}");
    assert_eq!(j["farm"].as_array().unwrap().len(), 5, "{j}");
}

#[test]
fn status_shows_a_thousand_processes_in_a_few_dozen_lines_listing_the_ones_that_need_a_look() {
    let dir = tempfile::tempdir().unwrap();
    // Check-ins without a read token may add at most 1000 farm members (followers included).
    let s = Server::start(&dir.path().join("db"), &["--max-open-farm-members", "2000"]);
    for h in 0..4 {
        // 250 followers each, one of them lagging and one still on version 2.
        let members: Vec<String> = (100..350)
            .map(|pid| match pid {
                300 => format!("{pid}:3:4:1"),
                340 => format!("{pid}:2:4:0"),
                _ => format!("{pid}:3:4:0"),
            })
            .collect();
        checkin_as(
            &s,
            &format!(
                "name=web&host=h{h}&pid=10&role=leader&active=3&staged=4&members={}",
                members.join(",")
            ),
        );
    }
    let text = ok(&s, &["status"]);
    assert!(
        text.contains("1004 processes holding a handle on 4 hosts\n"),
        "{text}"
    );
    let lines = text.lines().count();
    assert!(lines <= 40, "{lines} lines:\n{text}");
    for h in 0..4 {
        let at = text.find(&format!("host h{h}:")).unwrap();
        let block: Vec<&str> = text[at..].lines().take(12).collect();
        let pids: Vec<&str> = block
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        // The leader, the lagging one and the one behind are listed; the rest are counted.
        for pid in ["10", "300", "340"] {
            assert!(pids.contains(&pid), "h{h} lacks pid {pid}:\n{text}");
        }
        assert!(
            block.iter().any(|l| l.trim_start().starts_with(
                "… and 248 more following, each \
                 live, not lagging, with active 3, staged 4"
            )),
            "h{h}:\n{text}"
        );
    }
    assert_eq!(
        json(&s, &["status"])["farm"].as_array().unwrap().len(),
        1004
    );
}

#[test]
fn history_shows_how_many_times_each_version_was_downloaded() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("db"), &[]);
    for _ in 0..3 {
        let a = get(&format!("{}/v1/versions/current", s.url), None, &[]);
        assert_eq!(a.status, 200);
    }
    let j = json(&s, &["history"]);
    assert_eq!(j[0]["version"], 1, "{j}");
    assert_eq!(j[0]["downloads"], 3, "{j}");
    let text = ok(&s, &["history"]);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    let column = header.iter().position(|w| *w == "downloads");
    assert_eq!(column.map(|c| row[c]), Some("3"), "{text}");
}

/// `lockstep serve` with `LOCKSTEP_DB` set to `db`, run in `dir`; no `--db`.
fn serve_with_env_db(dir: &std::path::Path, db: &str) -> std::process::Child {
    Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env("LOCKSTEP_DB", db)
        .env("LOCKSTEP_ADMIN_TOKEN", TOKEN)
        .env("LOCKSTEP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_database_that_looks_like_a_url_lockstep_does_not_read_is_refused_and_creates_nothing() {
    for db in [
        "postgres:/db",
        "postgresql:db",
        "mysql://u@h/db",
        "sqlite3:x.db",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = serve_with_env_db(dir.path(), db);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("LOCKSTEP_DB={db}: serve started");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "LOCKSTEP_DB={db}: {stderr}");
        assert!(
            stderr.contains("looks like a URL") && stderr.contains("postgres://"),
            "LOCKSTEP_DB={db}: {stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "LOCKSTEP_DB={db} created {left:?}");
    }
}

#[test]
fn lockstep_db_with_the_sqlite_prefix_opens_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve_with_env_db(dir.path(), "sqlite:from-env.db");
    let file = dir.path().join("from-env.db");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !file.exists() && std::time::Instant::now() < deadline {
        assert!(child.try_wait().unwrap().is_none(), "serve exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        file.exists(),
        "LOCKSTEP_DB=sqlite:from-env.db did not open from-env.db"
    );
    assert!(!dir.path().join("sqlite:from-env.db").exists());
    assert!(!dir.path().join("lockstep.db").exists());
}

/// Scripts that pass port 0 read the "listening" line and use the server at once: with a
/// database that answers, that line means ready, so the first request is never a 503.
#[test]
fn the_listening_line_means_ready_when_the_database_answers() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let mut child = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join(format!("db{round}")))
            .env("LOCKSTEP_LOG", "warn")
            .env("LOCKSTEP_ADMIN_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().rsplit("http://").next().unwrap().to_owned();
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            conn,
            "GET /v1/checkin?name=first HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "round {round}: the first request after {line:?} got {}",
            answer.lines().next().unwrap_or("nothing")
        );
    }
}
