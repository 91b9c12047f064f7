//! Urgent activation end to end: a real data server at the 10-minute interval with a 1 s
//! urgent window, client processes of the C ABI (tests/c/observer.c), and the `lockstep` CLI
//! as an operator runs it. An urgent edit is live on every client within 3 s of the command,
//! all switching at one instant (the proof of activation, as for regular activations), and a
//! client that cannot download in time catches up as lagging.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::observer::Observer;
use support::*;

/// `lockstep ARGS --json` as the CLI; its JSON answer.
fn cli(s: &Server, args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin())
        .args(args)
        .arg("--json")
        .env("LOCKSTEP_SERVER", &s.url)
        .env("LOCKSTEP_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("run lockstep");
    assert!(
        out.status.success(),
        "lockstep {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The activation of `version` in `lockstep activations`, once `ok` holds for it.
fn wait_activation(
    s: &Server,
    version: u64,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = cli(s, &["activations", "--limit", "10"]);
        let found = list
            .as_array()
            .unwrap()
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

/// Waits until `n` check-ins are held by the data server (`lockstep_held_checkins`): every
/// client has done its first cycles and long-polls, as in steady state.
fn wait_held(s: &Server, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = String::from_utf8(get(&format!("{}/metrics", s.url), None, &[]).body).unwrap();
        let held = text
            .lines()
            .find_map(|l| l.strip_prefix("lockstep_held_checkins "))
            .and_then(|v| v.trim().parse::<i64>().ok());
        if held.is_some_and(|h| h >= n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} check-ins never held: {held:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(o: &Observer, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &o.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {}", o.pid());
}

#[test]
fn an_urgent_put_is_live_on_every_client_within_3s_in_lockstep_and_a_stopped_one_lags() {
    support::postgres::each_backend_alone(|backend, db| {
        eprintln!("backend {backend:?}");
        urgent_put_end_to_end(db);
    });
}

fn urgent_put_end_to_end(db: &std::path::Path) {
    let s = Server::start(db, &["--interval", "10m"]);
    let set = cli(&s, &["interval", "10m", "--urgent-window", "1s"]);
    assert_eq!(set["interval_us"], 600_000_000, "{set:#}");
    put(&s, "price", "p0");
    let observers: Vec<Observer> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| Observer::start(&s.url, &format!("urgent-{n}"), "price", 120.0, None))
        .collect();
    for o in &observers {
        o.wait_ready();
    }

    // Production's p0 goes live long before the grid point, 5 to 10 minutes away.
    wait_held(&s, 4);
    let published = cli(&s, &["publish", "--urgent"]);
    assert_eq!(published["queued"], false, "{published:#}");
    for o in &observers {
        o.wait_value("p0", Duration::from_secs(10));
    }

    // An urgent request less than a check-in period (15 s at 10 minutes) before the grid
    // point is queued for the rotation there, correctly: a client polling every 15 s may not
    // hear of an earlier time before the one it has armed. The test is about the other case;
    // it waits such a grid point out.
    let period_us = 15_000_000;
    let u0 = published["live_by_us"].as_i64().unwrap();
    let t = wait_rotation_past(&s, u0).activation_time_us;
    assert_eq!(t % 600_000_000, 0, "the activation after U is off the grid");
    if t - now_us() < period_us + 5_000_000 {
        eprintln!("the grid point is less than a check-in period away: waiting it out");
        sleep_until_us(t + 2_000_000);
    }

    // The fourth client cannot download (nor even hear) before the urgent activation.
    wait_held(&s, 4);
    signal(&observers[3], "-STOP");
    let asked_ns = mono_ns();
    let asked_us = now_us();
    let answer = cli(&s, &["put", "price", "p1", "--urgent"]);
    let u = answer["live_by_us"].as_i64().unwrap();
    assert!(
        u - asked_us <= 1_500_000,
        "U is {} µs after the command: {answer:#}",
        u - asked_us
    );
    for o in &observers[..3] {
        let change = o.wait_value("p1", Duration::from_secs(10));
        let after_ms = (change.first_new_ns - asked_ns) / 1_000_000;
        eprintln!("{} serves p1 {after_ms} ms after the command", o.name);
        assert!(
            after_ms <= 3_000,
            "{} served p1 {after_ms} ms after the command",
            o.name
        );
    }
    let version = observers[0].wait_value("p1", Duration::ZERO).version;
    let proof = wait_activation(&s, version, "three on time, one missing", |a| {
        a["clients_switched"] == 3 && a["clients_missing"] == 1
    });
    assert_eq!(proof["urgent"], true, "{proof:#}");
    assert_eq!(proof["activation_time_us"], u, "{proof:#}");
    let spread = proof["spread_us"].as_i64().unwrap();
    let error = proof["error_us"].as_i64().unwrap();
    eprintln!(
        "three clients switched within {spread} µs (true spread at most {spread} + {error} µs)"
    );
    assert!(spread <= 1_000, "spread {spread} µs: {proof:#}");

    // Let the fourth go on: it catches up, late.
    signal(&observers[3], "-CONT");
    observers[3].wait_value("p1", Duration::from_secs(20));
    let late = wait_activation(&s, version, "one late", |a| a["clients_late"] == 1);
    assert_eq!(late["late"][0]["name"], "urgent-d", "{late:#}");
    assert_eq!(late["clients_switched"], 3, "{late:#}");

    // The rotation log and the audit log say it was urgent; the grid carries on after it.
    let rotations = cli(&s, &["activations", "--limit", "1"]);
    assert_eq!(rotations[0]["urgent"], true, "{rotations:#}");
    let log = admin_get(&s, "/v1/admin/rotations");
    let at_u = log
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["activation_time_us"] == u)
        .unwrap_or_else(|| panic!("no rotation at U: {log:#}"));
    assert_eq!(at_u["urgent"], true, "{at_u:#}");
    assert_eq!(
        at_u["next_activation_us"].as_i64().unwrap() % 600_000_000,
        0,
        "{at_u:#}"
    );
    let audit = cli(&s, &["audit", "--limit", "5"]);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "put-urgent"),
        "{audit:#}"
    );

    // A removal, urgently: the key is gone everywhere within 3 s of the command.
    let asked_ns = mono_ns();
    let answer = cli(&s, &["rm", "price", "--urgent"]);
    assert!(answer["live_by_us"].as_i64().is_some(), "{answer:#}");
    for o in &observers {
        let change = o
            .wait_for(Duration::from_secs(10), |r| {
                r.changes
                    .iter()
                    .find(|c| c.value == "-" && c.first_new_ns > asked_ns)
                    .cloned()
            })
            .unwrap_or_else(|| panic!("{} still has the key", o.name));
        let after_ms = (change.first_new_ns - asked_ns) / 1_000_000;
        assert!(
            after_ms <= 3_000,
            "{} lost the key {after_ms} ms after",
            o.name
        );
    }
    let audit = cli(&s, &["audit", "--limit", "1"]);
    assert_eq!(audit[0]["action"], "delete-urgent", "{audit:#}");
}

/// A client whose download of the staged version S outlasts a check-in period, during which
/// an urgent request replaces S (restaged for U, sooner than S's T), must check in again
/// before arming S: armed less than a check-in period before T, its next check-in comes only
/// after T, and it would serve S at T though the farm never activated it.
#[test]
fn a_client_whose_slow_download_outlasted_an_urgent_restage_never_serves_the_replaced_version() {
    let dir = tempfile::tempdir().unwrap();
    // Check-ins every 2 s; a full download through the proxy takes 6.8 s.
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "8s", "--min-window", "4s"],
    );
    cli(
        &s,
        &[
            "interval",
            "8s",
            "--min-window",
            "4s",
            "--urgent-window",
            "1s",
        ],
    );
    put(&s, "price", "v0");
    let proxy =
        support::proxy::Proxy::start("127.0.0.1:0", &s.url, support::proxy::Mode::PassThrough);
    let o = Observer::start(&proxy.url, "slow-download", "price", 90.0, None);
    o.wait_ready();
    o.wait_value("v0", Duration::from_secs(30));
    proxy.set(support::proxy::Mode::SlowFull);
    let fetched = || proxy.downloads().values().sum::<u64>();
    let before = fetched();

    // Right after a rotation with nothing staged: v1 is built ahead for the next one, T0,
    // which stages it as S for T1. The client checks in just after T0 and downloads S.
    let t = checkin(&s, "test").sync.activation_time_us;
    let t0 = wait_rotation_past(&s, t).activation_time_us;
    put(&s, "price", "v1");
    sleep_until_us(t0 + 1_000_000);
    let sync = checkin(&s, "test").sync;
    let t1 = sync.activation_time_us;
    assert_eq!(t1, t0 + 8_000_000, "{sync:?}");
    assert_eq!(
        value_in_version(&s, "price", sync.staged_version).as_deref(),
        Some("v1")
    );
    assert_eq!(fetched(), before + 1, "the client is not downloading S");

    // S is replaced while the client downloads it: v2 goes live at U = now + 1 s.
    let answer = cli(&s, &["put", "price", "v2", "--urgent"]);
    let u = answer["live_by_us"].as_i64().unwrap();
    assert!(u < t1 - 2_000_000, "not restaged for U: {answer:#}");

    // The client hears of v2 only after its download (at T0 + 7 s or so): it catches up.
    o.wait_value("v2", Duration::from_secs(40));
    let served: Vec<String> = o.report().changes.iter().map(|c| c.value.clone()).collect();
    assert!(
        !served.iter().any(|v| v == "v1"),
        "the client served v1, which the farm never activated: {served:?}"
    );
}
