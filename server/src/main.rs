//! `lockstep`: the data server (`lockstep serve`) and its management CLI.

mod api;
mod audit;
mod background;
mod backup;
mod blobs;
mod cli;
mod clock;
mod deltas;
mod demo;
mod downloads;
mod farm;
mod farm_cap;
mod listen;
mod metrics;
mod proof;
mod rotation;
mod store;
mod sync_cache;
mod tls;
mod tokens;
mod ui;
mod vacuum;
mod version_cache;
mod waiters;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::cli::{Cli, CliError};

/// The data server's default address; the CLI and client library use the same default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";

/// A new database's interval when `serve` is given none.
const DEFAULT_INTERVAL_US: i64 = 600_000_000;

#[derive(Parser)]
#[command(
    name = "lockstep",
    version,
    about = "Lockstep data server and management CLI"
)]
struct Args {
    /// Data server URL for the management commands.
    #[arg(
        long,
        global = true,
        env = "LOCKSTEP_SERVER",
        default_value = "http://127.0.0.1:7420"
    )]
    server: String,
    /// Verify an https:// data server against the authorities in this PEM file instead of
    /// the system's roots (which honour SSL_CERT_FILE).
    #[arg(long, global = true, env = "LOCKSTEP_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    json: bool,
    /// How log lines on stderr look: text (coloured only on a terminal) or json (one
    /// object a line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Where the state lives (created and migrated when needed): a SQLite file (a path or
    /// sqlite:PATH), or a PostgreSQL database (postgres://user@host:port/db) that several
    /// data servers may share.
    #[arg(long, env = "LOCKSTEP_DB", default_value = "lockstep.db")]
    db: String,
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "LOCKSTEP_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Time between activations, 100ms to 1d, like 500ms, 30s or 10m. Default for a new
    /// database: 10m; given for an existing one, it changes it (as `lockstep interval` does).
    #[arg(long)]
    interval: Option<String>,
    /// Least time a rotation leaves clients to download before the activation it schedules,
    /// 10ms up to the interval. Default: half the interval for a new database or a changed
    /// interval; otherwise the database keeps its own.
    #[arg(long)]
    min_window: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM); SIGHUP loads it again, for new
    /// connections. Needs --tls-key.
    #[arg(long, env = "LOCKSTEP_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "LOCKSTEP_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Named, scoped tokens, one a line: NAME SCOPE SECRET, SCOPE read or admin, SECRET
    /// plain or sha256:<hex>; '#' starts a comment. SIGHUP reloads it (a file that does not
    /// parse leaves the tokens as they were). Adds to the single-token options below.
    #[arg(long, env = "LOCKSTEP_TOKENS")]
    tokens: Option<PathBuf>,
    /// File holding the admin bearer token (or set LOCKSTEP_ADMIN_TOKEN); it is the token
    /// named 'admin'.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// File holding the read token clients must send (or set LOCKSTEP_READ_TOKEN); it is
    /// the token named 'read'. Without any read token, reads are open.
    #[arg(long)]
    read_token_file: Option<PathBuf>,
    /// Versions whose content is kept, newest first, besides the active and staged ones and
    /// those younger than --keep-for; older ones keep only their history row.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    keep_versions: u64,
    /// Versions younger than this keep their content, whatever --keep-versions says.
    #[arg(long, default_value = "1h")]
    keep_for: String,
    /// A farm member silent this long leaves the farm view (it is shown stale, greyed, after a
    /// few missed check-ins first); at least that stale time plus one check-in period.
    #[arg(long, default_value = "10m")]
    farm_expiry: String,
    /// A rotation that finds the next version not built ahead in time encodes production
    /// itself only if the last build took less than this (0: never); otherwise it keeps the
    /// version that becomes active as the staged one and restages production right after the
    /// activation time, so no check-in waits on an encode.
    #[arg(long, default_value = "25ms")]
    inline_encode_max: String,
    /// Versions younger than this keep their change set (the keys they changed), so history,
    /// diff and rollback reach them after their content is dropped; older ones keep only their
    /// history row.
    #[arg(long, default_value = "30d")]
    keep_changes_for: String,
    /// Largest key, bytes.
    #[arg(long, default_value_t = 1024)]
    max_key_bytes: usize,
    /// Largest value, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_value_bytes: usize,
    /// Largest request body, bytes (imports).
    #[arg(long, default_value_t = 64 << 20)]
    max_body_bytes: usize,
    /// Longest time a client may take to send a request's head, and longest a connection
    /// may sit idle between requests.
    #[arg(long, default_value = "20s")]
    header_timeout: String,
    /// Longest time a client may take to send a request's body.
    #[arg(long, default_value = "60s")]
    body_timeout: String,
    /// Longest time writing a response may take, from its first byte (a client that stops
    /// reading is cut off then).
    #[arg(long, default_value = "60s")]
    write_timeout: String,
    /// Most members check-ins without a token may show in the farm (counted over
    /// --farm-expiry, the followers leaders report included);
    /// beyond it a new one is answered but left out of the farm view. Only when reads need
    /// no token.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_open_farm_members: u64,
    /// Connections open at once; more wait until one closes. Lowered to fit the open-file
    /// limit (raised to its hard limit at start).
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Long-poll check-ins held at once (default: three quarters of --max-connections, at
    /// most one less). A held check-in keeps its connection; past this one is answered 304 at
    /// once with `x-lockstep-held: 0`, and its client checks in as without long-poll until
    /// its next check-in, so admin writes, downloads and new clients always find a connection.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    max_held_checkins: Option<u64>,
    /// How often the long-poll watcher reads the sync table while check-ins are held (tests
    /// only: they tell a wake by this poll from one by a write of this process).
    #[arg(long, hide = true, default_value = "40ms")]
    long_poll_watch_poll: String,
    /// The runtime's blocking threads (tests only: they show that requests waiting for a delta
    /// or a compressed blob hold none of them).
    #[arg(long, hide = true, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_blocking_threads: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Run the data server.
    Serve(Box<ServeArgs>),
    /// Set a key in production, now or at a time (RFC 3339).
    Put {
        key: String,
        /// The value (or use --file).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        value: Option<String>,
        /// Read the value from a file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// When the change takes effect, RFC 3339 (it goes live at the first activation at or
        /// after it).
        #[arg(long, conflicts_with = "urgent")]
        at: Option<String>,
        /// Make production (with this change) live everywhere at now + the urgent window.
        #[arg(long)]
        urgent: bool,
    },
    /// Remove a key from production, now or at a time (RFC 3339).
    Rm {
        key: String,
        #[arg(long, conflicts_with = "urgent")]
        at: Option<String>,
        /// Make production (without this key) live everywhere at now + the urgent window.
        #[arg(long)]
        urgent: bool,
    },
    /// Print a key's value in production, or in version N.
    Get {
        key: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// List production keys and values, optionally only those starting with PREFIX.
    Ls { prefix: Option<String> },
    /// Import a JSON object or a CSV file of key,value lines into production.
    Import {
        file: PathBuf,
        /// Make production live everywhere at now + the urgent window.
        #[arg(long)]
        urgent: bool,
    },
    /// Make production's content live everywhere at now + the urgent window (--urgent).
    Publish {
        /// Required: without it production goes live at the next activations anyway.
        #[arg(long, required = true)]
        urgent: bool,
    },
    /// Set the activation interval (100ms to 1d); the staged version's activation moves to
    /// the new grid.
    Interval {
        duration: String,
        /// Default: half the interval when it changes, else the current window.
        #[arg(long)]
        min_window: Option<String>,
        /// How soon an urgent change (--urgent) goes live, 1ms to 10m (default 1s).
        #[arg(long)]
        urgent_window: Option<String>,
    },
    /// The sync table and the farm.
    Status,
    /// The newest versions, newest first.
    History {
        /// How many versions to list.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
        limit: u64,
        /// List every version.
        #[arg(long, conflicts_with = "limit")]
        all: bool,
    },
    /// What changes from version A to version B.
    Diff { a: u64, b: u64 },
    /// Stage a new version with the content of VERSION for the next activation; production
    /// becomes that content too.
    Rollback {
        version: u64,
        /// Roll back even if that discards production edits (the keys are listed).
        #[arg(long)]
        yes: bool,
        /// Make the rolled-back content live everywhere at now + the urgent window.
        #[arg(long)]
        urgent: bool,
    },
    /// The proof of the newest activations: per activation time the version, how many
    /// clients switched on time, late or not at all, and the spread of the switch instants.
    Activations {
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
        limit: u64,
    },
    /// The audit log, newest first: who changed what, when and from where.
    Audit {
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        limit: u64,
    },
    /// Keep VERSION's content from retention (--keep-versions, --keep-for), so it can be
    /// downloaded, diffed and rolled back to from its own bytes.
    Pin { version: u64 },
    /// Let retention drop VERSION's content again (its history row and change set stay).
    Unpin { version: u64 },
    /// Copy a data server's whole state (production, schedules, versions and history) into a
    /// new database, e.g. from SQLite to PostgreSQL, checking counts and checksums. Stop the
    /// data servers on FROM first.
    Migrate {
        /// The database to copy: a SQLite file (PATH or sqlite:PATH) or postgres://…
        #[arg(long)]
        from: String,
        /// A new, empty database: postgres://user@host:port/db, or a SQLite file.
        #[arg(long)]
        to: String,
    },
    /// Write a consistent copy of the SQLite database to FILE, while the data server runs
    /// (SQLite's online backup). To restore, stop the data server and put FILE in the
    /// database's place. For PostgreSQL use pg_dump.
    Backup {
        /// Where the copy goes; it must not exist yet.
        file: PathBuf,
        /// The database to copy: a SQLite file (PATH or sqlite:PATH).
        #[arg(long, env = "LOCKSTEP_DB", default_value = "lockstep.db")]
        db: String,
    },
    /// Give the space retention freed in a SQLite database back to the file system. A file
    /// made by an older lockstep (auto_vacuum off) is rewritten once to free space by itself
    /// from then on; best run with the data server stopped.
    Vacuum {
        /// The database: a SQLite file (PATH or sqlite:PATH).
        #[arg(long, env = "LOCKSTEP_DB", default_value = "lockstep.db")]
        db: String,
    },
    /// The whole system on this machine: a data server and web servers with skewed clocks
    /// switching versions at the same instant, shown live.
    Demo(demo::DemoArgs),
    /// One web server of the demo (started by `lockstep demo`).
    #[command(hide = true)]
    DemoWeb(demo::WebArgs),
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let token_sources = tokens::TokenSources {
        file: args.tokens.clone(),
        admin_file: args.admin_token_file.clone(),
        read_file: args.read_token_file.clone(),
    };
    let first_tokens = token_sources.load()?;
    let tls = match tls::files(&args.tls_cert, &args.tls_key)? {
        Some(files) => {
            let resolver = tls::Resolver::new(files.load()?);
            Some((files, resolver))
        }
        None => None,
    };
    tracing::info!("tokens: {}", first_tokens.summary());
    if !first_tokens.has_read() {
        tracing::warn!(
            "no read token: check-ins, versions and metrics need no token, and anyone who \
             reaches this port can read the data and join the farm view"
        );
    }
    let tokens = Arc::new(arc_swap::ArcSwap::from_pointee(first_tokens));
    let interval = args
        .interval
        .as_deref()
        .map(clock::parse_duration_us)
        .transpose()
        .map_err(|e| format!("bad --interval: {e}; write it like 500ms, 30s or 10m"))?;
    let window = args
        .min_window
        .as_deref()
        .map(clock::parse_duration_us)
        .transpose()
        .map_err(|e| format!("bad --min-window: {e}; write it like 500ms, 30s or 10m"))?;
    let retention = store::Retention {
        keep_versions: args.keep_versions,
        keep_for_us: clock::parse_duration_us(&args.keep_for)
            .map_err(|e| format!("bad --keep-for: {e}; write it like 30m, 1h or 7d"))?,
        keep_changes_for_us: clock::parse_duration_us(&args.keep_changes_for)
            .map_err(|e| format!("bad --keep-changes-for: {e}; write it like 7d or 30d"))?,
    };
    // A new database starts with these; an existing one changes only what is given.
    let seed_interval = interval.unwrap_or(DEFAULT_INTERVAL_US);
    let seed = store::SyncSettings {
        interval_us: seed_interval,
        min_window_us: window.unwrap_or(seed_interval / 2),
    };
    let farm_expiry_us = clock::parse_duration_us(&args.farm_expiry)
        .map_err(|e| format!("bad --farm-expiry: {e}; write it like 90s, 10m or 1h"))?;
    let inline_encode_max_us = clock::parse_duration_us(&args.inline_encode_max)
        .map_err(|e| format!("bad --inline-encode-max: {e}; write it like 25ms or 0"))?;
    let max_open_farm_members = args.max_open_farm_members as usize;
    let location = store::Location::parse(&args.db)?;
    let limits = api::Limits {
        max_key_bytes: args.max_key_bytes,
        max_value_bytes: args.max_value_bytes,
        max_body_bytes: args.max_body_bytes,
    };
    let nofile = listen::raise_nofile_limit();
    let open_files = nofile.map(|(soft, _)| soft);
    let mut max_connections = args.max_connections;
    if let Some(n) = open_files {
        // Descriptors beyond connections: the database, its journal, log, listener.
        let room = n.saturating_sub(64).max(1);
        if max_connections > room {
            tracing::warn!(
                "--max-connections {max_connections} is above what {n} open files allow: \
                 using {room}"
            );
            max_connections = room;
        }
    }
    match nofile {
        Some((soft, hard)) if soft == hard => tracing::info!(
            open_files = soft.to_string(),
            max_connections,
            "open-file limit raised to the hard limit"
        ),
        Some((soft, hard)) => tracing::warn!(
            open_files = soft.to_string(),
            max_connections,
            "cannot raise the open-file limit to the hard limit ({hard}): serving with {soft}"
        ),
        None => tracing::warn!(
            max_connections,
            "cannot read the open-file limit: serving with the one in force"
        ),
    }
    let conn_limits = listen::ConnLimits {
        header_timeout: clock::parse_duration_us(&args.header_timeout)
            .map(|us| Duration::from_micros(us as u64))
            .map_err(|e| format!("bad --header-timeout: {e}; write it like 20s"))?,
        body_timeout: clock::parse_duration_us(&args.body_timeout)
            .map(|us| Duration::from_micros(us as u64))
            .map_err(|e| format!("bad --body-timeout: {e}; write it like 60s"))?,
        write_timeout: clock::parse_duration_us(&args.write_timeout)
            .map(|us| Duration::from_micros(us as u64))
            .map_err(|e| format!("bad --write-timeout: {e}; write it like 60s"))?,
        max_connections: max_connections as usize,
        max_body_bytes: args.max_body_bytes,
    };
    let max_held = args
        .max_held_checkins
        .unwrap_or(max_connections * 3 / 4)
        .min(max_connections.saturating_sub(1));
    let watch_poll = clock::parse_duration_us(&args.long_poll_watch_poll)
        .map(|us| Duration::from_micros(us as u64))
        .map_err(|e| format!("bad --long-poll-watch-poll: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(args.max_blocking_threads as usize)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start runtime: {e}"))?;
    // The store is dropped after the runtime, outside it: the PostgreSQL driver's connections
    // shut down on a runtime of their own, which cannot start inside another.
    let opened: Arc<OnceLock<Arc<store::Store>>> = Arc::default();
    let served = runtime.block_on(async {
        let listener = listen::bind(&args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        if tls.is_none() && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "serving plain HTTP on an address other hosts reach: tokens and data cross \
                 the network in clear; put a TLS-terminating proxy in front or listen on loopback"
            );
        }
        // Installed before the server says it listens: SIGHUP's default would end it.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
        tokio::spawn(reload_on_hangup(
            hangup,
            token_sources,
            tokens.clone(),
            tls.clone(),
        ));

        let waiting = Arc::new(Mutex::new(format!(
            "the data server is starting: the database {location} has not answered yet; \
             retry shortly"
        )));
        let (started, mut startup) = tokio::sync::oneshot::channel();
        let (failed_once, first_failure) = tokio::sync::oneshot::channel();
        {
            let (location, waiting) = (location.clone(), waiting.clone());
            let start = Start {
                seed,
                interval,
                window,
            };
            // A thread of its own, not the runtime's: a shutdown never waits for its retries.
            std::thread::Builder::new()
                .name("start".into())
                .spawn(move || {
                    let mut failed_once = Some(failed_once);
                    let mut first_failure = || {
                        if let Some(tell) = failed_once.take() {
                            let _ = tell.send(());
                        }
                    };
                    let opened =
                        open_when_reachable(&location, start, &waiting, &mut first_failure);
                    let _ = started.send(opened);
                })
                .map_err(|e| format!("cannot start the start-up thread: {e}"))?;
        }
        // With a database that answers at once, the server is ready when it says it listens,
        // as it always was; one that does not answer yet is waited for in the background,
        // and requests meanwhile get a 503 saying why.
        let early = tokio::select! {
            opened = &mut startup => Some(opened),
            failed = first_failure => match failed {
                Ok(()) => None,
                Err(_) => Some((&mut startup).await),
            },
        };
        let ready: Arc<OnceLock<axum::Router>> = Arc::default();
        let waiters = Arc::new(waiters::Waiters::new(max_held as usize, watch_poll));
        // Held check-ins are answered as the shutdown begins: it waits for open requests.
        let shutdown = {
            let waiters = waiters.clone();
            async move {
                shutdown_signal().await;
                waiters.stop();
            }
        };
        let flusher = Mutex::new(None);
        // Everything the API needs once the database answers. It runs before the server says
        // it listens when the database answered at once, so that line still means ready (a
        // request that raced a later set-up would get a 503 "starting").
        let set_up = |result: Result<Result<store::Store, String>, _>| -> Result<(), String> {
            let store = match result {
                Ok(Ok(store)) => Arc::new(store),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err("the start-up thread ended without a store".to_owned()),
            };
            let _ = opened.set(store.clone());
            store.set_farm_expiry(farm_expiry_us);
            store.set_inline_encode_max_us(inline_encode_max_us);
            start_prepare_thread(store.clone())?;
            *flusher.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(start_flusher(store.clone(), retention));
            let blobs = blobs::Blobs::load(&store)
                .map_err(|e| format!("cannot read the blob secret: {e}"))?;
            let blobs = Arc::new(blobs);
            waiters.spawn_watcher(store.clone());
            let state = Arc::new(api::AppState {
                store,
                tokens: tokens.clone(),
                limits,
                metrics: Arc::default(),
                open_farm: farm_cap::OpenFarm::new(max_open_farm_members, farm_expiry_us),
                blobs,
                deltas: Default::default(),
                waiters: waiters.clone(),
                rotation_turn: Default::default(),
            });
            let _ = ready.set(api::router(state));
            tracing::info!(%addr, db = %location, "data server ready");
            // systemd (Type=notify) starts dependent units now; without NOTIFY_SOCKET a no-op.
            if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
                tracing::warn!("cannot tell the service manager we are ready: {e}");
            }
            Ok(())
        };
        let ready_at_once = match early {
            Some(result) => {
                set_up(result)?;
                true
            }
            None => false,
        };
        // The one line on stdout, so scripts and tests that pass port 0 learn the port.
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!("lockstep: listening on {scheme}://{addr}");
        let app = {
            let (ready, waiting) = (ready.clone(), waiting.clone());
            axum::Router::new().fallback(move |req: axum::extract::Request| {
                let (ready, waiting) = (ready.clone(), waiting.clone());
                async move { until_ready(&ready, &waiting, req).await }
            })
        };
        let server: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> = match &tls {
            Some((_, resolver)) => Box::pin(listen::serve(
                listener,
                tls::Tls::new(resolver.clone())?,
                app,
                conn_limits,
                shutdown,
            )),
            None => Box::pin(listen::serve(
                listener,
                listen::Plain,
                app,
                conn_limits,
                shutdown,
            )),
        };
        let becoming_ready = async {
            if !ready_at_once {
                set_up(startup.await)?;
            }
            std::future::pending::<Result<(), String>>().await
        };
        let result = tokio::select! {
            () = server => Ok(()),
            failed = becoming_ready => failed,
        };
        if let Some(flusher) = flusher.lock().unwrap_or_else(|e| e.into_inner()).take() {
            flusher.abort();
        }
        if let Some(store) = opened.get().cloned() {
            let flush = move || store.flush_batched(clock::now_us());
            if let Ok(Err(e)) = tokio::task::spawn_blocking(flush).await {
                tracing::warn!("last farm and downloads flush failed: {e}");
            }
        }
        if result.is_ok() {
            tracing::info!("data server stopped");
        }
        result
    });
    drop(runtime);
    drop(opened);
    served
}

