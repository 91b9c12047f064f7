//! A handle: one data server, one retrieval thread, one pair of staged and active caches.
//!
//! This is the Rust API the C ABI marshals to. It also carries the handle across `fork()`:
//! pre-fork servers (gunicorn `--preload`, PHP-FPM, nginx's master) may open a handle and then
//! fork workers. The child inherits the memory — so reads keep working at once — but not the
//! retrieval thread. A `pthread_atfork` child hook bumps a process-wide generation; the first
//! call on the handle in a child sees the generation changed and starts a fresh thread there,
//! with its own HTTP connections and its own stop signal.

use std::sync::atomic::{
    AtomicI64, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;

use crate::activation::Version;
use crate::clock::mono_ns;
use crate::options::Options;
use crate::retrieval::{self, Control, Failure, Shared, StatsSnapshot};

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
/// CLOCK_MONOTONIC at the last `fork()`, in the child: what was due by then was active in the
/// parent; anything later was only armed.
static FORK_MONO_NS: AtomicI64 = AtomicI64::new(0);

/// How long `sync_close` waits for the retrieval thread before leaving it to exit by itself.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long in all `sync_close` waits for a fetch for the host cache that still advances.
const CLOSE_WAIT_FOR_FETCH: std::time::Duration = std::time::Duration::from_secs(15);
/// A fetch that has received no byte for this long is stalled, and not waited for.
const FETCH_STALLED: std::time::Duration = std::time::Duration::from_secs(1);
static ATFORK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    // Only async-signal-safe work: the child of a multi-threaded process may do little else.
    FORK_MONO_NS.store(mono_ns(), Relaxed);
    crate::host_cache::close_in_child();
    FORK_GENERATION.fetch_add(1, Release);
}

fn register_atfork() {
    ATFORK.call_once(|| {
        // SAFETY: registers a plain extern "C" function; the library is linked with
        // `-z nodelete`, so the function stays mapped for the life of the process.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
}

/// Why a handle could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    BadOption(String),
    Unreachable(String),
    /// The data server refused the token (401 or 403).
    Unauthorized(String),
    Thread(String),
}

/// Why a read has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// No version has arrived yet.
    NotReady,
    NotFound,
    /// The value needs this many bytes.
    TooSmall(usize),
}

pub struct Client {
    shared: Arc<Shared>,
    control: ArcSwap<Control>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The fork generation of the process our retrieval thread runs in.
    thread_generation: AtomicU64,
    /// The fork generation whose inherited schedule has been disarmed: reads wait for it.
    read_generation: AtomicU64,
}

impl Client {
    /// Opens a handle from `key=value` options and waits (up to `bootstrap_wait_ms`) for the
    /// version that should be active now.
    pub fn open(options: &str) -> Result<Client, OpenError> {
        let options = Options::parse(options).map_err(OpenError::BadOption)?;
        let tls = crate::tls::config(options.ca_file.as_deref()).map_err(OpenError::BadOption)?;
        register_atfork();
        let wait = options.bootstrap_wait;
        let allow_not_ready = options.allow_not_ready;
        let shared = Arc::new(Shared::new(options, tls));
        // The host's last word, from disk: a process that opens while the data server is
        // down serves what its host last activated, at once.
        if shared.take_host_schedule() {
            shared.stats.unconfirmed.store(1, Relaxed);
        }
        let control = Arc::new(Control::default());
        let thread = retrieval::spawn(shared.clone(), control.clone())
            .map_err(|e| OpenError::Thread(format!("cannot start the retrieval thread: {e}")))?;
        let client = Client {
            shared,
            control: ArcSwap::new(control),
            thread: Mutex::new(Some(thread)),
            thread_generation: AtomicU64::new(FORK_GENERATION.load(Relaxed)),
            read_generation: AtomicU64::new(FORK_GENERATION.load(Relaxed)),
        };
        if !client.shared.wait_ready(wait) && !allow_not_ready {
            // bootstrap_wait_ms was the wait: a failed open does not wait out a fetch besides.
            let mut client = client;
            client.stop_within(CLOSE_WAIT);
            let why = client.shared.last_error();
            let why = if why.is_empty() {
                format!("no version arrived within {} ms", wait.as_millis())
            } else {
                why
            };
            return Err(match client.shared.stats().last_failure {
                Failure::Unauthorized => OpenError::Unauthorized(why),
                _ => OpenError::Unreachable(why),
            });
        }
        Ok(client)
    }

    /// In a fork child that has not yet done so: disarms the inherited schedule and restarts
    /// the retrieval thread. Every read passes here first.
    #[inline]
    fn follow_fork(&self) {
        if FORK_GENERATION.load(Acquire) != self.read_generation.load(Acquire) {
            self.restart_after_fork();
        }
    }

