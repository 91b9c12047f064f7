//! The host as the unit of the farm (SPEC invariants 8 and 9, and the host cache's promises):
//! observer processes that share one host-cache directory are one host; each observer given
//! a directory of its own is a host of its own.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::observer::Observer;
use support::proxy::{Mode, Proxy};
use support::*;

use lockstep::wire::SyncTable;

/// A version of about `mb` MB: `mb` thousand keys of 1000-byte values.
fn publish_big(s: &Server, mb: usize, tag: &str) {
    let entries: Vec<serde_json::Value> = (0..mb * 1000)
        .map(|i| serde_json::json!({"key": format!("k{i:06}"), "value": format!("{tag}{}", "x".repeat(1000 - tag.len()))}))
        .collect();
    admin_post(
        s,
        "/v1/admin/import",
        serde_json::json!({ "entries": entries }),
    );
}

/// Proportional set size of a process, kB: shared pages count once across their sharers.
fn pss_kb(pid: u32) -> i64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn observers(url: &str, host: &Path, n: usize, key: &str) -> Vec<Observer> {
    (0..n)
        .map(|i| {
            Observer::start_with(
                url,
                &format!("w{i}"),
                key,
                120.0,
                None,
                &format!("cache_dir={}", host.display()),
            )
        })
        .collect()
}

fn role(o: &Observer) -> i64 {
    o.report().stat("role").unwrap_or(-1)
}

/// Waits until every observer reports a role, and returns them.
fn roles(os: &[Observer]) -> Vec<i64> {
    for o in os {
        o.wait_for(Duration::from_secs(10), |r| r.stat("role"))
            .expect("no STATS");
    }
    os.iter().map(role).collect()
}

/// The activation time (data-server µs) the rotation log gives `version`.
fn activated_at(s: &Server, version: u64) -> i64 {
    for _ in 0..500 {
        let found = admin_get(s, "/v1/admin/history")
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"].as_u64() == Some(version))
            .and_then(|v| v["activated_us"].as_i64());
        if let Some(t) = found {
            return t;
        }
        checkin(s, "judge");
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("version {version} never got an activation time");
}

fn version_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for server in std::fs::read_dir(dir).unwrap().flatten() {
        for f in std::fs::read_dir(server.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "lkv") {
                out.push(f.path());
            }
        }
    }
    out
}

#[test]
fn invariant_8_processes_of_one_host_hold_one_copy_and_the_host_downloads_each_version_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "1s", "--min-window", "500ms"],
    );
    let mb = 24;
    publish_big(&s, mb, "a");
    put(&s, "price", "p0");
    wait_active(&s, "price", "p0");
    let proxy = Proxy::start("127.0.0.1:0", &s.url, Mode::PassThrough);
    let host = own_host_cache("shared");
    let os = observers(&proxy.url, &host, 4, "price");
    for o in &os {
        o.wait_value("p0", Duration::from_secs(30));
    }
    put(&s, "price", "p1");
    for o in &os {
        o.wait_value("p1", Duration::from_secs(30));
    }
    let mut r = roles(&os);
    r.sort();
    assert_eq!(r, vec![1, 2, 2, 2], "one leader, three followers");

    // One download per version for the whole host, whole or as a delta.
    let downloads = proxy.transfers();
    assert!(
        downloads.values().all(|n| *n == 1),
        "a version was downloaded more than once by one host: {downloads:?}"
    );
    assert_eq!(downloads.len(), 2, "{downloads:?}");

    // One process checks in: over quiet cycles, no more check-ins than one client makes.
    let before = proxy.checkins();
    std::thread::sleep(Duration::from_secs(3));
    let per_cycle = (proxy.checkins() - before) as f64 / 3.0;
    eprintln!("check-ins per 1 s cycle for a host of 4 processes: {per_cycle:.1}");
    assert!(per_cycle <= 6.0, "{per_cycle} check-ins per cycle");

    // One copy in memory: the version file's pages are shared by the four processes.
    let size_kb = version_files(&host)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len() as i64 / 1024)
        .max()
        .unwrap();
    let total: i64 = os.iter().map(|o| pss_kb(o.pid())).sum();
    // Each process's own memory besides the version (the program, the library, buffers).
    let own_kb = 8 * 1024;
    eprintln!(
        "summed PSS of 4 processes: {total} kB for a {size_kb} kB version ({:.2}x)",
        total as f64 / size_kb as f64
    );
    assert!(
        total <= size_kb * 12 / 10 + 4 * own_kb,
        "4 processes hold {total} kB for a {size_kb} kB version"
    );
}