/// What `serve` was asked to set on the database once it answers.
#[derive(Clone, Copy)]
struct Start {
    seed: store::SyncSettings,
    interval: Option<i64>,
    window: Option<i64>,
}

/// Why a start-up attempt did not give a store.
enum StartError {
    /// The database cannot be reached now: try again.
    Unreachable(String),
    /// It answered, and what it said will not change by trying again: stop.
    Fatal(String),
}

/// Opens and migrates the database and applies `serve`'s settings.
fn start_store(location: &store::Location, start: Start) -> Result<store::Store, StartError> {
    use store::StoreError;
    let fail = |e: StoreError| match e {
        StoreError::Unavailable(msg) => StartError::Unreachable(msg),
        StoreError::BadRequest(msg) => StartError::Fatal(format!(
            "cannot open database {location}: {msg} (--interval, --min-window)"
        )),
        e => StartError::Fatal(format!("cannot open database {location}: {e}")),
    };
    let store = store::Store::open(location, start.seed, clock::now_us()).map_err(fail)?;
    if start.interval.is_some() || start.window.is_some() {
        let change = store
            .set_interval(start.interval, start.window, clock::now_us())
            .map_err(fail)?;
        if change.before != change.after {
            tracing::info!("{}", api::interval_message(&change));
        }
    }
    // A database written by an older release may hold a cycle clients now refuse.
    let sync = store.sync_table().map_err(fail)?;
    clock::check_interval(sync.interval_us, sync.min_window_us).map_err(|e| {
        StartError::Fatal(format!(
            "database {location}: {e}; start with --interval (and --min-window) to set a new one"
        ))
    })?;
    if let Some((was, now)) = store.reschedule_if_rotated(clock::now_us()).map_err(fail)? {
        tracing::warn!(
            "the sync table's activation time {was} had been rotated already; the next \
             activation is now {}",
            clock::format_us(now)
        );
    }
    Ok(store)
}

