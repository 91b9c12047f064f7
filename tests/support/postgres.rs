//! A throwaway PostgreSQL for tests, and the backends a data-server test runs against.
//!
//! The first test of a process that asks for a database starts one cluster for the whole
//! process (`initdb` and `pg_ctl` from Debian's `postgresql` package, as the `postgres` user
//! when running as root, in a temporary directory, on a free port, `fsync=off`: the tests kill
//! data servers, never the cluster's machine) and gives every test a database of its own. A
//! watchdog stops the cluster and removes its directory when the test process exits.
//!
//! Tests against PostgreSQL are skipped, with a loud message, only when
//! `LOCKSTEP_PG_TESTS=off`; anywhere else a missing PostgreSQL fails them with what to install.
//!
//! Used by the root test suite (`mod support`) and by `server/tests` (by `#[path]`), so it
//! needs nothing but the standard library and the `psql`/`pg_ctl` programs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// The database a data server under test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

    /// A new, empty database for one test: a file in `dir`, or a fresh PostgreSQL database.
    /// `None` when PostgreSQL tests are switched off (the skip has been announced).
    pub fn database(self, dir: &Path) -> Option<PathBuf> {
        match self {
            Backend::Sqlite => Some(dir.join("db")),
            Backend::Postgres => cluster().map(|c| PathBuf::from(c.new_database())),
        }
    }
}

/// Runs `body` once per backend, saying which; skips PostgreSQL (loudly) when it is off.
pub fn each_backend(body: impl Fn(Backend, &Path)) {
    for backend in Backend::ALL {
        let dir = tempfile::tempdir().unwrap();
        let Some(db) = backend.database(dir.path()) else {
            continue;
        };
        eprintln!("--- backend {backend:?}: {}", db.display());
        body(backend, &db);
    }
}

/// [`each_backend`] for a test whose timing must not suffer from another such test running
/// beside it (tests of activation instants, or herds of check-ins): they take turns.
pub fn each_backend_alone(body: impl Fn(Backend, &Path)) {
    static TURN: Mutex<()> = Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    each_backend(body)
}

pub struct Cluster {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    next_db: AtomicU32,
    /// Serializes restarts.
    control: Mutex<()>,
}

fn off() -> bool {
    std::env::var("LOCKSTEP_PG_TESTS").is_ok_and(|v| v == "off")
}

/// The process's cluster, started on first use; `None` when PostgreSQL tests are off.
pub fn cluster() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| {
            if off() {
                eprintln!(
                    "\n!!! LOCKSTEP_PG_TESTS=off: SKIPPING every test against PostgreSQL !!!\n"
                );
                None
            } else {
                Some(Cluster::start())
            }
        })
        .as_ref()
}

fn pg_bindir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed: run scripts/setup.sh (Debian's postgresql package), \
             or set LOCKSTEP_PG_TESTS=off to skip the tests against it"
        )
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the cluster's owner: `postgres` when we are root (PostgreSQL refuses to
/// run as root), else ourselves.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    fn start() -> Cluster {
        let bin = pg_bindir();
        static CLUSTERS: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lockstep-pg-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:").arg(&dir);
                    c
                },
                "chown the cluster directory",
            );
        }
        let data = dir.join("data");
        let mut initdb = as_owner(&bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb");
        let port = free_port();
        let cluster = Cluster {
            port,
            dir,
            bin,
            next_db: AtomicU32::new(0),
            control: Mutex::new(()),
        };
        cluster.pg_ctl(&["start", "-w", "-t", "60"]);
        cluster.watchdog();
        cluster
    }

    fn pg_ctl(&self, args: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            self.port,
            self.dir.display()
        );
        let mut c = as_owner(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-o", &options])
            .args(args);
        run(c, &format!("pg_ctl {}", args.join(" ")));
    }

    /// Stops the cluster and removes its directory once this test process has exited.
    fn watchdog(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {owner}{pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            owner = if is_root() {
                "runuser -u postgres -- "
            } else {
                ""
            },
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.dir.join("data").display(),
            dir = self.dir.display(),
        );
        // Detached (the shell that starts it returns at once), so it outlives this process.
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "setsid sh -c '{script}' </dev/null >/dev/null 2>&1 &"
            ))
            .status()
            .expect("start the cluster's watchdog");
        assert!(status.success(), "the cluster's watchdog did not start");
    }

    /// Runs SQL on database `db` as the superuser.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A new empty database; returns its URL.
    pub fn new_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{n}");
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A cluster of the caller's own, for a test that stops it; `None` when PostgreSQL tests
    /// are off. Stopped and removed when dropped (or, failing that, when the process exits).
    pub fn own() -> Option<Cluster> {
        cluster()?;
        Some(Cluster::start())
    }

    /// Stops the cluster (fast shutdown: every session is cut).
    pub fn stop(&self) {
        let _guard = self.control.lock().unwrap_or_else(|e| e.into_inner());
        self.pg_ctl(&["stop", "-w", "-m", "fast"]);
    }

    /// Starts the stopped cluster again, on the same port.
    pub fn restart(&self) {
        let _guard = self.control.lock().unwrap_or_else(|e| e.into_inner());
        self.pg_ctl(&["start", "-w", "-t", "60"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut c = as_owner(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.dir.join("data"))
            .args(["stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = c.status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