#[test]
fn a_process_opened_while_the_data_server_is_down_serves_the_hosts_last_active_version_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(
        &dir.path().join("db"),
        &["--interval", "1s", "--min-window", "500ms"],
    );
    put(&s, "price", "last");
    let active = wait_active(&s, "price", "last").active_version;
    let host = own_host_cache("outage");
    let mut first = observers(&s.url, &host, 1, "price").remove(0);
    first.wait_value("last", Duration::from_secs(10));
    s.kill9();
    // A follower started during the outage, while the leader lives...
    let t = Instant::now();
    let late = observers(&s.url, &host, 1, "price").remove(0);
    let ready = late.wait_ready();
    let took = t.elapsed();
    assert_eq!(ready, active);
    let c = late.wait_value("last", Duration::from_secs(5));
    assert_eq!(c.version, active);
    eprintln!("follower ready {took:?} after start, data server down");
    assert!(took < Duration::from_secs(2), "ready after {took:?}");
    // ...and, with the leader gone too, a new process that leads a host with no data server.
    first.kill9();
    let t = Instant::now();
    let alone = observers(&s.url, &host, 1, "price").remove(0);
    assert_eq!(alone.wait_ready(), active);
    let took = t.elapsed();
    eprintln!("new process ready {took:?} after start, no leader, data server down");
    assert!(took < Duration::from_secs(2), "ready after {took:?}");
    let stats = alone
        .wait_for(Duration::from_secs(10), |r| {
            (r.stat("role") == Some(1) && r.stat("failures").unwrap_or(0) > 0).then(|| r.clone())
        })
        .expect("the new process never took the lead and tried the data server");
    assert_eq!(stats.stat("unconfirmed"), Some(1), "{:?}", stats.stats);
    assert_eq!(stats.changes.last().unwrap().value, "last");
}

#[test]
fn a_killed_leader_is_replaced_and_no_activation_is_missed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "2s", "--min-window", "1s"],
    );
    put(&s, "price", "v0");
    wait_active(&s, "price", "v0");
    let host = own_host_cache("failover");
    let mut os = observers(&s.url, &host, 3, "price");
    for o in &os {
        o.wait_value("v0", Duration::from_secs(10));
    }
    roles(&os);
    let leader = os.iter().position(|o| role(o) == 1).expect("a leader");
    // Stage v1, and kill the leader between the rotation and the activation.
    put(&s, "price", "v1");
    let staged = os[leader]
        .wait_for(Duration::from_secs(10), |r| {
            r.stat("staged")
                .filter(|v| *v > r.stat("active").unwrap_or(0))
        })
        .expect("v1 never staged");
    let mut dead = os.remove(leader);
    dead.kill9();
    let table = checkin(&s, "judge").sync;
    assert_eq!(table.staged_version as i64, staged);
    let t = wall_us_to_mono_ns(table.activation_time_us);
    for o in &os {
        let c = o.wait_value("v1", Duration::from_secs(10));
        assert!(
            (c.first_new_ns - t).abs() < 20_000_000,
            "{} switched {} ms from the activation time",
            o.name,
            (c.first_new_ns - t) / 1_000_000
        );
    }
    // Another process leads within about a second, and drives the next change.
    let new_leader = os.iter().find(|o| {
        o.wait_for(Duration::from_secs(3), |r| {
            (r.stat("role") == Some(1)).then_some(())
        })
        .is_some()
    });
    assert!(new_leader.is_some(), "nobody took the lead");
    // Now kill the new leader at the activation boundary itself.
    put(&s, "price", "v2");
    let leader = os.iter().position(|o| role(o) == 1).expect("a leader");
    os[leader]
        .wait_for(Duration::from_secs(10), |r| {
            r.stat("staged")
                .filter(|v| *v > r.stat("active").unwrap_or(0))
        })
        .expect("v2 never staged");
    let table = checkin(&s, "judge").sync;
    sleep_until_us(table.activation_time_us);
    let mut dead = os.remove(leader);
    dead.kill9();
    let survivor = &os[0];
    let c = survivor.wait_value("v2", Duration::from_secs(10));
    // Judged against the time the data server activated it (a loaded machine may have moved
    // the rotation past the table read above; then the kill came before the activation).
    let activated = activated_at(&s, c.version);
    if activated != table.activation_time_us {
        eprintln!(
            "v2 was activated at {activated}, not at {}: the kill came {} ms before it",
            table.activation_time_us,
            (activated - table.activation_time_us) / 1000
        );
    }
    let t = wall_us_to_mono_ns(activated);
    assert!(
        (c.first_new_ns - t).abs() < 20_000_000,
        "the survivor switched {} ms from the activation time",
        (c.first_new_ns - t) / 1_000_000
    );
    wait_role(survivor, 1);
    put(&s, "price", "v3");
    survivor.wait_value("v3", Duration::from_secs(10));
}