/// Longest pause between two start-up attempts.
const START_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// [`start_store`] until the database answers, with backoff and jitter, so that an instance
/// started while the database is down (or restarting) waits for it instead of exiting. Each
/// kind of failure is logged once; `waiting` holds the latest, for the 503s meanwhile.
fn open_when_reachable(
    location: &store::Location,
    start: Start,
    waiting: &Mutex<String>,
    first_failure: &mut dyn FnMut(),
) -> Result<store::Store, String> {
    let began = std::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut logged = std::collections::HashSet::new();
    for attempt in 1u64.. {
        match start_store(location, start) {
            Ok(store) => {
                if attempt > 1 {
                    tracing::info!(
                        "the database answers, after {attempt} attempts in {:.1?}",
                        began.elapsed()
                    );
                }
                return Ok(store);
            }
            Err(StartError::Fatal(e)) => return Err(e),
            Err(StartError::Unreachable(e)) => {
                // The kind of failure: its message without the numbers (ports, process ids,
                // timings) that vary from one attempt to the next.
                let kind: String = e.chars().filter(|c| !c.is_ascii_digit()).collect();
                if logged.insert(kind) {
                    tracing::warn!(
                        "database {location}: {e}; trying again with backoff, answering 503 \
                         meanwhile"
                    );
                }
                *waiting.lock().unwrap_or_else(|e| e.into_inner()) = e;
                first_failure();
            }
        }
        // Instances started together do not retry in step: up to half the backoff again.
        let jitter = (clock::now_us().unsigned_abs() % 1000) * backoff.as_micros() as u64 / 2000;
        std::thread::sleep(backoff + Duration::from_micros(jitter));
        backoff = (backoff * 2).min(START_BACKOFF_MAX);
    }
    unreachable!("attempts never run out")
}

