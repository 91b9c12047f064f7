//! The C ABI from C: misuse returns statuses (under valgrind, zero errors), and the shared
//! library exports nothing but `sync_*`.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;

use support::*;

#[test]
fn c_misuse_returns_statuses_under_valgrind() {
    let dir = tempfile::tempdir().unwrap();
    let server = fast_server(&dir.path().join("db"));
    put(&server, "price", "12.50");
    wait_active(&server, "price", "12.50");
    let exe = compile_c(&root().join("tests/c/misuse.c"), &["-O0"]);
    let out = Command::new("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--quiet",
        ])
        .arg(&exe)
        .arg(&server.url)
        .output()
        .expect("valgrind is installed (apt-get install valgrind)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "misuse.c under valgrind exited {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[test]
fn shared_library_exports_only_sync_symbols() {
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(library())
        .output()
        .expect("nm");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let symbols: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert!(symbols.contains(&"sync_open"));
    assert!(symbols.contains(&"sync_get"));
    assert!(symbols.contains(&"sync_active_version"));
    let foreign: Vec<&&str> = symbols.iter().filter(|s| !s.starts_with("sync_")).collect();
    assert!(foreign.is_empty(), "exports beyond sync_*: {foreign:?}");
}

#[test]
fn shared_library_stays_loaded_after_dlclose() {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(library())
        .output()
        .expect("readelf");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("NODELETE"),
        "built without -z nodelete:\n{text}"
    );
}

#[test]
fn c_example_prints_the_value_when_the_version_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = fast_server(&dir.path().join("db"));
    let exe = compile_c(&root().join("examples/c/watch.c"), &[]);
    let child = Command::new(&exe)
        .arg(&server.url)
        .arg("price:apple")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    put(&server, "price:apple", "1.25");
    wait_active(&server, "price:apple", "1.25");
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SIGTERM: the example closes its handle and exits 0.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("price:apple is not set"), "{text}");
    assert!(text.contains("price:apple = 1.25"), "{text}");
}

