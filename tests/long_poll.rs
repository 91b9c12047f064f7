//! Long-poll check-ins (issue 14) with real processes: observer clients (liblockstep.so in
//! processes of their own) and in-process handles against a real `lockstep serve`. A client
//! with nothing to do waits in a check-in the data server holds; a change of the sync table
//! answers it at once, and its answer is never a clock sample.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::observer::Observer;
use support::proxy::{Mode, Proxy, HELD_SKEW_US};
use support::*;

/// `lockstep_held_checkins` as the data server reports it now.
fn held(s: &Server) -> i64 {
    let a = get(&format!("{}/metrics", s.url), None, &[]);
    let text = String::from_utf8_lossy(&a.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("lockstep_held_checkins "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no lockstep_held_checkins in /metrics:\n{text}"))
}

/// Waits (up to 20 s: a client long-polls after its first ordinary cycle) until the data
/// server holds `n` check-ins.
fn wait_held(s: &Server, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while held(s) != n {
        assert!(
            Instant::now() < deadline,
            "the data server holds {} check-ins, not {n}",
            held(s)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A change of the sync table: the interval, alternately 10 and 5 minutes (each moves the
/// table's interval, so its ETag).
fn change_interval(s: &Server, round: usize) {
    let interval = if round.is_multiple_of(2) { "5m" } else { "10m" };
    admin_post(
        s,
        "/v1/admin/interval",
        serde_json::json!({ "interval": interval }),
    );
}

/// A data server with a 10-minute interval whose version active and staged holds k=one
/// (reached with a 1 s interval first).
fn slow_server(dir: &std::path::Path) -> Server {
    slow_server_with(dir, &[])
}

fn slow_server_with(dir: &std::path::Path, extra: &[&str]) -> Server {
    let args: Vec<&str> = ["--interval", "1s"].iter().chain(extra).copied().collect();
    let s = Server::start(&dir.join("lp.db"), &args);
    put(&s, "k", "one");
    wait_active(&s, "k", "one");
    admin_post(
        &s,
        "/v1/admin/interval",
        serde_json::json!({ "interval": "10m" }),
    );
    // The activation the 1 s grid had set stays; once it has passed, the next is on the
    // 10-minute grid and nothing changes the table unless a test does.
    let t = checkin(&s, "probe").sync.activation_time_us;
    wait_rotation_past(&s, t);
    s
}

#[test]
fn held_clients_hear_an_interval_change_and_a_rollback_within_a_second_not_a_poll_period() {
    let dir = tempfile::tempdir().unwrap();
    let s = slow_server(dir.path());
    // A 10-minute interval: between changes a client checks in every 15 s, so hearing a
    // change within a second or two is the long-poll's doing.
    let observers: Vec<Observer> = (0..3)
        .map(|i| Observer::start(&s.url, &format!("lp-hear-{i}"), "k", 120.0, None))
        .collect();
    for o in &observers {
        o.wait_ready();
    }
    wait_held(&s, 3);
    for round in 0..4 {
        // Let each hold begin again after the last answer.
        wait_held(&s, 3);
        let changed_us = now_us();
        let started = Instant::now();
        if round == 3 {
            // A rollback restages: a new staged version (without k) the clients download.
            let before = checkin(&s, "probe").sync.staged_version;
            admin_post(
                &s,
                "/v1/admin/rollback",
                serde_json::json!({ "version": 1 }),
            );
            assert_ne!(checkin(&s, "probe").sync.staged_version, before);
        } else {
            change_interval(&s, round);
        }
        for o in &observers {
            o.wait_for(Duration::from_secs(5), |r| {
                r.stat("checkin_us").filter(|&t| t >= changed_us)
            })
            .unwrap_or_else(|| {
                panic!(
                    "{} did not hear the change of round {round} within 5 s (its poll period is 15 s)",
                    o.name
                )
            });
        }
        println!(
            "round {round}: all {} held clients heard the change after {:?}",
            observers.len(),
            started.elapsed()
        );
    }
}

#[test]
fn a_held_answer_is_never_a_clock_sample() {
    let dir = tempfile::tempdir().unwrap();
    let s = slow_server(dir.path());
    // Between the client and the data server, a proxy that moves the clock of held answers
    // 5 s ahead; ordinary answers pass untouched.
    let proxy = Proxy::start("127.0.0.1:0", &s.url, Mode::SkewHeld);
    let o = Observer::start(&proxy.url, "lp-clock", "k", 120.0, None);
    o.wait_ready();
    wait_held(&s, 1);
    let before = o
        .wait_for(Duration::from_secs(5), |r| r.stat("offset_us"))
        .unwrap();
    assert!(
        before.abs() < 1_000_000,
        "the offset is {before} µs before any held answer"
    );
    let since = o.report().stats_lines;
    for round in 0..4 {
        wait_held(&s, 1);
        let changed_us = now_us();
        change_interval(&s, round);
        // The held answer's (skewed) server time is what the client records as its last
        // check-in: proof that it took the held answer.
        o.wait_for(Duration::from_secs(5), |r| {
            r.stat("checkin_us")
                .filter(|&t| t >= changed_us + HELD_SKEW_US / 2)
        })
        .unwrap_or_else(|| panic!("round {round}: the held answer never reached the client"));
    }
    // Every STATS line (5 a second) since the first held answer: a held sample, fresh and
    // with a short round trip once the hold is taken out, would be the best for a while.
    std::thread::sleep(Duration::from_secs(3));
    let offsets = o.report().stat_history("offset_us", since);
    assert!(offsets.len() > 10, "too few STATS lines: {offsets:?}");
    let worst = offsets.iter().map(|a| (a - before).abs()).max().unwrap();
    assert!(
        worst < HELD_SKEW_US / 10,
        "held answers moved the clock offset from {before} µs by up to {worst} µs"
    );
}

#[test]
fn one_process_of_a_host_waits_for_the_whole_host() {
    let dir = tempfile::tempdir().unwrap();
    let s = slow_server(dir.path());
    let cache = own_host_cache("lp-host");
    let options = format!("cache_dir={}", cache.display());
    let observers: Vec<Observer> = (0..4)
        .map(|i| Observer::start_with(&s.url, &format!("lp-host-{i}"), "k", 60.0, None, &options))
        .collect();
    for o in &observers {
        o.wait_ready();
    }
    wait_held(&s, 1);
    // Over a few seconds (and one change, after which the leader waits again), never more
    // than the leader's one.
    let mut most = 0;
    let until = Instant::now() + Duration::from_secs(4);
    let mut changed = false;
    while Instant::now() < until {
        most = most.max(held(&s));
        if !changed && until - Instant::now() < Duration::from_secs(2) {
            change_interval(&s, 0);
            changed = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(most, 1, "{most} check-ins held at once for one host");
    let roles: Vec<i64> = observers
        .iter()
        .map(|o| o.report().stat("role").unwrap())
        .collect();
    assert_eq!(
        roles.iter().filter(|&&r| r == 1).count(),
        1,
        "roles {roles:?}"
    );
}

#[test]
fn long_poll_off_sleeps_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let s = slow_server(dir.path());
    let o = Observer::start_with(&s.url, "lp-off", "k", 30.0, None, "long_poll=0");
    o.wait_ready();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(held(&s), 0, "a client with long_poll=0 is held");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Names of this process's threads that belong to lockstep handles.
fn lockstep_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .filter(|c| c.starts_with("lockstep-"))
        .collect()
}

#[test]
fn closing_a_handle_does_not_wait_for_its_held_check_in_and_nothing_is_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = slow_server(dir.path());
    let cache = own_host_cache("lp-close");
    let client = lockstep::client::Client::open(&format!(
        "url={};name=lp-close;cache_dir={}",
        s.url,
        cache.display()
    ))
    .unwrap();
    wait_held(&s, 1);
    let started = Instant::now();
    drop(client);
    let took = started.elapsed();
    println!("closing took {took:?}");
    // Closing waits up to 2 s for a thread inside a request (a download); a held check-in,
    // held here for 15 s, is not one: the retrieval thread leaves at once.
    assert!(
        took < Duration::from_millis(500),
        "closing a handle with a held check-in took {took:?}"
    );
    // The held request's own thread ends when its request does: a change answers it now.
    change_interval(&s, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lockstep_threads().is_empty() {
        assert!(
            Instant::now() < deadline,
            "threads left after close and the held answer: {:?}",
            lockstep_threads()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_held(&s, 0);
}

/// Check-ins answered 304 under `route` (`/v1/checkin`, or `/v1/checkin (held)`).
fn not_modified_count(s: &Server, route: &str) -> u64 {
    let a = get(&format!("{}/metrics", s.url), None, &[]);
    String::from_utf8_lossy(&a.body)
        .lines()
        .find(|l| {
            l.starts_with("lockstep_http_request_duration_seconds_count")
                && l.contains(&format!("route=\"{route}\""))
                && l.contains("status=\"304\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_client_refused_a_hold_because_the_server_is_busy_long_polls_again_at_its_next_check_in() {
    let dir = tempfile::tempdir().unwrap();
    let s = slow_server_with(dir.path(), &["--max-held-checkins", "1"]);
    // Built before the slot's time starts.
    support::observer::observer_exe();
    let etag = get(&format!("{}/v1/checkin?name=probe", s.url), None, &[])
        .headers
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    // The one hold the server allows, for 28 s (the test agent gives up at 30 s).
    let slot_taken = Instant::now();
    let url = format!("{}/v1/checkin?name=slot&wait_ms=28000", s.url);
    let slot = std::thread::spawn(move || get(&url, None, &[("If-None-Match", &etag)]).status);
    wait_held(&s, 1);
    let o = Observer::start(&s.url, "lp-busy", "k", 60.0, None);
    o.wait_ready();
    // Its long-poll after the first cycle was answered at once: the server was busy.
    let deadline = Instant::now() + Duration::from_secs(15);
    while not_modified_count(&s, "/v1/checkin") == 0 {
        assert!(
            Instant::now() < deadline,
            "the client never long-polled ({:?} since the slot was taken)",
            slot_taken.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "refused as busy {:?} after the slot was taken",
        slot_taken.elapsed()
    );
    assert_eq!(slot.join().unwrap(), 304);
    // Its next check-in comes within 15 s (a quarter of the interval, capped); after it, it
    // long-polls again. Taken for a server without long-poll, it would sleep for minutes.
    let freed = Instant::now();
    let deadline = freed + Duration::from_secs(40);
    while held(&s) != 1 {
        assert!(
            Instant::now() < deadline,
            "a client refused a hold as busy did not long-poll again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("held again {:?} after the slot was freed", freed.elapsed());
}

#[test]
fn when_the_leader_dies_its_successor_long_polls_and_the_host_still_has_one_held_check_in() {
    let dir = tempfile::tempdir().unwrap();
    let s = slow_server(dir.path());
    let cache = own_host_cache("lp-demote");
    let options = format!("cache_dir={}", cache.display());
    let mut observers: Vec<Observer> = (0..3)
        .map(|i| Observer::start_with(&s.url, &format!("lp-demote-{i}"), "k", 60.0, None, &options))
        .collect();
    for o in &observers {
        o.wait_ready();
    }
    wait_held(&s, 1);
    let leader = |observers: &[Observer]| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leaders: Vec<usize> = (0..observers.len())
                .filter(|&i| observers[i].report().stat("role") == Some(1))
                .collect();
            if leaders.len() == 1 {
                return leaders[0];
            }
            assert!(Instant::now() < deadline, "leaders: {leaders:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first = leader(&observers);
    observers[first].kill9();
    observers.remove(first);
    // A follower takes over and waits for the host in its turn; the dead leader's hold ends
    // with its connection.
    let next = leader(&observers);
    wait_held(&s, 1);
    let mut most = 0;
    let until = Instant::now() + Duration::from_secs(4);
    let mut changed = false;
    while Instant::now() < until {
        most = most.max(held(&s));
        if !changed && until - Instant::now() < Duration::from_secs(2) {
            change_interval(&s, 0);
            changed = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(most, 1, "{most} check-ins held at once for one host");
    wait_held(&s, 1);
    assert_eq!(observers[next].report().stat("role"), Some(1));
}

/// A relay to `upstream` that, while `old` is set, drops `wait_ms` from check-ins, as a data
/// server from before long-poll would ignore it (a 304 at once, never held).
fn old_server_relay(upstream: &str, old: std::sync::Arc<std::sync::atomic::AtomicBool>) -> String {
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let (upstream, old) = (upstream.clone(), old.clone());
            std::thread::spawn(move || {
                let Some((path, headers)) = support::proxy::read_request(&stream) else {
                    return;
                };
                let path = match old.load(Ordering::Relaxed) {
                    true => path.replace(&format!("{}=", lockstep::wire::QUERY_WAIT_MS), "x="),
                    false => path,
                };
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(90)))
                    .build()
                    .into();
                let mut req = agent.get(&format!("{upstream}{path}"));
                for (k, v) in &headers {
                    if k.eq_ignore_ascii_case("if-none-match")
                        || k.eq_ignore_ascii_case("authorization")
                    {
                        req = req.header(k, v);
                    }
                }
                let Ok(mut resp) = req.call() else { return };
                let headers: Vec<(String, String)> = resp
                    .headers()
                    .iter()
                    .filter(|(k, _)| {
                        let k = k.as_str();
                        k.starts_with("x-lockstep") || k == "etag" || k == "content-type"
                    })
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                    .collect();
                let body = resp
                    .body_mut()
                    .with_config()
                    .limit(1 << 30)
                    .read_to_vec()
                    .unwrap_or_default();
                support::proxy::respond(&mut stream, resp.status().as_u16(), &headers, &body);
            });
        }
    });
    url
}

#[test]
fn a_server_that_answered_a_long_poll_at_once_is_long_polled_again_after_a_while() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("lp.db"), &["--interval", "8s"]);
    put(&s, "k", "one");
    wait_active(&s, "k", "one");
    let old = std::sync::Arc::new(AtomicBool::new(true));
    let relay = old_server_relay(&s.url, old.clone());
    let o = Observer::start(&relay, "lp-old", "k", 120.0, None);
    o.wait_ready();
    // Through a server that predates long-poll: slept for, never held.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(held(&s), 0, "held through a server without long-poll");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Upgraded: long-polled again within a few check-in periods (4 × 8 s), not never.
    old.store(false, Ordering::Relaxed);
    let upgraded = Instant::now();
    let deadline = upgraded + Duration::from_secs(60);
    while held(&s) == 0 {
        assert!(
            Instant::now() < deadline,
            "the client never long-polled the upgraded server"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "long-polled again {:?} after the upgrade",
        upgraded.elapsed()
    );
}