/// Every request before the store is open: a 503 saying why; after, the API.
async fn until_ready(
    ready: &OnceLock<axum::Router>,
    waiting: &Mutex<String>,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use tower::ServiceExt;
    match ready.get() {
        Some(router) => match router.clone().oneshot(req).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None => {
            let message = waiting.lock().unwrap_or_else(|e| e.into_inner()).clone();
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::RETRY_AFTER, "1")],
                axum::Json(serde_json::json!({ "error": message })),
            )
                .into_response()
        }
    }
}

/// Builds each rotation's staged version shortly before its activation time, so that the
/// rotation itself is a few writes (see `store::prepare`). Its encodes run at background
/// priority (`background::lowered`): the restage a rotation wakes it for runs while the farm's
/// check-ins of that instant are answered.
fn start_prepare_thread(store: Arc<store::Store>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("prepare".into())
        .spawn(move || loop {
            // A panic in one round (a bug) is logged and the next round runs: without this
            // thread every rotation would keep the staged version.
            let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // First: a restage due is for the activation time the next build is for.
                if let Err(e) = store.restage_stale(clock::now_us()) {
                    tracing::warn!("restaging production after a rotation failed: {e}");
                }
                if let Err(e) = store.prepare_next(clock::now_us()) {
                    tracing::debug!("building the next version ahead failed: {e}");
                }
            }));
            if round.is_err() {
                tracing::error!("building the next version ahead panicked; trying again");
                std::thread::sleep(Duration::from_secs(1));
            }
            store.prepare_wait(store.prepare_poll(clock::now_us()));
        })
        .map(drop)
        .map_err(|e| format!("cannot start the preparing thread: {e}"))
}

