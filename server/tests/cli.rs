//! The management CLI against a real data server.

#[path = "../../tests/support/mod.rs"]
mod common;

use std::process::{Command, Output};

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
    let t = checkin(&s, "probe").sync.activation_time_us;
    let good = wait_rotation_past(&s, t).staged_version;
    assert_eq!(
        ok(&s, &["get", "price:fig", "--version", &good.to_string()]).trim(),
        "3.10"
    );
    ok(&s, &["rm", "price:fig"]);
    ok(&s, &["put", "price:apple", "9.99"]);
    let t = checkin(&s, "probe").sync.activation_time_us;
    let bad = wait_rotation_past(&s, t).staged_version;
    let diff = ok(&s, &["diff", &good.to_string(), &bad.to_string()]);
    assert!(diff.contains("- price:fig"), "{diff}");
    assert!(diff.contains("~ price:apple\t1.25 -> 9.99"), "{diff}");

    let r = json(&s, &["rollback", &good.to_string()]);
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
