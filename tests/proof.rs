//! Proof of activation end to end: a real data server, client processes of the C ABI
//! (tests/c/observer.c), and `lockstep activations --json` as an operator runs it.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::observer::Observer;
use support::proxy::{Mode, Proxy};
use support::*;

/// `lockstep activations --json`, run as the CLI.
fn activations(s: &Server) -> Vec<serde_json::Value> {
    let out = Command::new(bin())
        .args(["activations", "--json", "--limit", "10"])
        .env("LOCKSTEP_SERVER", &s.url)
        .env("LOCKSTEP_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("run lockstep activations");
    assert!(
        out.status.success(),
        "lockstep activations: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("JSON")
        .as_array()
        .expect("a list")
        .clone()
}

/// The activation of `version`, once `ok` holds for it.
fn wait_activation(
    s: &Server,
    version: u64,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = activations(s);
        let found = list
            .iter()
            .find(|a| a["version"].as_u64() == Some(version))
            .cloned();
        if let Some(a) = found.as_ref().filter(|a| ok(a)) {
            return a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "activation of version {version} never showed {what}: {found:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn names(a: &serde_json::Value, list: &str) -> Vec<String> {
    let mut v: Vec<String> = a[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn three_clients_prove_their_switch_and_a_stalled_fourth_shows_up_missing_then_late() {
    support::postgres::each_backend_alone(|backend, db| {
        eprintln!("backend {backend:?}");
        prove_switches(db);
    });
}

fn prove_switches(db: &std::path::Path) {
    let s = Server::start(db, &["--interval", "1s", "--min-window", "500ms"]);
    put(&s, "price", "p0");
    wait_active(&s, "price", "p0");
    let proxy = Proxy::start("127.0.0.1:0", &s.url, Mode::PassThrough);
    let mut observers: Vec<Observer> = ["a", "b", "c"]
        .iter()
        .map(|n| Observer::start(&s.url, &format!("proof-{n}"), "price", 120.0, None))
        .collect();
    observers.push(Observer::start_with(
        &proxy.url,
        "proof-d",
        "price",
        120.0,
        None,
        "checkin_timeout_ms=400;download_timeout_ms=1500",
    ));
    for o in &observers {
        o.wait_value("p0", Duration::from_secs(20));
    }

    // All four up: every one switches on time.
    put(&s, "price", "p1");
    let first = observers[0]
        .wait_value("p1", Duration::from_secs(20))
        .version;
    for o in &observers[1..] {
        o.wait_value("p1", Duration::from_secs(20));
    }
    let a1 = wait_activation(&s, first, "four switches", |a| a["clients_switched"] == 4);
    assert_eq!(a1["clients_late"], 0, "{a1:#}");
    assert_eq!(a1["clients_missing"], 0, "{a1:#}");

    // The fourth cannot download the next version before its activation time.
    proxy.set(Mode::StallBody);
    put(&s, "price", "p2");
    let second = observers[0]
        .wait_value("p2", Duration::from_secs(20))
        .version;
    for o in &observers[1..3] {
        o.wait_value("p2", Duration::from_secs(20));
    }
    let a2 = wait_activation(&s, second, "three switches and one missing", |a| {
        a["clients_switched"] == 3 && a["clients_missing"] == 1
    });
    assert_eq!(names(&a2, "missing"), ["proof-d"], "{a2:#}");
    assert_eq!(
        names(&a2, "switched"),
        ["proof-a", "proof-b", "proof-c"],
        "{a2:#}"
    );
    // The instants are where the switch was armed, on the data server's clock: within a
    // few ms of each other and of the activation time, each within its own error bound.
    let spread = a2["spread_us"].as_i64().unwrap();
    let error = a2["error_us"].as_i64().unwrap();
    eprintln!(
        "three clients switched within {spread} µs (true spread at most {spread} + {error} µs)"
    );
    assert!(
        (0..5_000).contains(&spread),
        "spread {spread} µs (± {error}): {a2:#}"
    );
    for m in a2["switched"].as_array().unwrap() {
        let (offset, err) = (
            m["offset_us"].as_i64().unwrap(),
            m["error_us"].as_i64().unwrap(),
        );
        assert!(
            offset.abs() <= err + 2_000,
            "{} switched {offset} µs from the activation time (error {err} µs)",
            m["name"]
        );
    }

    // Let the fourth through: it catches up, late.
    std::thread::sleep(Duration::from_millis(500));
    proxy.set(Mode::PassThrough);
    observers[3].wait_value("p2", Duration::from_secs(20));
    let late = wait_activation(&s, second, "one late", |a| a["clients_late"] == 1);
    assert_eq!(names(&late, "late"), ["proof-d"], "{late:#}");
    assert_eq!(late["clients_switched"], 3, "{late:#}");
    assert_eq!(late["clients_missing"], 0, "{late:#}");
    // Every report was of the version it is listed under, with its checksum.
    assert_eq!(late["mismatched"], serde_json::json!([]), "{late:#}");
    let caught_up = late["late"][0]["offset_us"].as_i64().unwrap();
    assert!(
        caught_up > 500_000,
        "the fourth caught up {caught_up} µs after the activation time"
    );
    // The same for people: the late member is named under its activation.
    let text = Command::new(bin())
        .args(["activations", "--limit", "3"])
        .env("LOCKSTEP_SERVER", &s.url)
        .env("LOCKSTEP_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("late") && l.contains("proof-d@")),
        "{text}"
    );
    // The earlier activation's proof stands.
    let again = wait_activation(&s, first, "four switches", |a| a["clients_switched"] == 4);
    assert_eq!(again["clients_late"], 0, "{again:#}");
    assert_eq!(again["mismatched"], serde_json::json!([]), "{again:#}");
    drop(observers);
}

/// A client's word that it switched on time is checked: a report that says so with an instant
/// far from the activation time (beyond twice its error bound and the slack) counts as late,
/// while one within its bound counts as on time. Raw check-ins stand for clients here: the rule
/// is the data server's, whatever a client claims.
#[test]
fn a_report_claiming_on_time_far_from_the_activation_time_is_counted_late() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db.sqlite"),
        &["--interval", "1s", "--min-window", "500ms"],
    );
    put(&s, "price", "p1");
    let sync = wait_active(&s, "price", "p1");
    let version = sync.active_version;
    let a = wait_activation(&s, version, "its activation", |_| true);
    let t = a["activation_time_us"].as_i64().unwrap();
    let checksum = a["checksum"].as_str().unwrap().to_owned();
    let report = |name: &str, pid: u32, at_us: i64, error_us: i64| {
        let url = format!(
            "{}/v1/checkin?name={name}&host=hp&pid={pid}&active={version}&sw_version={version}\
             &sw_checksum={checksum}&sw_activation_us={t}&sw_at_us={at_us}\
             &sw_error_us={error_us}&sw_late=0",
            s.url
        );
        let answer = get(&url, None, &[]);
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    };
    // Within 2 × 300 µs + 5 ms of T.
    report("honest", 1, t + 5_500, 300);
    // 200 ms before T with a 300 µs bound: no clock this good switches that early on time.
    report("boaster", 2, t - 200_000, 300);
    let judged = wait_activation(&s, version, "both reports", |a| {
        a["clients_switched"].as_u64().unwrap_or(0) + a["clients_late"].as_u64().unwrap_or(0) >= 2
    });
    assert_eq!(names(&judged, "switched"), ["honest"], "{judged:#}");
    assert_eq!(names(&judged, "late"), ["boaster"], "{judged:#}");
    assert_eq!(judged["spread_us"], 0, "{judged:#}");
}