/// Writes the farm and download counts every second, and applies retention.
fn start_flusher(
    store: Arc<store::Store>,
    retention: store::Retention,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let s = store.clone();
            let flush = move || s.flush_batched(clock::now_us());
            if let Ok(Err(e)) = tokio::task::spawn_blocking(flush).await {
                tracing::warn!("farm and downloads flush failed: {e}");
            }
            let s = store.clone();
            let prune = move || s.prune(retention, clock::now_us());
            match tokio::task::spawn_blocking(prune).await {
                Ok(Ok(0)) | Err(_) => {}
                Ok(Ok(n)) => {
                    tracing::info!("retention dropped the content of {n} versions")
                }
                Ok(Err(e)) => tracing::warn!("retention failed: {e}"),
            }
        }
    })
}

fn migrate(from: &str, to: &str) -> Result<(), String> {
    let (from, to) = (store::Location::parse(from)?, store::Location::parse(to)?);
    let copied = store::migrate::migrate(&from, &to)
        .map_err(|e| format!("cannot migrate {from} to {to}: {e}"))?;
    println!("lockstep: copied {from} to {to}: {copied}");
    Ok(())
}

/// SIGHUP reloads the tokens and the TLS certificate; what fails to load leaves the old one
/// in force.
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    sources: tokens::TokenSources,
    tokens: Arc<arc_swap::ArcSwap<tokens::Tokens>>,
    tls: Option<(tls::CertFiles, Arc<tls::Resolver>)>,
) {
    while hangup.recv().await.is_some() {
        if let Some((files, resolver)) = &tls {
            match files.load() {
                Ok(cert) => {
                    resolver.replace(cert);
                    tracing::info!("SIGHUP: TLS certificate reloaded");
                }
                Err(e) => {
                    tracing::error!("SIGHUP: TLS certificate not reloaded, the old one stays: {e}")
                }
            }
        }
        let load = {
            let sources = sources.clone();
            tokio::task::spawn_blocking(move || sources.load()).await
        };
        match load {
            Ok(Ok(set)) => {
                tracing::info!("SIGHUP: tokens reloaded: {}", set.summary());
                tokens.store(Arc::new(set));
            }
            Ok(Err(e)) => tracing::error!("SIGHUP: tokens not reloaded, the old ones stay: {e}"),
            Err(e) => tracing::error!("SIGHUP: tokens not reloaded: {e}"),
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

fn run_cli(args: Args) -> Result<(), CliError> {
    let token = std::env::var("LOCKSTEP_ADMIN_TOKEN").ok();
    let cli = Cli::with_ca_file(args.server, token, args.json, args.ca_file.as_deref())?;
    match args.command {
        Command::Serve(_)
        | Command::Demo(_)
        | Command::DemoWeb(_)
        | Command::Migrate { .. }
        | Command::Backup { .. }
        | Command::Vacuum { .. } => {
            unreachable!("handled in main")
        }
        Command::Put {
            key,
            value,
            file,
            at,
            urgent,
        } => {
            let value = match (value, file) {
                (Some(v), None) => v.into_bytes(),
                (None, Some(f)) => std::fs::read(&f)
                    .map_err(|e| CliError(format!("cannot read {}: {e}", f.display())))?,
                _ => return Err(CliError("give a VALUE or --file PATH".into())),
            };
            cli.put(key, value, at, urgent)
        }
        Command::Rm { key, at, urgent } => cli.rm(key, at, urgent),
        Command::Get { key, version } => cli.get_key(key, version),
        Command::Ls { prefix } => cli.ls(prefix),
        Command::Import { file, urgent } => cli.import(&file, urgent),
        Command::Publish { .. } => cli.publish_urgent(),
        Command::Interval {
            duration,
            min_window,
            urgent_window,
        } => cli.interval(duration, min_window, urgent_window),
        Command::Status => cli.status(),
        Command::History { limit, all } => cli.history(if all { None } else { Some(limit) }),
        Command::Diff { a, b } => cli.diff(a, b),
        Command::Rollback {
            version,
            yes,
            urgent,
        } => cli.rollback(version, yes, urgent),
        Command::Activations { limit } => cli.activations(limit),
        Command::Audit { limit } => cli.audit(limit),
        Command::Pin { version } => cli.pin(version, true),
        Command::Unpin { version } => cli.pin(version, false),
    }
}

/// `--json` anywhere before a `--`: asked for before the arguments could be parsed.
fn json_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// Ends the process after an error: one line on stderr, `{"error": "..."}` under `--json`.
fn fail(message: &str, json: bool) -> ExitCode {
    use std::io::Write;
    let line = if json {
        serde_json::json!({ "error": message }).to_string()
    } else {
        format!("lockstep: error: {message}")
    };
    // Nothing is left to tell anyone if stderr is closed too.
    let _ = writeln!(std::io::stderr(), "{line}");
    ExitCode::FAILURE
}

/// A usage error as one line: clap's message (its first paragraph) and the usage line.
fn usage_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let message = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    match text.lines().find_map(|l| l.strip_prefix("Usage: ")) {
        Some(usage) => format!("{message}; usage: {usage} (--help for more)"),
        None => format!("{message} (--help for more)"),
    }
}

/// Logs on stderr: colours only for a terminal, never escape codes in a file or a pipe.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        // `lockstep` alone: the help, on stderr, as the answer to a usage error.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::FAILURE;
        }
        Err(e) if e.use_stderr() => return fail(&usage_error(&e), json_requested()),
        // --help and --version: clap prints them on stdout and exits 0.
        Err(e) => e.exit(),
    };
    let json = args.json;
    init_logs(args.log_format);
    let result = match args.command {
        Command::Serve(serve_args) => serve(*serve_args),
        Command::Migrate { from, to } => migrate(&from, &to),
        Command::Backup { file, db } => backup::backup(&db, &file).map(|done| {
            println!(
                "lockstep: backed up {db} to {} ({} bytes, {} versions)",
                file.display(),
                done.bytes,
                done.versions
            )
        }),
        Command::Vacuum { db } => vacuum::vacuum(&db).map(|done| {
            println!(
                "lockstep: vacuumed {db}: {} bytes, was {}{}",
                done.bytes_after,
                done.bytes_before,
                if done.converted {
                    " (rewritten to free space by itself from now on)"
                } else {
                    ""
                }
            )
        }),
        Command::Demo(demo_args) => demo::run(demo_args),
        Command::DemoWeb(web_args) => demo::web(web_args),
        _ => run_cli(args).map_err(|e| e.0),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => fail(&msg, json),
    }
}
