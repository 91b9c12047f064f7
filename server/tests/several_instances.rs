//! Several data-server instances on one PostgreSQL database, with clients given all of them:
//! instances start together, die by `kill -9` at random moments, and the database itself
//! restarts, while edits and clients run.

#[path = "../../tests/support/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::observer::Observer;
use common::postgres::{Backend, Cluster};
use common::*;

/// A fresh PostgreSQL database, or `None` (announced) when PostgreSQL tests are off.
fn database() -> Option<PathBuf> {
    Backend::Postgres.database(Path::new("unused"))
}

/// The key→value pairs of production.
fn production(s: &Server) -> BTreeSet<String> {
    admin_get(s, "/v1/admin/keys?limit=1000000")
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_owned())
        .collect()
}

/// No activation time rotated twice or early, and the chain is whole: each rotation is of the
/// time the one before it set, and activates what that one staged. Returns the log.
fn assert_rotation_log_whole(s: &Server) -> Vec<serde_json::Value> {
    let log = admin_get(s, "/v1/admin/rotations");
    let log = log.as_array().unwrap().clone();
    for r in &log {
        assert!(
            r["rotated_at_us"].as_i64() >= r["activation_time_us"].as_i64(),
            "a rotation before its activation time: {r}"
        );
    }
    for pair in log.windows(2) {
        assert_eq!(
            pair[1]["activation_time_us"], pair[0]["next_activation_us"],
            "a rotation of a time the one before it did not set: {pair:?}"
        );
        assert!(
            pair[1]["activation_time_us"].as_i64() > pair[0]["activation_time_us"].as_i64(),
            "an activation time rotated twice or out of order: {pair:?}"
        );
        assert_eq!(
            pair[1]["active_version"], pair[0]["staged_version"],
            "a rotation did not activate what the one before it staged"
        );
    }
    log
}

#[test]
fn instances_started_together_on_a_new_database_migrate_it_once() {
    let Some(db) = database() else { return };
    let servers: Vec<Server> = std::thread::scope(|scope| {
        let starting: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| Server::start(&db, &["--interval", "1s"])))
            .collect();
        starting.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let tables: Vec<_> = servers.iter().map(|s| checkin(s, "probe").sync).collect();
    assert!(
        tables.windows(2).all(|w| w[0] == w[1]),
        "instances disagree on the sync table: {tables:?}"
    );
    let history = admin_get(&servers[0], "/v1/admin/history");
    assert_eq!(
        history.as_array().unwrap().len(),
        1,
        "the new database was seeded more than once: {history}"
    );
}

