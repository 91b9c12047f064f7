//! Long-poll check-ins on the data server, over plain HTTP: held until the sync table changes
//! (also when another instance on the same database changes it), or until `wait_ms`; a
//! shutdown answers them.

#[path = "../../tests/support/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::postgres::each_backend;
use common::*;
use lockstep::wire;

fn server(db: &std::path::Path) -> Server {
    Server::start(db, &["--interval", "10m"])
}

/// The ETag of the table a check-in gets now.
fn etag(s: &Server) -> String {
    let a = get(
        &format!("{}{}?name=probe", s.url, wire::PATH_CHECKIN),
        None,
        &[],
    );
    assert_eq!(a.status, 200);
    a.headers.get("etag").unwrap().to_str().unwrap().to_owned()
}

/// A long-poll check-in: status, whether it says it was held, its ETag, how long it took.
fn held_checkin(url: &str, etag: &str, wait_ms: u64) -> (u16, bool, String, Duration) {
    let started = Instant::now();
    let a = get(
        &format!(
            "{url}{}?name=lp&{}={wait_ms}",
            wire::PATH_CHECKIN,
            wire::QUERY_WAIT_MS
        ),
        None,
        &[("If-None-Match", etag)],
    );
    let held = a
        .headers
        .get(wire::HEADER_HELD)
        .is_some_and(|v| v == wire::HELD_YES);
    let tag = a
        .headers
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (a.status, held, tag, started.elapsed())
}

fn held_now(s: &Server) -> i64 {
    let a = get(&format!("{}/metrics", s.url), None, &[]);
    String::from_utf8_lossy(&a.body)
        .lines()
        .find_map(|l| l.strip_prefix("lockstep_held_checkins "))
        .and_then(|v| v.trim().parse().ok())
        .expect("lockstep_held_checkins in /metrics")
}

fn wait_held(s: &Server, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while held_now(s) != n {
        assert!(Instant::now() < deadline, "{} held, not {n}", held_now(s));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_change_through_one_instance_answers_the_check_ins_another_holds() {
    each_backend(|backend, db| {
        let a = server(db);
        let b = server(db);
        let before = etag(&b);
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                let (url, e) = (b.url.clone(), before.clone());
                std::thread::spawn(move || held_checkin(&url, &e, 30_000))
            })
            .collect();
        wait_held(&b, 5);
        admin_post(
            &a,
            "/v1/admin/interval",
            serde_json::json!({ "interval": "5m" }),
        );
        let changed = Instant::now();
        for w in waiting {
            let (status, held, tag, _) = w.join().unwrap();
            assert_eq!(status, 200, "{backend:?}");
            assert!(held, "{backend:?}: the answer does not say it was held");
            assert_ne!(tag, before, "{backend:?}");
        }
        // Held for 30 s otherwise: B's watcher noticed A's change.
        let took = changed.elapsed();
        assert!(took < Duration::from_secs(5), "{backend:?}: {took:?}");
        println!("{backend:?}: five check-ins held by B answered {took:?} after A's change");
        wait_held(&b, 0);
    });
}

#[test]
fn a_held_check_in_times_out_with_304_and_a_stale_one_is_answered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir.path().join("db"));
    let now = etag(&s);
    let (status, held, tag, took) = held_checkin(&s.url, &now, 300);
    assert_eq!((status, held, tag.as_str()), (304, true, now.as_str()));
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // A client with another table gets the current one without waiting.
    let (status, held, tag, took) = held_checkin(&s.url, "\"s1-1-1-1-1\"", 30_000);
    assert_eq!((status, held, tag.as_str()), (200, false, now.as_str()));
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Without wait_ms: today's 304 at once.
    let (status, held, _, _) = held_checkin(&s.url, &now, 0);
    assert_eq!((status, held), (304, false));
    // The held one's duration is timed apart from the check-ins answered at once.
    let metrics = get(&format!("{}/metrics", s.url), None, &[]);
    let text = String::from_utf8_lossy(&metrics.body);
    let count = |route: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("lockstep_http_request_duration_seconds_count")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains("status=\"304\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!(count("/v1/checkin (held)"), Some(1), "{text}");
    assert_eq!(count("/v1/checkin"), Some(1), "{text}");
}