#[test]
fn a_leader_killed_mid_download_leaves_no_torn_file_and_the_next_leader_fetches_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "2s", "--min-window", "1s"],
    );
    put(&s, "price", "v0");
    wait_active(&s, "price", "v0");
    let proxy = Proxy::start("127.0.0.1:0", &s.url, Mode::PassThrough);
    let host = own_host_cache("torn");
    let mut os = observers(&proxy.url, &host, 2, "price");
    for o in &os {
        o.wait_value("v0", Duration::from_secs(10));
    }
    roles(&os);
    let leader = os.iter().position(|o| role(o) == 1).expect("a leader");
    // The leader's next download stalls halfway; it dies there.
    proxy.set(Mode::StallBody);
    publish_big(&s, 4, "b");
    put(&s, "price", "v1");
    let rotation = wait_active(&s, "price", "v0");
    let _ = rotation;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Whole or as a delta: StallBody stalls both, and the leader tries the delta first.
    while proxy.transfers().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the leader never started the download"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut dead = os.remove(leader);
    dead.kill9();
    proxy.set(Mode::PassThrough);
    let o = &os[0];
    o.wait_value("v1", Duration::from_secs(20));
    assert_eq!(role(o), 1, "the survivor leads");
    for f in version_files(&host) {
        let bytes = std::fs::read(&f).unwrap();
        let aligned = lockstep::format::aligned_copy(&bytes);
        lockstep::format::validate(&aligned)
            .unwrap_or_else(|e| panic!("{} does not verify: {e}", f.display()));
    }
}

/// An observer that opens at once (not waiting for a version), reads for `seconds`, then
/// calls `sync_close` and exits: a worker recycled while it leads its host.
fn short_lived(url: &str, cache_dir: &Path, seconds: f64) -> Observer {
    short_lived_with(url, cache_dir, seconds, "")
}

fn short_lived_with(url: &str, cache_dir: &Path, seconds: f64, options: &str) -> Observer {
    Observer::start_with(
        url,
        "recycled",
        "k000000",
        seconds,
        None,
        &format!(
            "cache_dir={};bootstrap_wait_ms=0;allow_not_ready=1;{options}",
            cache_dir.display()
        ),
    )
}

/// Waits for `o` to close its handle and exit (at most `limit`); returns how long its
/// `sync_close` took.
fn close_took(o: &mut Observer, limit: Duration) -> Duration {
    let t = Instant::now();
    while o.is_running() {
        assert!(t.elapsed() < limit, "{} still runs after {limit:?}", o.name);
        std::thread::sleep(Duration::from_millis(10));
    }
    let ns = o
        .wait_for(Duration::from_secs(5), |r| r.close_ns)
        .unwrap_or_else(|| panic!("{} exited without closing its handle", o.name));
    Duration::from_nanos(ns as u64)
}

/// A data server whose active version is about 4 MB (value `big()` under k000000).
fn big_server(dir: &Path) -> (Server, SyncTable) {
    let s = Server::start(&dir.join("db"), &["--interval", "2s", "--min-window", "1s"]);
    publish_big(&s, 4, "b");
    let table = wait_active(&s, "k000000", &big());
    (s, table)
}

