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
}