/// An editor that puts `k1`, `k2`, … through the instances in turn, moving on when one does
/// not answer; remembers the keys acknowledged with a 200.
struct Editor {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    /// Every answer other than a 200: its status (0 when none came) and body.
    failed: Arc<Mutex<Vec<(u16, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Editor {
    fn start(urls: Vec<String>) -> Editor {
        Editor::start_named(urls, "k")
    }

    /// An editor whose keys are `{prefix}1`, `{prefix}2`, …
    fn start_named(urls: Vec<String>, prefix: &'static str) -> Editor {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(5)))
                    .build()
                    .into();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let url = &urls[i as usize % urls.len()];
                    let key = format!("{prefix}{i}");
                    let body = serde_json::json!({"key": key, "value": "v"}).to_string();
                    let r = agent
                        .post(&format!("{url}/v1/admin/put"))
                        .header("Authorization", &format!("Bearer {TOKEN}"))
                        .send(body.as_bytes());
                    match r {
                        Ok(resp) if resp.status() == 200 => acked.lock().unwrap().push(key),
                        Ok(mut resp) => {
                            let body = resp.body_mut().read_to_string().unwrap_or_default();
                            failed.lock().unwrap().push((resp.status().as_u16(), body));
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => {
                            failed.lock().unwrap().push((0, e.to_string()));
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Editor {
            stop,
            acked,
            failed,
            thread: Some(thread),
        }
    }

    /// The keys acknowledged, and the answers that were not a 200.
    fn stop(mut self) -> (Vec<String>, Vec<(u16, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let acked = self.acked.lock().unwrap().clone();
        let failed = self.failed.lock().unwrap().clone();
        (acked, failed)
    }
}

/// Every rotation in the log after `from_us` and at least a cycle before `until_us` that
/// activated a new version was active in `o` by the next activation time (plus `slack`).
fn assert_never_a_cycle_behind(
    o: &Observer,
    log: &[serde_json::Value],
    from_us: i64,
    until_us: i64,
    interval_us: i64,
    slack_us: i64,
) -> usize {
    let changes = o.report().changes;
    let mut checked = 0;
    for r in log {
        let t = r["activation_time_us"].as_i64().unwrap();
        let v = r["active_version"].as_u64().unwrap();
        if t < from_us || t + 2 * interval_us > until_us {
            continue;
        }
        let deadline = wall_us_to_mono_ns(t + interval_us + slack_us);
        assert!(
            changes
                .iter()
                .any(|c| c.version >= v && c.first_new_ns <= deadline),
            "{}: version {v}, active at {t}, was not served by the next activation",
            o.name
        );
        checked += 1;
    }
    checked
}

#[test]
fn three_instances_lose_no_edit_and_rotate_each_time_once_under_50_kill_9s() {
    const KILLS: usize = 50;
    let Some(db) = database() else { return };
    let interval_us = 1_000_000;
    let args = ["--interval", "1s", "--min-window", "500ms"];
    let listens: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut servers: Vec<Server> = listens
        .iter()
        .map(|l| Server::start_at(&db, l, &args))
        .collect();
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    put(&servers[0], "price", "p0");
    wait_active(&servers[0], "price", "p0");
    let observers: Vec<Observer> = (0..3)
        .map(|i| Observer::start(&urls.join(","), &format!("web{i}"), "price", 120.0, None))
        .collect();
    for o in &observers {
        o.wait_ready();
    }
    let from_us = now_us();
    let editor = Editor::start(urls.clone());
    let seed = now_us() as u64;
    eprintln!("kill seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(rng.u64(50..400)));
        let i = rng.usize(0..3);
        servers[i].kill9();
        servers[i] = Server::start_at(&db, &listens[i], &args);
    }
    let (acked, _) = editor.stop();
    let until_us = now_us();
    // A last value goes live everywhere.
    put(&servers[1], "price", "last");
    let table = wait_active(&servers[1], "price", "last");
    for o in &observers {
        let c = o.wait_value("last", Duration::from_secs(10));
        assert!(c.version >= table.active_version);
    }

    let keys = production(&servers[2]);
    assert!(
        acked.len() > 100,
        "too few edits acknowledged: {}",
        acked.len()
    );
    let lost: Vec<&String> = acked.iter().filter(|k| !keys.contains(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged edits lost, among them {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let log = assert_rotation_log_whole(&servers[0]);
    let mut checked = 0;
    for o in &observers {
        checked += assert_never_a_cycle_behind(o, &log, from_us, until_us, interval_us, 100_000);
    }
    // About 15 s of kills at a 1 s interval: a dozen activations per client.
    assert!(checked >= 3 * 5, "only {checked} activations checked");
    eprintln!(
        "{KILLS} kills: {} acknowledged edits, none lost; {} rotations, none twice; \
         {checked} client activations, none a cycle late",
        acked.len(),
        log.len()
    );
}

#[test]
fn instances_ride_out_a_database_restart_and_clients_keep_serving() {
    // A cluster of its own: the other tests of this process keep theirs running.
    let Some(cluster) = Cluster::own() else {
        return;
    };
    let db = PathBuf::from(cluster.new_database());
    // A cycle longer than the outage, so that check-ins with nothing due come in while the
    // database is down.
    let args = ["--interval", "6s", "--min-window", "3s"];
    let a = Server::start(&db, &args);
    let b = Server::start(&db, &[]);
    put(&a, "price", "p0");
    let table = wait_active(&a, "price", "p0");
    let o = Observer::start(&format!("{},{}", a.url, b.url), "web", "price", 120.0, None);
    o.wait_value("p0", Duration::from_secs(20));
    // Just after a rotation: the next one is seconds away.
    let deadline = Instant::now() + Duration::from_secs(20);
    let sync = loop {
        let sync = checkin(&a, "probe").sync;
        if sync.activation_time_us - now_us() > 4_000_000 {
            break sync;
        }
        assert!(Instant::now() < deadline, "no rotation seen");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Warm this instance's cache with the version clients hold.
    let active = format!("{}/v1/versions/{}", a.url, sync.active_version);
    assert_eq!(get(&active, None, &[]).status, 200);

    cluster.stop();
    // The database is down: what needs it is a 503 that says so; what is in memory is served.
    let edit = post(
        &format!("{}/v1/admin/put", a.url),
        Some(TOKEN),
        br#"{"key": "price", "value": "p1"}"#,
    );
    assert_eq!(edit.status, 503, "{}", String::from_utf8_lossy(&edit.body));
    let message = edit.json()["error"].as_str().unwrap().to_owned();
    assert!(message.contains("database"), "unclear 503: {message}");
    let c = get(&format!("{}/v1/checkin?name=probe", a.url), None, &[]);
    assert_eq!(c.status, 200, "{}", String::from_utf8_lossy(&c.body));
    assert_eq!(get(&active, None, &[]).status, 200);
    let served = o.report().changes.len();
    std::thread::sleep(Duration::from_millis(1_000));
    assert!(
        o.report().stat("max_read_ns").unwrap() < 10_000_000,
        "a read blocked"
    );
    cluster.restart();

    // Back up: the instances reconnect by themselves, and the farm converges.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = post(
            &format!("{}/v1/admin/put", b.url),
            Some(TOKEN),
            br#"{"key": "price", "value": "p2"}"#,
        );
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never reconnected: {}", r.status);
        std::thread::sleep(Duration::from_millis(200));
    }
    o.wait_value("p2", Duration::from_secs(30));
    let r = o.report();
    assert!(r.changes.len() > served, "the client stopped following");
    assert_eq!(r.stat("rejected"), Some(0));
    assert!(table.active_version > 0);
    assert_rotation_log_whole(&a);
}

#[test]
fn an_instance_started_while_the_database_is_down_waits_for_it_and_serves_once_it_answers() {
    let Some(cluster) = Cluster::own() else {
        return;
    };
    let db = PathBuf::from(cluster.new_database());
    cluster.stop();
    let mut s = Server::start(&db, &["--interval", "1s", "--min-window", "500ms"]);
    // Listening, not exiting: whatever needs the database is a 503 that says why.
    let checkin_url = format!("{}/v1/checkin?name=probe", s.url);
    for _ in 0..3 {
        let c = get(&checkin_url, None, &[]);
        assert_eq!(c.status, 503, "{}", String::from_utf8_lossy(&c.body));
        let message = c.json()["error"].as_str().unwrap().to_owned();
        assert!(
            message.contains("database") && message.contains("retry shortly"),
            "unclear 503: {message}"
        );
        let edit = post(
            &format!("{}/v1/admin/put", s.url),
            Some(TOKEN),
            br#"{"key": "price", "value": "p1"}"#,
        );
        assert_eq!(edit.status, 503, "{}", String::from_utf8_lossy(&edit.body));
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "the instance exited while the database was down"
    );

    cluster.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = get(&checkin_url, None, &[]);
        if c.status == 200 {
            break;
        }
        assert_eq!(c.status, 503, "{}", String::from_utf8_lossy(&c.body));
        assert!(Instant::now() < deadline, "never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The same process, migrated and seeded now, takes edits and rotates them in.
    put(&s, "price", "p1");
    let table = wait_active(&s, "price", "p1");
    assert!(table.active_version > 1);
    assert_rotation_log_whole(&s);
    s.kill9();
}

/// The name of the database a test URL points at.
fn database_name(db: &Path) -> String {
    db.to_str().unwrap().rsplit('/').next().unwrap().to_owned()
}

#[test]
fn edits_are_neither_lost_nor_failed_while_the_database_connections_are_killed() {
    let Some(db) = database() else { return };
    let cluster = common::postgres::cluster().unwrap();
    let name = database_name(&db);
    let args = ["--interval", "1s", "--min-window", "500ms"];
    let servers = [Server::start(&db, &args), Server::start(&db, &args)];
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    // Four at once, so that a kill usually finds a transaction in flight (or waiting for the
    // sync row's lock).
    let editors: Vec<Editor> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|prefix| Editor::start_named(urls.clone(), prefix))
        .collect();
    let killer_seed = now_us() as u64;
    eprintln!("killer seed {killer_seed}");
    let mut rng = fastrand::Rng::with_seed(killer_seed);
    let mut killed = 0u64;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(rng.u64(100..300)));
        let n: u64 = cluster
            .psql(
                "postgres",
                &format!(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = '{name}'"
                ),
            )
            .parse()
            .unwrap();
        killed += n;
    }
    let (mut acked, mut failed) = (Vec::new(), Vec::new());
    for editor in editors {
        let (a, f) = editor.stop();
        acked.extend(a);
        failed.extend(f);
    }
    let keys = production(&servers[0]);
    let lost: Vec<&String> = acked.iter().filter(|k| !keys.contains(*k)).collect();
    eprintln!(
        "{killed} connections killed: {} edits acknowledged, {} lost, {} failed: {:?}",
        acked.len(),
        lost.len(),
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(killed > 50, "too few connections killed: {killed}");
    assert!(acked.len() > 200, "too few edits: {}", acked.len());
    assert!(lost.is_empty(), "acknowledged edits lost: {lost:?}");
    // An edit whose connection is cut runs once more on a fresh one. One that loses that one
    // too (a second kill within the few milliseconds of the retry) fails, with a 503 that
    // says to retry: about one kill in a hundred here, and never any other answer.
    for (status, body) in &failed {
        assert!(
            *status == 503 && body.contains("retry shortly"),
            "an edit failed otherwise than with a 503 to retry: {status} {body}"
        );
    }
    let bound = 2.max(acked.len() / 100);
    assert!(
        failed.len() <= bound,
        "{} of {} edits failed while the database was up (at most {bound} may lose both \
         their connection and the retry's): {:?}",
        failed.len(),
        acked.len() + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_rotation_log_whole(&servers[1]);
}

#[test]
fn an_edit_whose_commit_loses_its_connection_runs_again_once_the_database_says_it_aborted() {
    let Some(db) = database() else { return };
    let cluster = common::postgres::cluster().unwrap();
    let name = database_name(&db);
    let s = Server::start(&db, &["--interval", "1h"]);
    // Commits of production rows take a second: a deferred constraint trigger runs at COMMIT,
    // which leaves time to cut the connection while the commit is under way.
    cluster.psql(
        &name,
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT OR UPDATE ON production \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()",
    );
    let url = format!("{}/v1/admin/put", s.url);
    let edit =
        std::thread::spawn(move || post(&url, Some(TOKEN), br#"{"key": "price", "value": "p1"}"#));
    let deadline = Instant::now() + Duration::from_secs(10);
    let killed = loop {
        let pids = cluster.psql(
            "postgres",
            &format!(
                "SELECT pid FROM pg_stat_activity WHERE datname = '{name}' \
                 AND wait_event = 'PgSleep'"
            ),
        );
        if let Some(pid) = pids.lines().next() {
            cluster.psql("postgres", &format!("SELECT pg_terminate_backend({pid})"));
            break pid.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the edit never reached its commit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Its transaction aborted with the connection: it runs again, and this commit completes.
    let answer = edit.join().unwrap();
    assert_eq!(
        answer.status,
        200,
        "the edit whose commit's connection (backend {killed}) was cut: {}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(
        production(&s).contains("price"),
        "the edit is not in production"
    );
}

#[test]
fn three_instances_ride_out_a_database_restart_that_spans_an_activation_time() {
    let Some(cluster) = Cluster::own() else {
        return;
    };
    let db = PathBuf::from(cluster.new_database());
    let args = ["--interval", "2s", "--min-window", "1s"];
    let servers: Vec<Server> = (0..3).map(|_| Server::start(&db, &args)).collect();
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    put(&servers[0], "price", "p0");
    wait_active(&servers[0], "price", "p0");
    let observers: Vec<Observer> = (0..3)
        .map(|i| Observer::start(&urls.join(","), &format!("web{i}"), "price", 120.0, None))
        .collect();
    for o in &observers {
        o.wait_value("p0", Duration::from_secs(20));
    }
    // Just after a rotation, so that the database goes down before the next activation time.
    let deadline = Instant::now() + Duration::from_secs(20);
    let t = loop {
        let sync = checkin(&servers[0], "probe").sync;
        if sync.activation_time_us - now_us() > 1_200_000 {
            break sync.activation_time_us;
        }
        assert!(Instant::now() < deadline, "no rotation seen");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stopped_us = now_us();
    cluster.stop();
    assert!(
        now_us() < t,
        "the database stopped after the activation time: no test"
    );
    let lines: Vec<usize> = observers.iter().map(|o| o.report().stats_lines).collect();
    // Down across T: a check-in that finds the rotation due gets a 503 that says why (no
    // instance rotates without the database), and the clients keep serving.
    while now_us() < t + 1_500_000 {
        std::thread::sleep(Duration::from_millis(100));
    }
    for s in &servers {
        let c = get(&format!("{}/v1/checkin?name=probe", s.url), None, &[]);
        assert_eq!(c.status, 503, "{}", String::from_utf8_lossy(&c.body));
        let message = c.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains("database"), "unclear 503: {message}");
    }
    for (o, before) in observers.iter().zip(&lines) {
        let r = o.report();
        assert!(
            r.stats_lines > before + 3,
            "{} stopped serving reads",
            o.name
        );
        assert!(
            r.stat("max_read_ns").unwrap() < 10_000_000,
            "a read blocked"
        );
    }
    let restarted_us = now_us();
    cluster.restart();

    // Back up: every instance takes edits again by itself, T is rotated once, after the
    // restart, and the farm follows the edits.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, s) in servers.iter().enumerate() {
        let body = format!(r#"{{"key": "from{i}", "value": "v"}}"#);
        loop {
            let r = post(
                &format!("{}/v1/admin/put", s.url),
                Some(TOKEN),
                body.as_bytes(),
            );
            if r.status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "instance {i} never reconnected: {}",
                r.status
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    put(&servers[2], "price", "after");
    for o in &observers {
        o.wait_value("after", Duration::from_secs(30));
        let r = o.report();
        assert_eq!(r.stat("rejected"), Some(0), "{}", o.name);
        assert!(
            r.stat("max_read_ns").unwrap() < 10_000_000,
            "a read blocked"
        );
    }
    let log = assert_rotation_log_whole(&servers[1]);
    let at_t: Vec<&serde_json::Value> = log
        .iter()
        .filter(|r| r["activation_time_us"] == t)
        .collect();
    assert_eq!(at_t.len(), 1, "T rotated {} times: {at_t:?}", at_t.len());
    assert!(
        at_t[0]["rotated_at_us"].as_i64().unwrap() >= restarted_us,
        "T rotated while the database was down (stopped at {stopped_us}): {}",
        at_t[0]
    );
    let keys = production(&servers[0]);
    assert!((0..3).all(|i| keys.contains(&format!("from{i}"))));
}

/// A TCP proxy between a data server and PostgreSQL that, once armed, relays the `COMMIT` of
/// the next transaction that sent `marker` (in a statement) to the database and then cuts the
/// connection both ways: the transaction commits, and its answer never reaches the data server.
struct CommitCutter {
    port: u16,
    armed: Arc<AtomicBool>,
    cut: Arc<std::sync::atomic::AtomicUsize>,
}

impl CommitCutter {
    fn start(upstream_port: u16, marker: &'static str) -> CommitCutter {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cutter = CommitCutter {
            port,
            armed: Arc::new(AtomicBool::new(false)),
            cut: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        };
        let (armed, cut) = (cutter.armed.clone(), cutter.cut.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let (armed, cut) = (armed.clone(), cut.clone());
                std::thread::spawn(move || relay_cutting(client, server, marker, &armed, &cut));
            }
        });
        cutter
    }
}

fn relay_cutting(
    client: std::net::TcpStream,
    server: std::net::TcpStream,
    marker: &str,
    armed: &AtomicBool,
    cut: &std::sync::atomic::AtomicUsize,
) {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    let dropping = Arc::new(AtomicBool::new(false));
    {
        let (mut from, mut to) = (server.try_clone().unwrap(), client.try_clone().unwrap());
        let dropping = dropping.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n @ 1..) = from.read(&mut buf) {
                if dropping.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    let (mut from, mut to) = (client, server);
    // The startup message (after an SSL or GSS request, if any) has no type byte.
    loop {
        let mut len = [0u8; 4];
        if from.read_exact(&mut len).is_err() {
            return;
        }
        let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
        if from.read_exact(&mut body).is_err() || to.write_all(&len).is_err() {
            return;
        }
        if to.write_all(&body).is_err() {
            return;
        }
        let code = body
            .get(..4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()));
        if !matches!(code, Some(80877103 | 80877104)) {
            break;
        }
    }
    let mut wrote = false;
    loop {
        let mut head = [0u8; 5];
        if from.read_exact(&mut head).is_err() {
            return;
        }
        let len = u32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        if from.read_exact(&mut body).is_err() {
            return;
        }
        let text = String::from_utf8_lossy(&body);
        wrote |= matches!(head[0], b'P' | b'Q') && text.contains(marker);
        let commit = head[0] == b'Q'
            && text
                .trim_end_matches('\0')
                .trim()
                .eq_ignore_ascii_case("COMMIT");
        let cutting = commit && wrote && armed.swap(false, Ordering::SeqCst);
        if cutting {
            dropping.store(true, Ordering::SeqCst);
            cut.fetch_add(1, Ordering::SeqCst);
        }
        if to.write_all(&head).is_err() || to.write_all(&body).is_err() {
            return;
        }
        if cutting {
            // The commit is the database's to finish now; then neither side hears more.
            std::thread::sleep(Duration::from_millis(300));
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
        if commit {
            wrote = false;
        }
    }
}

#[test]
fn an_edit_whose_commit_succeeded_but_whose_answer_was_lost_is_not_run_twice() {
    let Some(db) = database() else { return };
    let cluster = common::postgres::cluster().unwrap();
    let name = database_name(&db);
    // A scheduled change: each run of its transaction inserts a row, so a second run shows
    // (a plain put run twice writes the same value, and no second audit entry).
    let cutter = CommitCutter::start(cluster.port, "INSERT INTO scheduled");
    let via = PathBuf::from(format!(
        "postgres://postgres@127.0.0.1:{}/{name}",
        cutter.port
    ));
    let s = Server::start(&via, &["--interval", "1h"]);
    let at = time::OffsetDateTime::from_unix_timestamp(now_us() / 1_000_000 + 86_400)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let schedule = |value: &str| {
        post(
            &format!("{}/v1/admin/put", s.url),
            Some(TOKEN),
            serde_json::json!({"key": "price", "value": value, "at": at})
                .to_string()
                .as_bytes(),
        )
    };
    assert_eq!(schedule("p0").status, 200);
    assert_eq!(cutter.cut.load(Ordering::SeqCst), 0);
    cutter.armed.store(true, Ordering::SeqCst);
    let answer = schedule("p1");
    assert_eq!(
        cutter.cut.load(Ordering::SeqCst),
        1,
        "no commit's answer was cut"
    );
    // txid_status says committed: the change is reported done, and was not run again.
    assert_eq!(
        answer.status,
        200,
        "the change whose commit's answer was lost: {}",
        String::from_utf8_lossy(&answer.body)
    );
    let rows = cluster.psql(
        &name,
        "SELECT count(*) FROM scheduled WHERE value = convert_to('p1', 'UTF8')",
    );
    assert_eq!(rows, "1", "the change ran {rows} times");
    let all = cluster.psql(&name, "SELECT count(*) FROM scheduled");
    assert_eq!(all, "2");
}