    #[cold]
    fn restart_after_fork(&self) {
        let now = FORK_GENERATION.load(Acquire);
        let seen = self.thread_generation.load(Relaxed);
        if seen == now
            || self
                .thread_generation
                .compare_exchange(seen, now, Relaxed, Relaxed)
                .is_err()
        {
            // Another thread of this child is restarting: no read until it has disarmed,
            // which takes it microseconds.
            while self.read_generation.load(Acquire) != now {
                std::thread::yield_now();
            }
            return;
        }
        let inherited = self
            .shared
            .activation
            .disarm_after_fork(FORK_MONO_NS.load(Relaxed));
        // Serving the parent's active version, unconfirmed until the first check-in; or, with
        // a host cache, what the host's schedule says now (a local read, no network).
        self.shared.stats.lagging.store(1, Relaxed);
        // The parent's fetch, if one was under way at the fork, is not this process's.
        self.shared.reset_transfer();
        self.shared.take_host_schedule();
        self.read_generation.store(now, Release);
        let control = Arc::new(Control::after_fork(inherited));
        self.control.store(control.clone());
        let spawned = retrieval::spawn(self.shared.clone(), control);
        // The parent's JoinHandle names a thread this process does not have: forget it rather
        // than detach or join it. try_lock: a lock held at the fork stays held in the child.
        if let Ok(mut slot) = self.thread.try_lock() {
            if let Some(old) = slot.take() {
                std::mem::forget(old);
            }
            *slot = spawned.ok();
        }
    }

    /// Copies the value of `key` into `buf`; returns its length.
    #[inline]
    pub fn get_into(&self, key: &[u8], buf: &mut [u8]) -> Result<usize, ReadError> {
        self.follow_fork();
        self.shared.activation.with_current(|v| {
            let value = v
                .ok_or(ReadError::NotReady)?
                .get(key)
                .ok_or(ReadError::NotFound)?;
            let out = buf
                .get_mut(..value.len())
                .ok_or(ReadError::TooSmall(value.len()))?;
            out.copy_from_slice(value);
            Ok(value.len())
        })
    }

    /// The value of `key` as an owned vector (for Rust callers; the C ABI never allocates).
    pub fn get(&self, key: &[u8]) -> Result<Vec<u8>, ReadError> {
        self.follow_fork();
        self.shared.activation.with_current(|v| {
            Ok(v.ok_or(ReadError::NotReady)?
                .get(key)
                .ok_or(ReadError::NotFound)?
                .to_vec())
        })
    }

    /// Pins the version a read sees now: every read through it comes from that version.
    pub fn snapshot(&self) -> Result<Arc<Version>, ReadError> {
        self.follow_fork();
        self.shared.activation.pin().ok_or(ReadError::NotReady)
    }

    /// The active version (0 before the first one arrives).
    pub fn active_version(&self) -> u64 {
        self.follow_fork();
        self.shared.activation.current_number()
    }

    /// The staged version and its activation time on the data server's clock (µs), if one is
    /// armed.
    pub fn staged(&self) -> Option<(u64, i64)> {
        self.follow_fork();
        self.shared.activation.staged().map(|(v, at, _)| (v, at))
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.follow_fork();
        self.shared.stats()
    }

    /// The retrieval thread's last failure (empty if none yet).
    pub fn last_error(&self) -> String {
        self.shared.last_error()
    }

    /// Stops the thread; waits for a fetch for the host cache that still advances up to
    /// `fetch_cap` in all (see below).
    fn stop_within(&mut self, fetch_cap: std::time::Duration) {
        if FORK_GENERATION.load(Relaxed) != self.thread_generation.load(Relaxed) {
            // Opened before a fork and never used here: there is no thread of ours to stop.
            let slot = self.thread.get_mut().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = slot.take() {
                std::mem::forget(old);
            }
            return;
        }
        let control = self.control.load_full();
        self.shared.begin_close();
        control.stop();
        let handle = self
            .thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            // The thread notices the stop at once unless it is inside a request; a host
            // shutting down must not wait out a 100 MB download, so after a bound the thread
            // is left to finish that request and exit by itself. It owns what it uses (an
            // Arc of the shared state), and the library is never unmapped (-z nodelete).
            //
            // The exception is a fetch for the host cache that still advances: what it brings
            // is published for the whole host, and cutting it off would make this process's
            // successor there (a recycled worker is often its host's leader) fetch the same
            // version again. It is waited for while bytes keep arriving, up to a cap.
            let started = std::time::Instant::now();
            let mut exited = control.wait_exited(CLOSE_WAIT);
            while !exited
                && started.elapsed() < fetch_cap
                && self.shared.transfer_advancing(FETCH_STALLED)
            {
                exited = control.wait_exited(std::time::Duration::from_millis(20));
            }
            if exited {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop_within(CLOSE_WAIT_FOR_FETCH);
    }
}