#[test]
fn a_shutdown_answers_held_check_ins_instead_of_waiting_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = server(&dir.path().join("db"));
    let now = etag(&s);
    let (url, e) = (s.url.clone(), now.clone());
    let waiting = std::thread::spawn(move || held_checkin(&url, &e, 50_000));
    wait_held(&s, 1);
    let stopping = Instant::now();
    // SAFETY: a plain kill(2) of our own child.
    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGTERM);
    }
    let (status, held, _, _) = waiting.join().unwrap();
    assert_eq!((status, held), (304, true));
    let exited = s.child.wait().unwrap();
    let took = stopping.elapsed();
    assert!(exited.success(), "{exited:?}");
    assert!(took < Duration::from_secs(10), "the shutdown took {took:?}");
}

/// A long-poll check-in over a connection of its own; returns the connection after its answer
/// and the answer's status line.
fn raw_held(addr: &str, etag: &str, wait_ms: u64) -> (std::net::TcpStream, String) {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET {}?name=raw&{}={wait_ms} HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n",
        wire::PATH_CHECKIN,
        wire::QUERY_WAIT_MS
    )
    .unwrap();
    let head = read_head(&mut c);
    (c, head)
}

/// Reads one answer's head (a 304 or an answer without a body is all head); its first line.
fn read_head(c: &mut std::net::TcpStream) -> String {
    read_full_head(c)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Reads one answer; its head.
fn read_full_head(c: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match c.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let length: usize = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    let _ = c.read_exact(&mut body);
    text
}

#[test]
fn held_check_ins_outlive_the_header_and_write_timeouts_and_are_not_idle_near_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db"),
        &[
            "--interval",
            "10m",
            "--header-timeout",
            "1s",
            "--write-timeout",
            "1s",
            "--max-connections",
            "20",
            "--max-held-checkins",
            "19",
        ],
    );
    let now = etag(&s);
    let addr = s.url.strip_prefix("http://").unwrap().to_owned();
    // 19 of 20 connections: past 90% of the cap, where connections idle for 1 s are closed.
    let held: Vec<_> = (0..19)
        .map(|_| {
            let (addr, e) = (addr.clone(), now.clone());
            std::thread::spawn(move || raw_held(&addr, &e, 3_000))
        })
        .collect();
    for h in held {
        let (mut c, status) = h.join().unwrap();
        assert!(status.starts_with("HTTP/1.1 304"), "{status:?}");
        // The same connection carries the next request: it was not closed as idle.
        use std::io::Write;
        write!(c, "GET {} HTTP/1.1\r\nHost: x\r\n\r\n", wire::PATH_HEALTH)
            .unwrap_or_else(|e| panic!("the connection was closed after its held answer: {e}"));
        let next = read_head(&mut c);
        assert!(
            next.starts_with("HTTP/1.1 200"),
            "after a held answer: {next:?}"
        );
    }
}

#[test]
fn a_held_check_in_puts_its_client_in_the_farm_view_when_it_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir.path().join("db"));
    let now = etag(&s);
    let url = s.url.clone();
    let waiting = std::thread::spawn(move || held_checkin(&url, &now, 20_000));
    wait_held(&s, 1);
    // Farm rows are written once a second: the member shows long before its answer.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = admin_get(&s, "/v1/admin/status");
        let names: Vec<String> = status["farm"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["name"].as_str().map(str::to_owned))
            .collect();
        if names.iter().any(|n| n == "lp") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the held client is not in the farm view: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(held_now(&s), 1, "answered before its time");
    admin_post(
        &s,
        "/v1/admin/interval",
        serde_json::json!({ "interval": "5m" }),
    );
    assert_eq!(waiting.join().unwrap().0, 200);
}