#[test]
fn load_open_close_unload_repeatedly() {
    let dir = tempfile::tempdir().unwrap();
    let server = fast_server(&dir.path().join("db"));
    put(&server, "price", "12.50");
    wait_active(&server, "price", "12.50");
    let exe = compile_c_with(&root().join("tests/c/reload.c"), &["-ldl"], false);
    let out = Command::new(&exe)
        .arg(library())
        .arg(&server.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A data server that requires `read` as its read token, holding price=12.50.
fn server_with_read_token(dir: &std::path::Path, read: &str) -> Server {
    let server = Server::start_env(
        &dir.join("db"),
        "127.0.0.1:0",
        &["--interval", "200ms", "--min-window", "100ms"],
        &[("LOCKSTEP_READ_TOKEN", read)],
    );
    put(&server, "price", "12.50");
    server
}

fn run_c(exe: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(exe)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} exited {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        exe.display(),
        out.status.code()
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    stdout
}

#[test]
fn c_a_refused_token_is_unauthorized_and_a_failure_detail_never_goes_stale() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_read_token(dir.path(), "read-secret");
    let exe = compile_c(&root().join("tests/c/auth.c"), &[]);
    run_c(&exe, &[&server.url, "read-secret"], &[]);
}

/// The C programs built with AddressSanitizer and UndefinedBehaviorSanitizer (beside the
/// valgrind run): any out-of-bounds access, use after free or UB across the ABI fails them.
#[test]
fn c_programs_pass_under_address_and_undefined_sanitizers() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_read_token(dir.path(), "read-secret");
    let open = fast_server(&dir.path().join("open-db"));
    put(&open, "price", "12.50");
    wait_active(&open, "price", "12.50");
    let flags = [
        "-O1",
        "-fsanitize=address,undefined",
        "-fno-omit-frame-pointer",
    ];
    // The library's own allocations live as long as the process on purpose (-z nodelete,
    // thread-locals of threads that outlive main): leaks are valgrind's job, not ASan's.
    let env = [
        ("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=1"),
        ("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1"),
    ];
    let misuse = compile_c(&root().join("tests/c/misuse.c"), &flags);
    run_c(&misuse, &[&open.url], &env);
    let auth = compile_c(&root().join("tests/c/auth.c"), &flags);
    run_c(&auth, &[&server.url, "read-secret"], &env);
    let covered = [
        "misuse", "auth", "snapshot", "fork", "host", "observer", "reload",
    ];
    for entry in std::fs::read_dir(root().join("tests/c")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let stem = name.strip_suffix(".c").unwrap_or(&name);
        assert!(
            covered.contains(&stem),
            "tests/c/{name} does not run under the sanitizers here"
        );
    }

    // reload.c: dlopen, use, close and dlclose the library again and again
    // (it reads price=12.50, so before the edits below).
    let mut reload_flags = flags.to_vec();
    reload_flags.push("-ldl");
    let reload = compile_c_with(&root().join("tests/c/reload.c"), &reload_flags, false);
    let lib = library();
    finished(
        sanitized(&reload, &[lib.to_str().unwrap(), &open.url], &env),
        "reload.c",
    );

    // snapshot.c: pinned snapshots while versions activate under it.
    put(&open, "a", "0:a");
    put(&open, "b", "0:b");
    wait_active(&open, "a", "0:a");
    let snapshot = compile_c(&root().join("tests/c/snapshot.c"), &flags);
    let child = sanitized(&snapshot, &[&open.url, "3"], &env);
    for i in 1..=12 {
        let (a, b) = (format!("{i}:a"), format!("{i}:b"));
        let entries = serde_json::json!({"entries": [
            {"key": "a", "value": a}, {"key": "b", "value": b},
        ]});
        admin_post(&open, "/v1/admin/import", entries);
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
    let text = finished(child, "snapshot.c");
    let nums: Vec<u64> = text
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(nums.len() == 3 && nums[0] > 0 && nums[2] == 0, "{text}");

    // fork.c: a handle armed with a staged version, then fork (ASan follows the child).
    let fork = compile_c(&root().join("tests/c/fork.c"), &flags);
    let mut child = sanitized(&fork, &[&open.url, "price", "cache_dir="], &env);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().expect("fork.c printed nothing").unwrap();
    assert!(first.starts_with("READY"), "{first}");
    put(&open, "price", "13.00");
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let text = finished(child, "fork.c");
    assert!(
        rest.len() == 3 && rest[0].starts_with("ARMED") && rest[2].ends_with(" 13.00"),
        "{rest:?}{text}"
    );

    // host.c: several handles on one host cache, read in a loop.
    let host = compile_c(&root().join("tests/c/host.c"), &flags);
    let cache = own_host_cache("sanitizers");
    let options = format!(
        "url={};name=asan-host;cache_dir={}",
        open.url,
        cache.display()
    );
    let text = finished(
        sanitized(&host, &[&options, "price", "2", "3"], &env),
        "host.c",
    );
    assert!(
        text.contains("value=13.00") && text.contains("DONE"),
        "{text}"
    );

    // observer.c: the read loop, through an activation.
    let observer = compile_c(&root().join("tests/c/observer.c"), &flags);
    let mut child = sanitized(&observer, &[&open.url, "asan", "price", "4"], &env);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().expect("observer.c printed nothing").unwrap();
    assert!(first.starts_with("READY"), "{first}");
    put(&open, "price", "14.00");
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    finished(child, "observer.c");
    assert!(
        rest.iter()
            .any(|l| l.starts_with("CHANGE ") && l.contains(" 14.00 "))
            && rest.last().is_some_and(|l| l.starts_with("DONE ")),
        "{rest:?}"
    );
}

/// Starts a sanitized C program with its stdout piped.
fn sanitized(exe: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    Command::new(exe)
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a sanitized program; its exit must be clean. Returns what is left of its stdout.
fn finished(child: std::process::Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} exited {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