fn big() -> String {
    format!("b{}", "x".repeat(999))
}

#[test]
fn invariant_8_a_leader_closed_mid_download_finishes_it_for_the_host_and_its_successor_downloads_nothing(
) {
    let dir = tempfile::tempdir().unwrap();
    let (s, table) = big_server(dir.path());
    // About 10 s for the 4 MB: the handle closes 2 s in, and its thread is still receiving
    // when sync_close's usual 2 s bound runs out.
    let proxy = Proxy::start("127.0.0.1:0", &s.url, Mode::Throttle);
    let host = own_host_cache("closed-mid-download");
    let mut first = short_lived(&proxy.url, &host, 2.0);
    let took = close_took(&mut first, Duration::from_secs(40));
    println!("sync_close took {took:?}, waiting for the download");
    assert!(
        took > Duration::from_secs(2) && took < Duration::from_secs(15),
        "sync_close took {took:?}"
    );
    assert_eq!(
        proxy.transfers(),
        [(table.active_version, 1)].into(),
        "the leader's download"
    );
    let files = version_files(&host);
    assert_eq!(
        files.len(),
        1,
        "the leader published what it fetched: {files:?}"
    );
    let bytes = std::fs::read(&files[0]).unwrap();
    lockstep::format::validate(&lockstep::format::aligned_copy(&bytes)).unwrap();

    // Its successor in the host leads, checks in and downloads nothing.
    proxy.set(Mode::PassThrough);
    let next = one_key(&proxy.url, &host, "k000000", &big());
    wait_role(&next, 1);
    let checkins = proxy.checkins();
    let deadline = Instant::now() + Duration::from_secs(15);
    while proxy.checkins() < checkins + 2 {
        assert!(Instant::now() < deadline, "the successor does not check in");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(proxy.transfers(), [(table.active_version, 1)].into());
}

#[test]
fn a_leader_closed_mid_stalled_download_keeps_the_usual_close_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = big_server(dir.path());
    // Half the body, then nothing: a fetch that no longer advances is not waited for.
    let proxy = Proxy::start("127.0.0.1:0", &s.url, Mode::StallBody);
    let host = own_host_cache("closed-mid-stall");
    let mut first = short_lived(&proxy.url, &host, 2.0);
    let took = close_took(&mut first, Duration::from_secs(40));
    assert!(
        took < Duration::from_millis(3_000),
        "sync_close took {took:?}"
    );
    assert!(!proxy.transfers().is_empty(), "the download never started");
    assert!(version_files(&host).is_empty());
}

#[test]
fn a_close_during_a_hanging_checkin_after_a_finished_download_keeps_the_usual_close_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = big_server(dir.path());
    let proxy = Proxy::start("127.0.0.1:0", &s.url, Mode::PassThrough);
    let host = own_host_cache("closed-in-checkin");
    // Not long-polling, and with a long check-in timeout: the retrieval thread itself is
    // inside the check-in that hangs when the handle closes.
    let mut o = short_lived_with(
        &proxy.url,
        &host,
        6.0,
        "long_poll=0;checkin_timeout_ms=30000",
    );
    o.wait_value(&big(), Duration::from_secs(20));
    // The fetch is over; the next check-ins hang. Nothing is being fetched when it closes.
    proxy.set(Mode::StallCheckin);
    let took = close_took(&mut o, Duration::from_secs(40));
    assert!(
        took < Duration::from_millis(3_000),
        "sync_close took {took:?}"
    );
}

#[test]
fn no_download_begins_once_sync_close_has() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = big_server(dir.path());
    // The first check-in's answer arrives 1.5 s after it was sent, while sync_close (1 s in)
    // waits for the thread: it names a version the handle does not hold.
    let proxy = Proxy::start("127.0.0.1:0", &s.url, Mode::SlowCheckin);
    let host = own_host_cache("closing-no-download");
    let mut o = short_lived(&proxy.url, &host, 1.0);
    let took = close_took(&mut o, Duration::from_secs(40));
    assert!(proxy.checkins() >= 1, "the check-in never came");
    assert_eq!(
        proxy.transfers(),
        Default::default(),
        "a download began after sync_close (which took {took:?})"
    );
}