#[test]
fn past_max_held_checkins_a_long_poll_is_answered_at_once_and_connections_stay_free() {
    let dir = tempfile::tempdir().unwrap();
    // The default cap: three quarters of the connections, 6 of 8.
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "10m", "--max-connections", "8"],
    );
    let now = etag(&s);
    let addr = s.url.strip_prefix("http://").unwrap().to_owned();
    // As many long-poll check-ins as connections: held, they would take every one for 60 s.
    let mut pending: Vec<_> = (0..8)
        .map(|_| {
            let (addr, e) = (addr.clone(), now.clone());
            std::thread::spawn(move || {
                use std::io::Write;
                let mut c = std::net::TcpStream::connect(&addr).unwrap();
                write!(
                    c,
                    "GET {}?name=raw&{}=60000 HTTP/1.1\r\nHost: x\r\nIf-None-Match: {e}\r\n\r\n",
                    wire::PATH_CHECKIN,
                    wire::QUERY_WAIT_MS
                )
                .unwrap();
                read_full_head(&mut c).to_ascii_lowercase()
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut busy = Vec::new();
    while busy.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no long-poll check-in past the cap was answered at once: all 8 connections held"
        );
        if let Some(i) = pending.iter().position(|h| h.is_finished()) {
            busy.push(pending.swap_remove(i).join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for head in &busy {
        assert!(head.starts_with("http/1.1 304"), "{head}");
        assert!(
            head.contains(&format!("{}: {}\r\n", wire::HEADER_HELD, wire::HELD_BUSY)),
            "{head}"
        );
        assert!(head.contains("retry-after: "), "{head}");
    }
    wait_held(&s, 6);
    // With the cap reached, another long-poll, a check-in and an admin write are answered;
    // each would wait for a held check-in to end (60 s) without the cap.
    let started = Instant::now();
    let (status, held, _, took) = held_checkin(&s.url, &now, 60_000);
    assert_eq!((status, held), (304, false));
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(checkin(&s, "newcomer").sync.interval_us, 600_000_000);
    put(&s, "k", "v");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "{took:?}");
    admin_post(
        &s,
        "/v1/admin/interval",
        serde_json::json!({ "interval": "5m" }),
    );
    for h in pending {
        let head = h.join().unwrap();
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }
}

#[test]
fn a_write_through_the_instance_that_holds_wakes_it_without_waiting_for_the_poll() {
    let dir = tempfile::tempdir().unwrap();
    // The watcher's poll set to 30 s: only the write's own wake-up can answer in time.
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "10m", "--long-poll-watch-poll", "30s"],
    );
    let before = etag(&s);
    let (url, e) = (s.url.clone(), before.clone());
    let waiting = std::thread::spawn(move || held_checkin(&url, &e, 50_000));
    wait_held(&s, 1);
    let changed = Instant::now();
    admin_post(
        &s,
        "/v1/admin/interval",
        serde_json::json!({ "interval": "5m" }),
    );
    let (status, held, tag, _) = waiting.join().unwrap();
    let took = changed.elapsed();
    assert_eq!((status, held), (200, true));
    assert_ne!(tag, before);
    // A third of the poll period: not a wake by the poll.
    assert!(
        took < Duration::from_secs(10),
        "answered {took:?} after the write"
    );
}

#[test]
fn held_check_ins_are_answered_with_the_rotated_table_when_a_rotation_falls_due_and_no_one_checks_in(
) {
    each_backend(rotated_while_held);
}

fn rotated_while_held(backend: common::postgres::Backend, db: &std::path::Path) {
    let s = Server::start(db, &["--interval", "5s"]);
    put(&s, "k", "v");
    // Check-ins from now on only held ones, which a rotation at T must answer.
    let probe = get(
        &format!("{}{}?name=probe", s.url, wire::PATH_CHECKIN),
        None,
        &[],
    );
    let table: wire::CheckinResponse = serde_json::from_slice(&probe.body).unwrap();
    let before = probe
        .headers
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let t = table.sync.activation_time_us;
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let (url, e) = (s.url.clone(), before.clone());
            std::thread::spawn(move || {
                let answer = held_checkin(&url, &e, 30_000);
                (answer, now_us())
            })
        })
        .collect();
    for w in waiting {
        let ((status, held, tag, _), at_us) = w.join().unwrap();
        assert_eq!(
            (status, held),
            (200, true),
            "not answered by the rotation at T"
        );
        assert_ne!(tag, before);
        let late_ms = (at_us - t) / 1000;
        println!("{backend:?}: answered {late_ms} ms after T");
        // Well before the hold's end (30 s) or the next T (5 s later).
        assert!(
            (-1_000..2_000).contains(&late_ms),
            "{backend:?}: answered {late_ms} ms from T"
        );
    }
}
