//! The demo's processes: one data server and N web servers, all children of the driver that
//! die with it, plus the optional CPU load of the benchmark.
//!
//! Each web server's stdout is read by a thread that parses it into [`Event`]s, so the driver
//! only ever sees typed events (or the line that failed to parse).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use super::event::Event;

/// Wall-clock skews of the web servers, seconds: hours, seconds and a day off.
const SKEWS: &[i64] = &[0, -7_200, 37, 86_400, -300, 10_800, -45, 600];

pub fn skew_of(i: usize) -> i64 {
    SKEWS[i % SKEWS.len()] + (i / SKEWS.len()) as i64 * 13
}

pub fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

pub fn library_path() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("LOCKSTEP_LIBRARY") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let beside = exe.with_file_name("liblockstep.so");
    if beside.exists() {
        Ok(beside)
    } else {
        Err(format!(
            "liblockstep.so not found next to {}: build it with 'cargo build --release -p lockstep' or set LOCKSTEP_LIBRARY",
            exe.display()
        ))
    }
}

/// Children die with the driver, even if it is killed.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// A child process, killed and reaped when dropped.
pub struct Proc(Child);

impl Proc {
    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `lockstep serve` on a fresh database; returns it and the URL it listens on.
pub fn start_data_server(
    exe: &Path,
    db: &Path,
    interval: &str,
    token: &str,
) -> Result<(Proc, String), String> {
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--db")
        .arg(db)
        .args(["--listen", "127.0.0.1:0", "--interval", interval])
        .env("LOCKSTEP_ADMIN_TOKEN", token)
        .env("LOCKSTEP_LOG", "warn")
        .stdout(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut server = Proc(
        cmd.spawn()
            .map_err(|e| format!("cannot start the data server: {e}"))?,
    );
    let mut first = String::new();
    let stdout = server.0.stdout.take().expect("stdout is piped");
    BufReader::new(stdout)
        .read_line(&mut first)
        .map_err(|e| e.to_string())?;
    let url = first
        .trim()
        .strip_prefix("lockstep: listening on ")
        .ok_or_else(|| format!("data server did not start: {first:?}"))?
        .to_owned();
    Ok((server, url))
}

/// An event from web server `.0`, or the line it sent that is not one.
pub type FromWeb = (usize, Result<Event, String>);

/// How to start the web servers.
pub struct WebLaunch<'a> {
    pub exe: &'a Path,
    pub library: &'a Path,
    pub url: &'a str,
    pub keys: &'a str,
    /// libfaketime to skew wall clocks with; `None`: the library's `clock_skew_us` hook.
    pub faketime: Option<&'a Path>,
    /// Where each web server gets a host cache of its own.
    pub hosts_dir: &'a Path,
}

/// Starts web server `i` (named `web-i`, skewed by [`skew_of`]) and a thread that forwards
/// its events to `tx`.
pub fn start_web(launch: &WebLaunch, i: usize, tx: mpsc::Sender<FromWeb>) -> Result<Proc, String> {
    let skew = skew_of(i);
    let name = format!("web-{i}");
    let mut cmd = Command::new(launch.exe);
    cmd.arg("demo-web")
        .args(["--url", launch.url, "--name", &name, "--keys", launch.keys])
        .arg("--library")
        .arg(launch.library)
        // Each web server is a host of its own, as in a farm: processes sharing a host cache
        // would follow one leader's schedule, clock offset and all, and the demo would show
        // one host's activation, not a farm's.
        .env("LOCKSTEP_CACHE_DIR", launch.hosts_dir.join(&name))
        .stdout(Stdio::piped());
    match launch.faketime {
        Some(lib) => {
            cmd.env("LD_PRELOAD", lib)
                .env("FAKETIME", format!("{skew:+}"))
                // Activations run on CLOCK_MONOTONIC; only the wall clock is the skewed one.
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        None => {
            cmd.args(["--clock-skew-us", &(skew * 1_000_000).to_string()]);
        }
    }
    die_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start web server {name}: {e}"))?;
    let out = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let event = line
                .parse::<Event>()
                .map_err(|e| format!("{e}, in the line {line:?}"));
            if tx.send((i, event)).is_err() {
                break;
            }
        }
    });
    Ok(Proc(child))
}

/// Spinning threads that keep every CPU busy until dropped (for the benchmark). They live in
/// the driver so that they end with it, whatever way it ends.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub threads: usize,
}

impl Load {
    pub fn start() -> Load {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..threads {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            });
        }
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