/// Starts one observer reading `key` on `cache_dir` and returns it once it serves `value`.
fn one_key(url: &str, cache_dir: &Path, key: &str, value: &str) -> Observer {
    let o = observers(url, cache_dir, 1, key).remove(0);
    o.wait_value(value, Duration::from_secs(15));
    o
}

/// Starts one observer on `cache_dir` and returns it once it serves `value`.
fn one(url: &str, cache_dir: &Path, value: &str) -> Observer {
    let o = observers(url, cache_dir, 1, "price").remove(0);
    o.wait_value(value, Duration::from_secs(15));
    o
}

fn wait_role(o: &Observer, want: i64) {
    o.wait_for(Duration::from_secs(10), |r| {
        (r.stat("role") == Some(want)).then_some(())
    })
    .unwrap_or_else(|| panic!("{} never had role {want}: {:?}", o.name, o.report().stats));
}

#[test]
fn a_planted_symlink_or_a_directory_others_control_is_refused_and_reads_go_on_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "500ms", "--min-window", "250ms"],
    );
    put(&s, "price", "safe");
    wait_active(&s, "price", "safe");
    let base = own_host_cache("hostile");
    std::fs::create_dir_all(&base).unwrap();

    // A symlink where the cache directory should be, pointing at someone else's directory.
    let elsewhere = base.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let link = base.join("link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    // A directory of another user, and one that others may write to.
    let foreign = base.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    let open = base.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();

    for bad in [&link, &foreign, &open] {
        let o = one(&s.url, bad, "safe");
        wait_role(&o, 3);
        put(&s, "price", "safe");
        assert!(
            std::fs::read_dir(bad).unwrap().next().is_none(),
            "{} was written to",
            bad.display()
        );
    }
    assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
}

#[test]
fn a_corrupt_version_file_is_never_mapped_but_removed_and_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "1s", "--min-window", "500ms"],
    );
    put(&s, "price", "intact");
    wait_active(&s, "price", "intact");
    let proxy = Proxy::start("127.0.0.1:0", &s.url, Mode::PassThrough);
    let host = own_host_cache("rot");
    let mut first = one(&proxy.url, &host, "intact");
    first.kill9();
    // The disk rots while nobody maps the file: one flipped byte, same name.
    let files = version_files(&host);
    assert_eq!(files.len(), 1, "{files:?}");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0x01;
    let tmp = files[0].with_extension("rotten");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &files[0]).unwrap();
    let downloads = proxy.downloads();

    let next = one(&proxy.url, &host, "intact");
    let r = next.report();
    assert!(
        r.changes.iter().all(|c| c.value == "intact"),
        "{:?}",
        r.changes
    );
    let again = proxy.downloads();
    assert!(
        again.values().sum::<u64>() > downloads.values().sum::<u64>(),
        "the corrupt version was not fetched again: {again:?}"
    );
    let bytes = std::fs::read(&files[0]).expect("the version file is back");
    lockstep::format::validate(&lockstep::format::aligned_copy(&bytes)).expect("and verifies");
}

#[test]
fn a_full_disk_degrades_to_process_memory_and_never_fails_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("db"),
        &["--interval", "1s", "--min-window", "500ms"],
    );
    publish_big(&s, 2, "c");
    put(&s, "price", "roomy");
    wait_active(&s, "price", "roomy");
    // A 1 MB disk for a 2 MB version.
    let mnt = own_host_cache("full");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(
        ok.success(),
        "mounting a tmpfs needs root (CI runs as root)"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let host = mnt.join("cache");
    std::fs::create_dir(&host).unwrap();
    std::fs::set_permissions(&host, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let os = observers(&s.url, &host, 2, "price");
    for o in &os {
        o.wait_value("roomy", Duration::from_secs(20));
    }
    let leader = os.iter().find(|o| role(o) == 1).expect("a leader");
    leader
        .wait_for(Duration::from_secs(10), |r| {
            r.stat("cache_failures").filter(|n| *n > 0)
        })
        .expect("the full disk was never reported");
    put(&s, "price", "still");
    for o in &os {
        o.wait_value("still", Duration::from_secs(20));
        assert!(
            o.report().changes.iter().all(|c| c.value != "-"),
            "a read failed"
        );
    }
}
