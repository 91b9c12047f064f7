//! Retrieval: the background thread of one handle, running the patent's asynchronous phase.
//!
//! Each cycle: check in (which may perform the data server's rotation, and is always a clock
//! sample); catch up if this client does not hold the version that should be active now; if a
//! staged version is announced, download it unless held, verify it completely, and arm it for
//! its activation instant. Failures back off with jitter, capped well under the interval, and
//! never touch what readers see: the last active version keeps serving.
//!
//! The thread owns everything that does I/O (its own ureq agent, so no connection is ever
//! shared across `fork()`); what it shares with readers is the [`Activation`] and the
//! [`Stats`] atomics.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::activation::{Activation, Version};
use crate::clock::{mono_ns, wall_us, ClockSync, Estimate, Sample};
use crate::following;
use crate::format::VersionBuf;
use crate::host_cache::{FileRef, HostCache, LeaderLock, Member};
use crate::options::Options;
use crate::wire::{self, CheckinResponse, ErrorBody, SyncTable};

/// Counters and gauges readers can take without a lock.
#[derive(Default)]
pub struct Stats {
    pub last_checkin_us: AtomicI64,
    pub consecutive_failures: AtomicU64,
    pub clock_offset_us: AtomicI64,
    pub clock_error_us: AtomicI64,
    pub lagging: AtomicU64,
    pub checkins: AtomicU64,
    pub activations: AtomicU64,
    pub rejected_versions: AtomicU64,
    pub last_activation_us: AtomicI64,
    pub last_activation_mono_ns: AtomicI64,
    pub next_activation_us: AtomicI64,
    /// [`HostRole`] as a number.
    pub host_role: AtomicU64,
    /// 1 while the version served was read from the host cache and no check-in (this
    /// process's or the leader's) has confirmed it since.
    pub unconfirmed: AtomicU64,
    /// The data server's clock when the active version was last confirmed current, µs.
    pub confirmed_us: AtomicI64,
    /// Host-cache operations that failed (a full disk, a corrupt file); reads never did.
    pub cache_failures: AtomicU64,
    /// [`Failure`] of the last check-in or download, as a number.
    pub last_failure: AtomicU64,
    /// Bytes received for versions and deltas, as transferred.
    pub bytes_downloaded: AtomicU64,
    /// Versions rebuilt from a delta and kept.
    pub deltas_applied: AtomicU64,
    /// Versions downloaded whole.
    pub full_downloads: AtomicU64,
}

/// Why the last network step failed: a refused token is told apart from everything else,
/// since retrying with the same token cannot help.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(u32)]
pub enum Failure {
    /// The last step succeeded, or none has run yet.
    #[default]
    None = 0,
    /// Not reached, or no usable answer.
    Unreachable = 1,
    /// The data server answered 401 or 403.
    Unauthorized = 2,
}

impl Failure {
    fn from_u64(n: u64) -> Failure {
        match n {
            0 => Failure::None,
            2 => Failure::Unauthorized,
            _ => Failure::Unreachable,
        }
    }
}

/// What a handle does on its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum HostRole {
    /// No host cache (`cache_dir=`): this process alone.
    Off = 0,
    /// Talks to the data server for the host and writes its schedule.
    Leader = 1,
    /// Follows the leader's schedule through the host cache, without the network.
    Follower = 2,
    /// The host cache could not be used (permissions, full disk): this process alone, and
    /// `sync_error_message` says why.
    Failed = 3,
}

/// A plain copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub active_version: u64,
    pub staged_version: u64,
    pub next_activation_us: i64,
    pub last_checkin_us: i64,
    pub consecutive_failures: u64,
    pub clock_offset_us: i64,
    pub clock_error_us: i64,
    pub lagging: bool,
    pub checkins: u64,
    pub activations: u64,
    pub rejected_versions: u64,
    pub last_activation_us: i64,
    /// CLOCK_MONOTONIC instant of the last on-time activation, ns.
    pub last_activation_mono_ns: i64,
    /// CLOCK_MONOTONIC instant the staged version activates at, ns (0: none staged).
    pub next_activation_mono_ns: i64,
    /// [`HostRole`] as a number.
    pub host_role: u32,
    pub unconfirmed: bool,
    pub confirmed_us: i64,
    pub cache_failures: u64,
    pub last_failure: Failure,
    pub bytes_downloaded: u64,
    pub deltas_applied: u64,
    pub full_downloads: u64,
}

/// What a handle and its retrieval thread share.
pub struct Shared {
    pub options: Options,
    pub activation: Activation,
    pub stats: Stats,
    /// This data server's directory in the host cache, if it is usable.
    pub cache: Option<HostCache>,
    /// The last failure, for `sync_error_message` and for a failed open.
    last_error: Mutex<String>,
    /// The authorities an `https://` data server is verified against (see [`crate::tls`]).
    pub tls: ureq::tls::TlsConfig,
    ready: Mutex<bool>,
    ready_cv: Condvar,
    /// A fetch for the host cache under way: CLOCK_MONOTONIC ns of its last received byte,
    /// [`LOCAL_WORK`] once every byte is in (rebuilding, verifying, publishing), 0 when none
    /// is. `sync_close` waits longer for such a fetch (see [`Shared::transfer_advancing`]).
    transfer: AtomicI64,
    /// `sync_close` has begun: no new fetch starts.
    closing: AtomicBool,
}

/// [`Shared::transfer`] once the network part of a fetch is done.
const LOCAL_WORK: i64 = i64::MAX;

impl Shared {
    pub fn new(options: Options, tls: ureq::tls::TlsConfig) -> Shared {
        let (cache, cache_error) = match options.cache_dir.as_deref() {
            None => (None, None),
            Some(root) => match HostCache::open(root, &options.url) {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        let stats = Stats::default();
        let role = match (&cache, &cache_error) {
            (Some(_), _) => HostRole::Follower,
            (None, Some(_)) => HostRole::Failed,
            (None, None) => HostRole::Off,
        };
        stats.host_role.store(role as u64, Relaxed);
        Shared {
            cache,
            stats,
            last_error: Mutex::new(cache_error.unwrap_or_default()),
            tls,
            options,
            activation: Activation::new(),
            ready: Mutex::new(false),
            ready_cv: Condvar::new(),
            transfer: AtomicI64::new(0),
            closing: AtomicBool::new(false),
        }
    }

    /// True while a fetch for the host cache is under way and not stalled: bytes arrived
    /// within `stalled`, or all of them have and only local work remains. What such a fetch
    /// brings is published to the host cache; cut off, the process's successor in the host
    /// would fetch the same version again (a recycled PHP-FPM or gunicorn worker is often
    /// its host's leader).
    pub fn transfer_advancing(&self, stalled: Duration) -> bool {
        match self.transfer.load(Relaxed) {
            0 => false,
            LOCAL_WORK => true,
            last => mono_ns().saturating_sub(last) < stalled.as_nanos() as i64,
        }
    }

    /// Forgets a fetch under way (in a fork child: it was the parent's thread's).
    pub fn reset_transfer(&self) {
        self.transfer.store(0, Relaxed);
    }

    /// Marks the handle as closing: the thread starts no fetch from here on.
    pub fn begin_close(&self) {
        self.closing.store(true, Relaxed);
    }

    /// Records progress of the fetch under way, if one is tracked.
    fn transfer_progress(&self, now: i64) {
        if self.transfer.load(Relaxed) != 0 {
            self.transfer.store(now, Relaxed);
        }
    }

    /// Every byte of the tracked fetch is in; what remains cannot stall.
    fn transfer_received(&self) {
        if self.transfer.load(Relaxed) != 0 {
            self.transfer.store(LOCAL_WORK, Relaxed);
        }
    }

    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_error(&self, e: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e.to_owned();
    }

    pub(crate) fn mark_ready(&self) {
        *self.ready.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.ready_cv.notify_all();
    }

    /// Applies the host cache's schedule, if there is one; true if a version is held after.
    pub fn take_host_schedule(&self) -> bool {
        let Some(cache) = &self.cache else {
            return false;
        };
        match cache.read_schedule() {
            Ok(Some(s)) => following::apply_schedule(self, cache, &s, cache.leader_alive())
                .map_err(|e| self.set_error(&e))
                .is_ok_and(|()| self.activation.current_number() != 0),
            Ok(None) => false,
            Err(e) => {
                self.set_error(&e.to_string());
                false
            }
        }
    }

    /// Waits up to `timeout` for the first version; true if it arrived.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let guard = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .ready_cv
            .wait_timeout_while(guard, timeout, |ready| !*ready)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        let staged = self.activation.staged();
        StatsSnapshot {
            active_version: self.activation.current_number(),
            staged_version: staged.map_or(0, |(v, _, _)| v),
            next_activation_us: s.next_activation_us.load(Relaxed),
            last_checkin_us: s.last_checkin_us.load(Relaxed),
            consecutive_failures: s.consecutive_failures.load(Relaxed),
            clock_offset_us: s.clock_offset_us.load(Relaxed),
            clock_error_us: s.clock_error_us.load(Relaxed),
            lagging: s.lagging.load(Relaxed) != 0,
            checkins: s.checkins.load(Relaxed),
            activations: s.activations.load(Relaxed),
            rejected_versions: s.rejected_versions.load(Relaxed),
            last_activation_us: s.last_activation_us.load(Relaxed),
            last_activation_mono_ns: s.last_activation_mono_ns.load(Relaxed),
            next_activation_mono_ns: staged.map_or(0, |(_, _, at)| at),
            host_role: s.host_role.load(Relaxed) as u32,
            unconfirmed: s.unconfirmed.load(Relaxed) != 0,
            confirmed_us: s.confirmed_us.load(Relaxed),
            cache_failures: s.cache_failures.load(Relaxed),
            last_failure: Failure::from_u64(s.last_failure.load(Relaxed)),
            bytes_downloaded: s.bytes_downloaded.load(Relaxed),
            deltas_applied: s.deltas_applied.load(Relaxed),
            full_downloads: s.full_downloads.load(Relaxed),
        }
    }
}

/// Stop signal for one retrieval thread. A new one is made for a thread restarted after
/// `fork()`, so a lock the parent's thread held at the fork is never waited on.
#[derive(Default)]
pub struct Control {
    stop: Mutex<bool>,
    cv: Condvar,
    exited: Mutex<bool>,
    exited_cv: Condvar,
    /// Set in a `fork()` child: the versions the parent had armed, disarmed until a check-in
    /// confirms them (see [`Activation::disarm_after_fork`]).
    after_fork: Option<Vec<Arc<Version>>>,
}

impl Control {
    /// The control of a thread restarted in a `fork()` child that inherited `disarmed`.
    pub fn after_fork(disarmed: Vec<Arc<Version>>) -> Control {
        Control {
            after_fork: Some(disarmed),
            ..Control::default()
        }
    }

    pub fn stop(&self) {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits up to `timeout` for the thread to finish; true if it has.
    pub fn wait_exited(&self, timeout: Duration) -> bool {
        let guard = self.exited.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .exited_cv
            .wait_timeout_while(guard, timeout, |exited| !*exited)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    fn mark_exited(&self) {
        *self.exited.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.exited_cv.notify_all();
    }

    /// Wakes the thread's wait in [`Control::wait_for`].
    fn poke(&self) {
        let _guard = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        self.cv.notify_all();
    }

    /// Waits until `slot` is filled (and takes it), monotonic `deadline_ns`, or a stop.
    fn wait_for<T>(&self, slot: &Mutex<Option<T>>, deadline_ns: i64) -> Waited<T> {
        let mut stopped = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *stopped {
                return Waited::Stopped;
            }
            // Checked under the stop lock, which `poke` takes after filling the slot: a fill
            // cannot slip between this look and the wait.
            if let Some(v) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return Waited::Got(v);
            }
            let left = deadline_ns - mono_ns();
            if left <= 0 {
                return Waited::TimedOut;
            }
            stopped = self
                .cv
                .wait_timeout(stopped, Duration::from_nanos(left as u64))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sleeps until monotonic `deadline_ns` or a stop; true if stopped.
    fn sleep_until(&self, deadline_ns: i64) -> bool {
        let mut stopped = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if *stopped {
                return true;
            }
            let left = deadline_ns - mono_ns();
            if left <= 0 {
                return false;
            }
            stopped = self
                .cv
                .wait_timeout(stopped, Duration::from_nanos(left as u64))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Starts the retrieval thread with every async signal blocked, so the host's signal handlers
/// (nginx's, PHP-FPM's, gunicorn's) always run on the host's own threads.
pub fn spawn(shared: Arc<Shared>, control: Arc<Control>) -> std::io::Result<JoinHandle<()>> {
    // SAFETY: plain libc signal-mask calls on sigset_t values we own.
    let old = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        old
    };
    let result = std::thread::Builder::new()
        .name("lockstep-retrieval".into())
        .spawn(move || run(shared, control));
    // SAFETY: restores the mask saved above on this same thread.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    result
}

enum Waited<T> {
    Got(T),
    TimedOut,
    Stopped,
}

/// A long-poll check-in's outcome, as its thread hands it over.
type Heard = Result<ureq::http::Response<ureq::Body>, ureq::Error>;

/// The shortest wait worth a long-poll check-in; a shorter one is slept.
const LONG_POLL_MIN_NS: i64 = 1_000_000_000;
/// The longest one, jittered between the two so that a farm's held check-ins do not end
/// together (the data server caps it at [`wire::MAX_WAIT_MS`]).
const LONG_POLL_MAX_MS: std::ops::RangeInclusive<u64> = 30_000..=45_000;
/// A data server that answered a long-poll check-in at once is slept for this many check-in
/// periods, at most [`NO_LONG_POLL_MAX_NS`], then tried again: an upgrade is noticed, and an
/// old one costs a long-poll answered at once every few minutes.
const NO_LONG_POLL_INTERVALS: i64 = 4;
const NO_LONG_POLL_MAX_NS: i64 = 300_000_000_000;

fn run(shared: Arc<Shared>, control: Arc<Control>) {
    run_until_stopped(shared, &control);
    control.mark_exited();
}

fn run_until_stopped(shared: Arc<Shared>, control: &Arc<Control>) {
    loop {
        let s = shared.clone();
        let c = control.clone();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            Retriever::new(s, c.after_fork.clone()).run(&c)
        }));
        match outcome {
            Ok(()) => return,
            Err(_) => {
                // A bug, not bad input; keep the host alive and keep serving, retry later.
                shared.set_error("internal error in the retrieval thread; restarting it");
                if control.sleep_until(mono_ns() + 1_000_000_000) {
                    return;
                }
            }
        }
    }
}

struct Retriever {
    shared: Arc<Shared>,
    agent: ureq::Agent,
    /// One clock estimate per data server: instances measure their own clocks, and samples of
    /// one never stand in for another's (see [`Retriever::fail_over`]).
    clocks: Vec<ClockSync>,
    /// The data server this thread talks to: an index into the `url` list.
    server: usize,
    table: Option<SyncTable>,
    /// Checksums the data server announced with the table: (version, checksum).
    announced: [(u64, Option<u64>); 2],
    /// The delta the data server offered with the table from the active version to the
    /// staged one: (staged version, path); empty when it offered none.
    delta_path: (u64, String),
    /// Blob paths the data server gave with the table: (version, path); empty from a data
    /// server that predates them.
    blob_paths: [(u64, String); 2],
    etag: Option<String>,
    rng: fastrand::Rng,
    host: String,
    pid: u32,
    failures: u32,
    /// In a `fork()` child until its first check-in: the parent's disarmed versions, which
    /// may be re-armed without a download if the data server still means them.
    inherited: Option<Vec<Arc<Version>>>,
    /// A staged version downloaded for a table read too long before (see
    /// [`check_in_before_arming`]): armed after the next check-in if it still names it.
    downloaded: Option<Arc<Version>>,
    /// Leadership of the host cache, once this handle has it.
    lead: Option<LeaderLock>,
    /// When to try for the leadership next (CLOCK_MONOTONIC ns).
    next_lead_try_ns: i64,
    /// When to write this follower's heartbeat next.
    next_member_ns: i64,
    /// When this retrieval thread started: a schedule written after it confirms what the
    /// process serves.
    started_ns: i64,
    /// When this handle's last check-in succeeded (CLOCK_MONOTONIC ns; 0: never).
    confirmed_mono_ns: i64,
    /// The data server's clock at this handle's first check-in, µs (0: none yet).
    since_us: i64,
    /// The last switch of readers to another version, until a check-in has reported it.
    switch: Option<Switch>,
    /// Set when the data server refused the token in the step under way.
    refused: bool,
    /// A held check-in's 200 (the sync table changed): the next cycle takes its table
    /// instead of checking in, and no clock sample from it.
    heard: Option<ureq::http::Response<ureq::Body>>,
    /// The slot of a long-poll check-in still under way after its wait was given up (see
    /// [`Retriever::long_poll`]): no second one while it lasts.
    polling: Option<Arc<Mutex<Option<Heard>>>>,
    /// A data server (index into the `url` list) that answered a long-poll check-in at once,
    /// without holding it: one that predates long-poll, which is slept for instead until the
    /// monotonic instant given (it may be upgraded meanwhile).
    no_long_poll: Option<(usize, i64)>,
}

/// A switch of what readers see, for the proof of activation (see [`wire::SwitchReport`]).
#[derive(Debug, Clone, Copy)]
struct Switch {
    version: u64,
    checksum: u64,
    /// The activation time armed for; 0 for a catch-up.
    activation_us: i64,
    /// When readers switched, CLOCK_MONOTONIC ns.
    at_mono_ns: i64,
    late: bool,
}

/// How often a follower reads the host's schedule: well inside any retrieval window, and a
/// small-file read is cheap.
const FOLLOW_PERIOD_NS: i64 = 50_000_000;
/// How often a follower tries for the leadership: a dead leader's host is led again within
/// about this long.
const LEAD_RETRY_NS: i64 = 500_000_000;
/// How often a follower writes its heartbeat, and how old one may be and still count.
const MEMBER_PERIOD_NS: i64 = 1_000_000_000;
const MEMBER_STALE_NS: i64 = 5 * MEMBER_PERIOD_NS;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// The longest a client goes between check-ins while it follows a table with this interval
/// (ns); the data server counts on it (see `wire::CHECKIN_PERIOD_MIN_US`).
fn checkin_period_ns(interval_us: i64) -> i64 {
    clamp_ns(
        interval_us.saturating_mul(1000) / 4,
        wire::CHECKIN_PERIOD_MIN_US * 1000,
        wire::CHECKIN_PERIOD_MAX_US * 1000,
    )
}

/// Whether a staged version downloaded for a table read at `read_ns` must wait for another
/// check-in before it is armed for `at_ns` (all monotonic ns; `poll_ns` the check-in period,
/// `error_ns` the clock error). The data server replaces a staged version (a restage, an
/// urgent activation) only while every client has a check-in period left to hear of it, so
/// one that was read less than that before its activation time needs no second look. Armed
/// now with its activation less than a period away (or past), the next check-in comes only
/// after it: if the read was longer before it than that, the data server may have replaced
/// the version during the download, and arming it would activate what the farm does not.
fn check_in_before_arming(
    read_ns: i64,
    now_ns: i64,
    at_ns: i64,
    poll_ns: i64,
    error_ns: i64,
) -> bool {
    let hears_before = at_ns.saturating_sub(now_ns) >= poll_ns;
    let replaceable_since_read = at_ns.saturating_sub(read_ns).saturating_add(error_ns) > poll_ns;
    !hears_before && replaceable_since_read
}

fn clamp_ns(v: i64, lo: i64, hi: i64) -> i64 {
    v.max(lo).min(hi)
}

impl Retriever {
    fn new(shared: Arc<Shared>, inherited: Option<Vec<Arc<Version>>>) -> Retriever {
        let o = &shared.options;
        // Per-phase timeouts only: a global or per-call timeout makes ureq resolve host names
        // on a thread of its own for every new connection.
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(o.connect_timeout))
            .timeout_send_request(Some(o.checkin_timeout))
            .timeout_recv_response(Some(o.checkin_timeout))
            .timeout_recv_body(Some(o.checkin_timeout))
            .max_idle_connections(2)
            .tls_config(shared.tls.clone())
            .build()
            .into();
        let pid = std::process::id();
        Retriever {
            agent,
            clocks: vec![ClockSync::new(); shared.options.urls.len().max(1)],
            server: 0,
            table: None,
            announced: [(0, None); 2],
            blob_paths: Default::default(),
            delta_path: Default::default(),
            etag: None,
            rng: fastrand::Rng::with_seed(pid as u64 ^ mono_ns() as u64 ^ wall_us() as u64),
            host: hostname(),
            pid,
            failures: 0,
            inherited,
            downloaded: None,
            lead: None,
            next_lead_try_ns: 0,
            next_member_ns: 0,
            started_ns: mono_ns(),
            confirmed_mono_ns: 0,
            since_us: 0,
            switch: None,
            refused: false,
            heard: None,
            polling: None,
            no_long_poll: None,
            shared,
        }
    }

    fn run(mut self, control: &Arc<Control>) {
        self.follow_loop(control);
        if let Some(cache) = &self.shared.cache {
            cache.remove_member(self.pid);
        }
    }

    fn follow_loop(&mut self, control: &Arc<Control>) {
        loop {
            self.promote_due();
            self.refused = false;
            let stepped = self.step();
            self.heard = None;
            let wake = match stepped {
                Ok(next_checkin) => {
                    self.failures = 0;
                    self.shared.stats.consecutive_failures.store(0, Relaxed);
                    self.shared
                        .stats
                        .last_failure
                        .store(Failure::None as u64, Relaxed);
                    next_checkin
                }
                Err(e) => {
                    let kind = if self.refused {
                        Failure::Unauthorized
                    } else {
                        Failure::Unreachable
                    };
                    self.shared.stats.last_failure.store(kind as u64, Relaxed);
                    self.failures += 1;
                    self.fail_over();
                    self.shared
                        .stats
                        .consecutive_failures
                        .store(self.failures as u64, Relaxed);
                    self.shared.set_error(&e);
                    mono_ns() + self.backoff_ns()
                }
            };
            // Wake for every armed instant on the way, to release the old version promptly.
            loop {
                let until = match self.shared.activation.next_instant() {
                    Some(at) if at < wake => at,
                    _ => wake,
                };
                if self.may_long_poll(until) {
                    match self.long_poll(control, until) {
                        Waited::Stopped => return,
                        // The sync table changed: a cycle now.
                        Waited::Got(()) => break,
                        Waited::TimedOut => {}
                    }
                } else if control.sleep_until(until) {
                    return;
                }
                if self.promote_due() && self.lead.is_some() {
                    self.write_schedule();
                }
                if until >= wake {
                    break;
                }
            }
        }
    }

    /// Whether to wait until `until` in a long-poll check-in rather than asleep: only the
    /// process that checks in for its host, only after a check-in that succeeded, and only
    /// with a data server that holds check-ins.
    fn may_long_poll(&self, until: i64) -> bool {
        self.shared.options.long_poll
            && (self.shared.cache.is_none() || self.lead.is_some())
            && self.failures == 0
            && self.etag.is_some()
            && self.table.is_some()
            && !self
                .no_long_poll
                .is_some_and(|(server, until)| server == self.server && mono_ns() < until)
            && until - mono_ns() >= LONG_POLL_MIN_NS
    }

    /// Waits until monotonic `until` in a check-in the data server holds until the sync
    /// table changes: `Got` if it did (the answer is in `heard` when the server held it),
    /// `TimedOut` at `until`. The request runs on a thread of its own so that a stop is
    /// never kept waiting by it: that thread ends when its request does.
    fn long_poll(&mut self, control: &Arc<Control>, until: i64) -> Waited<()> {
        if let Some(slot) = &self.polling {
            if Arc::strong_count(slot) > 1 {
                return sleep_rest(control, until);
            }
            self.polling = None;
        }
        let left_ms = ((until - mono_ns()) / 1_000_000).max(0) as u64;
        let wait_ms = left_ms.min(self.rng.u64(LONG_POLL_MAX_MS));
        let (req, _) = self.checkin_request(wait_ms);
        let timeout = self.shared.options.checkin_timeout + Duration::from_millis(wait_ms);
        let req = req.config().timeout_recv_response(Some(timeout)).build();
        let slot: Arc<Mutex<Option<Heard>>> = Arc::default();
        let (out, poke) = (slot.clone(), control.clone());
        let spawned = std::thread::Builder::new()
            .name("lockstep-long-poll".into())
            .spawn(move || {
                let heard = req.call();
                *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(heard);
                poke.poke();
            });
        if spawned.is_err() {
            return sleep_rest(control, until);
        }
        let grace = self.shared.options.checkin_timeout.as_nanos() as i64;
        match control.wait_for(&slot, until.saturating_add(grace)) {
            Waited::Stopped => Waited::Stopped,
            Waited::TimedOut => {
                self.polling = Some(slot);
                Waited::TimedOut
            }
            Waited::Got(Ok(resp)) => {
                let held = resp.headers().get(wire::HEADER_HELD);
                // Busy: it holds as many as it may; long-poll again after the next check-in.
                let busy = held.is_some_and(|v| v == wire::HELD_BUSY);
                match (resp.status().as_u16(), held.is_some() && !busy) {
                    (200, true) => {
                        self.heard = Some(resp);
                        Waited::Got(())
                    }
                    // Changed before it could be held: an ordinary check-in fetches it.
                    (200, false) => Waited::Got(()),
                    (304, false) if !busy => {
                        let retry = (NO_LONG_POLL_INTERVALS * self.interval_ns())
                            .clamp(LONG_POLL_MIN_NS, NO_LONG_POLL_MAX_NS);
                        self.no_long_poll = Some((self.server, mono_ns() + retry));
                        sleep_rest(control, until)
                    }
                    // Its time ran out, or an error the planned check-in will meet.
                    _ => sleep_rest(control, until),
                }
            }
            Waited::Got(Err(_)) => sleep_rest(control, until),
        }
    }

    fn base_url(&self) -> &str {
        let urls = &self.shared.options.urls;
        urls.get(self.server)
            .or(urls.first())
            .map_or(self.shared.options.url.as_str(), String::as_str)
    }

    /// After a failure, the next data server of the list (the backoff before the next try
    /// applies as ever). Its clock is measured afresh by its own check-ins: the staged version
    /// is re-armed from the new instance's estimate at the next check-in, never from a mix of
    /// two instances' samples, which would be two clocks.
    fn fail_over(&mut self) {
        let n = self.shared.options.urls.len();
        if n > 1 {
            self.server = (self.server + 1) % n;
            // The ETag belongs to the table as one instance served it.
            self.etag = None;
        }
    }

    fn interval_ns(&self) -> i64 {
        self.table.map_or(10_000_000_000, |t| t.interval_us * 1000)
    }

    fn backoff_ns(&mut self) -> i64 {
        let interval_ns = self.interval_ns();
        backoff_ns(&mut self.rng, self.failures, interval_ns)
    }

    /// True if an armed version became active.
    fn promote_due(&mut self) -> bool {
        let Some(p) = self.shared.activation.promote_due(mono_ns()) else {
            return false;
        };
        let s = &self.shared.stats;
        s.activations.fetch_add(1, Relaxed);
        s.last_activation_us.store(p.activation_us, Relaxed);
        s.last_activation_mono_ns.store(p.at_mono_ns, Relaxed);
        s.lagging.store(0, Relaxed);
        // A version armed only after its instant had passed was switched to when it was
        // armed, late (see `cycle`): that record stands.
        let armed_late = self.switch.is_some_and(|w| {
            w.late && w.version == p.version && w.activation_us == p.activation_us
        });
        if !armed_late {
            self.switch = Some(Switch {
                version: p.version,
                checksum: p.checksum,
                activation_us: p.activation_us,
                at_mono_ns: p.at_mono_ns,
                late: false,
            });
        }
        true
    }

    /// Records a switch readers made just now, after the activation time it belonged to.
    fn switched_late(&mut self, version: &Version, activation_us: i64) {
        self.switch = Some(Switch {
            version: version.number(),
            checksum: version.checksum(),
            activation_us,
            at_mono_ns: mono_ns(),
            late: true,
        });
    }

    /// This handle's share of its host's work: the network cycle if it leads the host (or
    /// has no host cache), else following the leader's schedule.
    fn step(&mut self) -> Result<i64, String> {
        let shared = self.shared.clone();
        let Some(cache) = shared.cache.as_ref() else {
            return self.cycle();
        };
        let now = mono_ns();
        if self.lead.is_none() && now >= self.next_lead_try_ns {
            self.next_lead_try_ns = now + LEAD_RETRY_NS + self.rng.i64(0..LEAD_RETRY_NS / 2);
            match cache.try_lead() {
                Ok(Some(lock)) => {
                    self.lead = Some(lock);
                    self.shared
                        .stats
                        .host_role
                        .store(HostRole::Leader as u64, Relaxed);
                    cache.remove_member(self.pid);
                }
                Ok(None) => {}
                Err(e) => self.shared.set_error(&e.to_string()),
            }
        }
        if self.lead.is_some() {
            let result = self.cycle();
            // A heartbeat even after a failure: followers see the leader is alive.
            self.write_schedule();
            return result;
        }
        self.follow()
    }

    /// A follower's step: apply the leader's schedule from the host cache; fetch a version
    /// from the network only if the host cache lacks it (a corrupt file, a full disk).
    fn follow(&mut self) -> Result<i64, String> {
        let shared = self.shared.clone();
        let Some(cache) = shared.cache.as_ref() else {
            return self.cycle();
        };
        let now = mono_ns();
        let schedule = cache.read_schedule().map_err(|e| e.to_string())?;
        if let Some(s) = &schedule {
            if let Err(e) = following::apply_schedule(&self.shared, cache, s, true) {
                self.shared.set_error(&e);
                return self.cycle();
            }
            if s.confirmed_us > 0 && s.confirmed_mono_ns >= self.started_ns {
                self.shared.stats.unconfirmed.store(0, Relaxed);
            }
        }
        if now >= self.next_member_ns {
            self.next_member_ns = now + MEMBER_PERIOD_NS;
            let st = self.shared.stats();
            let _ = cache.write_member(&Member {
                pid: self.pid,
                name: self.shared.options.name.clone(),
                active: st.active_version,
                staged: st.staged_version,
                lagging: st.lagging,
                written_mono_ns: now,
            });
        }
        Ok(now + FOLLOW_PERIOD_NS)
    }

    /// The leader's word to its host: what is active and staged, and when.
    fn write_schedule(&self) {
        let (Some(cache), Some(_)) = (&self.shared.cache, &self.lead) else {
            return;
        };
        let confirmed = self.shared.stats.confirmed_us.load(Relaxed);
        let s = following::leader_schedule(&self.shared, confirmed, self.confirmed_mono_ns);
        if let Err(e) = cache.write_schedule(&s) {
            self.shared.set_error(&e.to_string());
        }
        let keep: Vec<FileRef> = s
            .active
            .into_iter()
            .chain(s.staged.map(|st| st.file))
            .collect();
        cache.prune(&keep);
    }

    fn auth(&self) -> Option<String> {
        self.shared
            .options
            .token
            .as_ref()
            .map(|t| format!("Bearer {t}"))
    }

    /// A check-in request; a long-poll one (`wait_ms` > 0) carries no switch report, which
    /// an ordinary check-in sends with its clock estimate. Returns the report it carries.
    fn checkin_request(
        &self,
        wait_ms: u64,
    ) -> (
        ureq::RequestBuilder<ureq::typestate::WithoutBody>,
        Option<(Switch, Estimate)>,
    ) {
        let o = &self.shared.options;
        let stats = &self.shared.stats;
        let previous = self.clocks[self.server].estimate(mono_ns());
        let base = self.base_url().to_owned();
        let mut req = self
            .agent
            .get(&format!("{base}{}", wire::PATH_CHECKIN))
            .query("name", &o.name)
            .query("host", &self.host)
            .query("pid", self.pid.to_string())
            .query(
                "staged",
                self.shared
                    .activation
                    .staged()
                    .map_or(0, |s| s.0)
                    .to_string(),
            )
            .query(
                "active",
                self.shared.activation.current_number().to_string(),
            )
            .query(
                "offset_us",
                previous.map_or(0, |e| e.wall_offset_us).to_string(),
            )
            .query("error_us", previous.map_or(0, |e| e.error_us).to_string())
            .query("lagging", stats.lagging.load(Relaxed).to_string());
        if self.since_us != 0 {
            req = req.query(wire::QUERY_SINCE, self.since_us.to_string());
        }
        // The switch instant on the data server's clock, by the best offset estimate there
        // is now: the one the switch was armed with, or a better one measured since.
        let report = self.switch.zip(previous).filter(|_| wait_ms == 0);
        if let Some((sw, est)) = report {
            let at_us = sw.at_mono_ns.saturating_add(est.mono_offset_ns) / 1000;
            req = req
                .query(wire::QUERY_SWITCH_VERSION, sw.version.to_string())
                .query(wire::QUERY_SWITCH_CHECKSUM, wire::checksum_hex(sw.checksum))
                .query(wire::QUERY_SWITCH_ACTIVATION, sw.activation_us.to_string())
                .query(wire::QUERY_SWITCH_AT, at_us.to_string())
                .query(wire::QUERY_SWITCH_ERROR, est.error_us.to_string())
                .query(wire::QUERY_SWITCH_LATE, u8::from(sw.late).to_string());
        }
        if let (Some(cache), Some(_)) = (&self.shared.cache, &self.lead) {
            let members: Vec<wire::ReportedMember> = cache
                .members(mono_ns() - MEMBER_STALE_NS)
                .iter()
                .map(|m| wire::ReportedMember {
                    pid: m.pid,
                    active: m.active,
                    staged: m.staged,
                    lagging: m.lagging,
                    name: m.name.clone(),
                })
                .collect();
            req = req
                .query("role", "leader")
                .query("members", wire::ReportedMember::encode(&members));
        }
        if let Some(a) = self.auth() {
            req = req.header("Authorization", &a);
        }
        if let (Some(etag), Some(_)) = (&self.etag, &self.table) {
            req = req.header("If-None-Match", etag);
        }
        if wait_ms > 0 {
            req = req.query(wire::QUERY_WAIT_MS, wait_ms.to_string());
        }
        (req, report)
    }

    fn checkin(&mut self) -> Result<(SyncTable, Estimate), String> {
        let stats = &self.shared.stats;
        let base = self.base_url().to_owned();
        // A held answer's time headers bracket the wait, not a round trip: no clock sample.
        let (result, timing, report) = match self.heard.take() {
            Some(heard) => (Ok(heard), None, None),
            None => {
                let (req, report) = self.checkin_request(0);
                let skew = self.shared.options.clock_skew_us;
                let sent_ns = mono_ns();
                let wall_sent = wall_us() + skew;
                let result = req.call();
                let received_ns = mono_ns();
                let wall_received = wall_us() + skew;
                let timing = (sent_ns, received_ns, wall_sent, wall_received);
                (result, Some(timing), report)
            }
        };
        let mut resp = result.map_err(|e| format!("check-in to {base} failed: {e}"))?;
        let status = resp.status().as_u16();
        let server_us = resp
            .headers()
            .get(wire::HEADER_SERVER_TIME)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        let server_received_us = resp
            .headers()
            .get(wire::HEADER_SERVER_RECEIVED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| format!("check-in answer unreadable: {e}"))?;
        let table = match status {
            200 => {
                let r = parse_checkin(&body)?;
                self.etag = resp
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                self.announced = [
                    (
                        r.sync.staged_version,
                        wire::parse_checksum_hex(&r.staged_checksum),
                    ),
                    (
                        r.sync.active_version,
                        wire::parse_checksum_hex(&r.active_checksum),
                    ),
                ];
                self.blob_paths = [
                    (r.sync.staged_version, r.staged_blob),
                    (r.sync.active_version, r.active_blob),
                ];
                self.delta_path = (r.sync.staged_version, r.staged_delta_from_active);
                r.sync
            }
            304 => self
                .table
                .ok_or("data server answered 304 to a first check-in")?,
            _ => {
                self.refused |= refused(status);
                return Err(http_error("check-in", status, &body));
            }
        };
        let server_us = server_us.ok_or("check-in answer lacks the server time header")?;
        plausible(&table, server_us)?;
        if report.is_some() {
            // Heard: the next check-ins report nothing until the next switch.
            self.switch = None;
        }
        if self.since_us == 0 {
            self.since_us = server_us;
        }
        let estimate = match timing {
            Some((sent_ns, received_ns, wall_sent, wall_received)) => {
                self.clocks[self.server].add(Sample {
                    sent_ns,
                    received_ns,
                    server_us,
                    server_received_us,
                    wall_mid_us: wall_sent + (wall_received - wall_sent) / 2,
                })
            }
            None => self.clocks[self.server]
                .estimate(mono_ns())
                .ok_or("a held check-in answered before any clock sample")?,
        };
        self.table = Some(table);
        stats.checkins.fetch_add(1, Relaxed);
        stats.last_checkin_us.store(server_us, Relaxed);
        stats
            .clock_offset_us
            .store(estimate.wall_offset_us, Relaxed);
        stats.clock_error_us.store(estimate.error_us, Relaxed);
        stats
            .next_activation_us
            .store(table.activation_time_us, Relaxed);
        Ok((table, estimate))
    }

    /// True unless the data server announced a different checksum for this version number.
    fn announced_matches(&self, v: &Version) -> bool {
        self.announced
            .iter()
            .find(|(n, _)| *n == v.number())
            .and_then(|(_, c)| *c)
            .is_none_or(|c| c == v.checksum())
    }

    /// The blob path the data server gave for version `number`, if it is one: a path under
    /// [`wire::PATH_BLOBS`] naming this number and the announced checksum. Anything else (an
    /// older data server's empty field, or a path elsewhere) sends the download to
    /// `/v1/versions/{number}`.
    fn blob_path(&self, number: u64) -> Option<String> {
        let (_, path) = self
            .blob_paths
            .iter()
            .find(|(v, p)| *v == number && !p.is_empty())?;
        let (name, _) = wire::split_key(path.strip_prefix(wire::PATH_BLOBS)?.strip_prefix('/')?)?;
        let (version, checksum) = wire::parse_blob_name(name)?;
        (version == number && Some(checksum) == self.announced_checksum(number))
            .then(|| path.clone())
    }

    /// Downloads and verifies version `number`: from its blob URL (through `blob_url`, an HTTP
    /// cache, when set, and from the data server if that fails), else from the data server's
    /// version route.
    /// A request of the tracked fetch is on its way: it counts as advancing until its answer
    /// is due (the data server may be making a delta first, a cache filling from its origin),
    /// then by the bytes that arrive. Each attempt starts afresh: an earlier one may have left
    /// the fetch marked as all received.
    fn transfer_request_sent(&self) {
        let o = &self.shared.options;
        let head_due = (o.connect_timeout + o.checkin_timeout).as_nanos() as i64;
        self.shared
            .transfer_progress(mono_ns().saturating_add(head_due));
    }

    /// Refuses to begin another request once `sync_close` has begun.
    fn not_closing(&self, number: u64) -> Result<(), String> {
        match self.shared.closing.load(Relaxed) {
            false => Ok(()),
            true => Err(format!(
                "closing: version {number} is left to the host's next leader"
            )),
        }
    }

    fn download(&mut self, number: u64) -> Result<Arc<Version>, String> {
        let Some(path) = self.blob_path(number) else {
            let url = format!("{}{}/{number}", self.base_url(), wire::PATH_VERSIONS);
            return self.download_from(number, &url, true);
        };
        let origin = format!("{}{path}", self.base_url());
        match self.shared.options.blob_url.clone() {
            Some(cache) => self
                .download_from(number, &format!("{cache}{path}"), false)
                .or_else(|e| {
                    self.shared.set_error(&e);
                    self.not_closing(number)?;
                    self.download_from(number, &origin, false)
                }),
            None => self.download_from(number, &origin, false),
        }
    }

    /// One download of version `number` from `url`, with the read token only when `token`
    /// (blob URLs are capabilities: a token would go to every HTTP cache on the way).
    fn download_from(
        &mut self,
        number: u64,
        url: &str,
        token: bool,
    ) -> Result<Arc<Version>, String> {
        self.transfer_request_sent();
        let o = &self.shared.options;
        let mut req = self
            .agent
            .get(url)
            .header("Accept-Encoding", "zstd")
            .config()
            .timeout_recv_body(Some(o.download_timeout))
            .build();
        if let Some(a) = self.auth().filter(|_| token) {
            req = req.header("Authorization", &a);
        }
        let mut resp = req
            .call()
            .map_err(|e| format!("download of version {number} failed: {e}"))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp
                .body_mut()
                .with_config()
                .limit(1 << 16)
                .read_to_vec()
                .unwrap_or_default();
            self.refused |= refused(status);
            return Err(http_error(
                &format!("download of version {number}"),
                status,
                &body,
            ));
        }
        let zstd = zstd_encoded(resp.headers())
            .map_err(|e| format!("download of version {number}: {e}"))?;
        let announced = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Compressed bytes are fewer than the version's (the data server sends zstd only when
        // it is smaller), so the cap applies to them too.
        if announced.is_some_and(|n| n > o.max_version_bytes) {
            return Err(format!(
                "version {number} is larger than max_version_bytes ({})",
                o.max_version_bytes
            ));
        }
        // The announced length is the server's word, not a fact: it may refuse a download
        // early, but memory grows only with the bytes that actually arrive.
        let cap = match zstd {
            true => o.max_version_bytes,
            false => announced.map_or(o.max_version_bytes, |n| n.min(o.max_version_bytes)),
        };
        let mut buf = VersionBuf::new();
        let mut body = Counted {
            inner: resp
                .body_mut()
                .with_config()
                .limit(o.max_version_bytes.saturating_add(1))
                .reader(),
            bytes: 0,
            shared: &self.shared,
        };
        let read = match zstd {
            false => buf.read_capped(&mut body, cap, announced),
            true => {
                let mut decoder = zstd_decoder(&mut body, o.max_version_bytes)
                    .map_err(|e| format!("download of version {number}: zstd: {e}"))?;
                // Never the frame's content size: what it declares is the server's word too.
                buf.read_capped(&mut decoder, cap, None)
            }
        };
        // As transferred: the compressed bytes of a zstd answer, counted even when the
        // download then fails.
        let stats = &self.shared.stats;
        stats.bytes_downloaded.fetch_add(body.bytes, Relaxed);
        read.map_err(|e| format!("download of version {number} broke off: {e}"))?;
        self.shared.transfer_received();
        let announced = self
            .announced
            .iter()
            .find(|(v, _)| *v == number)
            .and_then(|(_, c)| *c);
        let verified = Version::verify(buf, Some(number))
            .map_err(|e| format!("version {number} rejected: {e}"))
            .and_then(|v| match announced {
                Some(c) if c != v.checksum() => Err(format!(
                    "version {number} rejected: checksum {} is not the {} the data server announced",
                    wire::checksum_hex(v.checksum()),
                    wire::checksum_hex(c)
                )),
                _ => Ok(Arc::new(v)),
            });
        match &verified {
            Ok(_) => self.shared.stats.full_downloads.fetch_add(1, Relaxed),
            Err(_) => self.shared.stats.rejected_versions.fetch_add(1, Relaxed),
        };
        verified
    }

    /// Version `number` as the data server means it now: one inherited from before a fork if
    /// its checksum is the announced one, else downloaded.
    fn obtain(&mut self, number: u64) -> Result<Arc<Version>, String> {
        let inherited = self.inherited.as_ref().and_then(|vs| {
            vs.iter()
                .find(|v| v.number() == number && self.announced_matches(v))
                .cloned()
        });
        if let Some(v) = inherited {
            return Ok(v);
        }
        let announced = self.announced_checksum(number);
        self.not_closing(number)?;
        let shared = self.shared.clone();
        let Some(cache) = shared.cache.as_ref() else {
            return self.fetch(number);
        };
        // Another process of the host may have fetched it already (a leader since gone).
        if let Some(checksum) = announced {
            if let Ok(Some(v)) = cache.load(FileRef {
                version: number,
                checksum,
            }) {
                return Ok(v);
            }
        }
        let _tracked = Tracked::start(&shared);
        // Again once tracked: a close that began in between may not have seen the fetch.
        self.not_closing(number)?;
        let v = self.fetch(number)?;
        match cache.publish(&v) {
            Ok(mapped) => Ok(mapped),
            Err(e) => {
                // A full disk or a broken directory costs this process memory, never a read.
                self.shared.set_error(&e.to_string());
                self.shared.stats.cache_failures.fetch_add(1, Relaxed);
                Ok(v)
            }
        }
    }

    fn announced_checksum(&self, number: u64) -> Option<u64> {
        self.announced
            .iter()
            .find(|(v, _)| *v == number)
            .and_then(|(_, c)| *c)
    }

    /// Version `number` from the network: rebuilt from a delta when the data server offers
    /// one that applies, else downloaded whole.
    fn fetch(&mut self, number: u64) -> Result<Arc<Version>, String> {
        match self.via_delta(number) {
            Some(v) => Ok(v),
            None => {
                self.not_closing(number)?;
                self.download(number)
            }
        }
    }

    /// Staged version `number` rebuilt from the active version this client holds and the
    /// delta offered with the table. None means "download it whole": quietly when there is no
    /// delta to use (none offered, not holding its base, the data server has none smaller),
    /// and after any failure, which counts as a rejected version and stays in `last_error`.
    fn via_delta(&mut self, number: u64) -> Option<Arc<Version>> {
        let table = self.table?;
        if number != table.staged_version || number == table.active_version {
            return None;
        }
        let base_checksum = self.announced_checksum(table.active_version)?;
        let base = self
            .shared
            .activation
            .pin()
            .filter(|v| v.number() == table.active_version && v.checksum() == base_checksum)?;
        let path = self.delta_path(number, base_checksum)?;
        match self.apply_delta(number, &base, &path) {
            Ok(Some(v)) => {
                self.shared.stats.deltas_applied.fetch_add(1, Relaxed);
                Some(v)
            }
            Ok(None) => None,
            Err(e) => {
                self.shared.stats.rejected_versions.fetch_add(1, Relaxed);
                self.shared
                    .set_error(&format!("{e}; downloading version {number} whole"));
                None
            }
        }
    }

    /// The delta path offered for staged version `number`, if it is one: under
    /// [`wire::PATH_DELTAS`], from `base_checksum` to this number with its announced checksum.
    fn delta_path(&self, number: u64, base_checksum: u64) -> Option<String> {
        let (staged, path) = &self.delta_path;
        if *staged != number || path.is_empty() {
            return None;
        }
        let segment = path.strip_prefix(wire::PATH_DELTAS)?.strip_prefix('/')?;
        let (name, _) = wire::split_key(segment)?;
        let (base, version, checksum) = wire::parse_delta_name(name)?;
        (base == base_checksum
            && version == number
            && Some(checksum) == self.announced_checksum(number))
        .then(|| path.clone())
    }

    /// Downloads the delta at `path` (through `blob_url` when set), applies it to `base` and
    /// verifies the result completely, against the checksum the data server announced; Ok(None)
    /// when the data server has no delta worth sending (404).
    fn apply_delta(
        &mut self,
        number: u64,
        base: &Version,
        path: &str,
    ) -> Result<Option<Arc<Version>>, String> {
        self.transfer_request_sent();
        let o = &self.shared.options;
        let max = o.max_version_bytes;
        let origin = o.blob_url.as_deref().unwrap_or(self.base_url());
        let what = format!("delta to version {number}");
        // No token: the URL is the capability, and a token would reach every cache on the way.
        let mut resp = self
            .agent
            .get(&format!("{origin}{path}"))
            .header("Accept-Encoding", "zstd")
            .config()
            .timeout_recv_body(Some(o.download_timeout))
            .build()
            .call()
            .map_err(|e| format!("download of the {what} failed: {e}"))?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            let body = resp
                .body_mut()
                .with_config()
                .limit(1 << 16)
                .read_to_vec()
                .unwrap_or_default();
            return Err(http_error(
                &format!("download of the {what}"),
                status,
                &body,
            ));
        }
        let zstd = zstd_encoded(resp.headers()).map_err(|e| format!("{what}: {e}"))?;
        let length = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if length.is_some_and(|n| n > max) {
            return Err(format!("{what} is larger than max_version_bytes ({max})"));
        }
        let mut body = Counted {
            inner: resp
                .body_mut()
                .with_config()
                .limit(max.saturating_add(1))
                .reader(),
            bytes: 0,
            shared: &self.shared,
        };
        // A delta is smaller than the version it makes, so max_version_bytes caps it too.
        let mut bytes = VersionBuf::new();
        let read = match zstd {
            false => bytes.read_capped(&mut body, length.map_or(max, |n| n.min(max)), length),
            true => {
                let mut decoder =
                    zstd_decoder(&mut body, max).map_err(|e| format!("{what}: zstd: {e}"))?;
                bytes.read_capped(&mut decoder, max, None)
            }
        };
        let transferred = body.bytes;
        self.shared
            .stats
            .bytes_downloaded
            .fetch_add(transferred, Relaxed);
        read.map_err(|e| format!("download of the {what} broke off: {e}"))?;
        self.shared.transfer_received();
        let rebuilt = crate::delta::apply(base.bytes(), &bytes, max)
            .map_err(|e| format!("{what} rejected: {e}"))?;
        let v =
            Version::verify(rebuilt, Some(number)).map_err(|e| format!("{what} rejected: {e}"))?;
        match self.announced_checksum(number) {
            Some(c) if c == v.checksum() => Ok(Some(Arc::new(v))),
            _ => Err(format!(
                "{what} rejected: it makes checksum {}, not the one the data server announced",
                wire::checksum_hex(v.checksum())
            )),
        }
    }

    /// One retrieval cycle; returns the monotonic instant of the next check-in.
    fn cycle(&mut self) -> Result<i64, String> {
        let (table, est) = self.checkin()?;
        let activation = &self.shared.activation;
        let now = mono_ns();
        // A version counts as held only if it is the one the data server means by that number:
        // a data server restored from a backup or started afresh reuses numbers.
        let held = activation
            .pin()
            .filter(|v| self.announced_matches(v))
            .map_or(0, |v| v.number());
        let ours = activation.current_number();

        // Catch up when we do not hold what should be active now — unless it is armed and
        // due within our clock error (the data server's clock passed the instant a moment
        // before ours will).
        if held != table.active_version && held != table.staged_version {
            let armed = activation
                .armed_version(table.active_version)
                .filter(|(v, _)| self.announced_matches(v));
            let due_within_error = armed
                .as_ref()
                .is_some_and(|(_, at)| *at <= now + est.error_us * 1000 + 1_000_000);
            if !due_within_error {
                let version = match armed {
                    Some((v, _)) => v,
                    None => self.obtain(table.active_version)?,
                };
                self.shared.activation.activate_now(version.clone());
                let s = &self.shared.stats;
                s.activations.fetch_add(1, Relaxed);
                if ours != 0 {
                    s.lagging.store(1, Relaxed);
                    self.switched_late(&version, 0);
                }
                self.shared.mark_ready();
            }
        } else if held != 0 {
            self.shared.mark_ready();
            if self.inherited.is_some() && held == table.active_version {
                // A fork child's inherited version, now confirmed as the farm's active one.
                self.shared.stats.lagging.store(0, Relaxed);
            }
        }

        // The table names one staged version: any other still ahead was staged once and
        // replaced since (a rollback, a restage), and must not go live while the new one is
        // on its way, however slow that way is.
        let keep = (table.staged_version != table.active_version).then(|| {
            (
                table.staged_version,
                self.announced_checksum(table.staged_version),
            )
        });
        self.shared.activation.disarm_others(keep, mono_ns());

        let downloaded = self.downloaded.take();
        if table.staged_version != table.active_version {
            let at = est.mono_at(table.activation_time_us);
            let armed = self
                .shared
                .activation
                .armed_version(table.staged_version)
                .filter(|(v, _)| self.announced_matches(v));
            let downloaded = downloaded
                .filter(|v| v.number() == table.staged_version && self.announced_matches(v));
            let version = match (armed, downloaded) {
                (Some((v, _)), _) => v,
                (None, _) if held == table.staged_version => {
                    // Already active (we are a hair ahead of the data server).
                    return Ok(now + 10_000_000 + self.rng.i64(0..10_000_000));
                }
                // Downloaded in the last cycle, and this check-in still names it.
                (None, Some(v)) => v,
                (None, None) => {
                    let v = self.obtain(table.staged_version)?;
                    let poll = checkin_period_ns(table.interval_us);
                    if check_in_before_arming(now, mono_ns(), at, poll, est.error_us * 1000) {
                        self.downloaded = Some(v);
                        return Ok(mono_ns());
                    }
                    v
                }
            };
            let before = self.shared.activation.current_number();
            self.shared
                .activation
                .arm(version.clone(), table.activation_time_us, at);
            if before != version.number()
                && self.shared.activation.current_number() == version.number()
            {
                // Its instant passed while it was on its way: readers switch now, late.
                self.switched_late(&version, table.activation_time_us);
            }
        }

        self.inherited = None;
        let stats = &self.shared.stats;
        stats.unconfirmed.store(0, Relaxed);
        stats
            .confirmed_us
            .store(stats.last_checkin_us.load(Relaxed), Relaxed);
        self.confirmed_mono_ns = mono_ns();
        let now = mono_ns();
        let at = est.mono_at(table.activation_time_us);
        // The data server counts on this cadence (see `wire::CHECKIN_PERIOD_MIN_US`) when it
        // moves an activation earlier and when it decides a member has gone silent.
        let poll = checkin_period_ns(table.interval_us);
        // Spread the check-ins that follow an activation so the farm does not stampede the
        // data server; the first one to arrive performs the rotation.
        let spread = clamp_ns(table.min_window_us * 1000 / 10, 1_000_000, 1_000_000_000);
        Ok(if at > now {
            (at + self.rng.i64(1_000_000..=spread)).min(now + poll)
        } else {
            now + self.rng.i64(1_000_000..=spread)
        })
    }
}

/// Tracks one fetch for the host cache in [`Shared::transfer`], until dropped.
struct Tracked<'a>(&'a Shared);

impl<'a> Tracked<'a> {
    fn start(shared: &'a Shared) -> Tracked<'a> {
        shared.transfer.store(mono_ns().max(1), Relaxed);
        Tracked(shared)
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.0.transfer.store(0, Relaxed);
    }
}

/// Counts the bytes that pass through a reader (a download's size as transferred), and
/// marks the tracked fetch as advancing with each.
struct Counted<'a, R> {
    inner: R,
    bytes: u64,
    shared: &'a Shared,
}

impl<R: std::io::Read> std::io::Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if n > 0 {
            self.shared.transfer_progress(mono_ns());
        }
        Ok(n)
    }
}

/// Largest zstd window a client accepts, as a power of two: 128 MiB (zstd's own default
/// limit), or less when `max_version_bytes` is smaller. A frame may ask for up to 2 GiB of
/// window, which the decoder would allocate before producing a byte; the data server compresses
/// whole versions, whose window never exceeds their size.
fn zstd_window_log(max_version_bytes: u64) -> u32 {
    let bits = 64 - max_version_bytes.saturating_sub(1).leading_zeros();
    bits.clamp(10, 27)
}

/// A streaming zstd decoder of `body` whose window is bounded by [`zstd_window_log`]; the
/// caller caps what it decodes.
fn zstd_decoder<'a>(
    body: &'a mut dyn std::io::Read,
    max_version_bytes: u64,
) -> std::io::Result<impl std::io::Read + 'a> {
    let mut decoder = zstd::stream::read::Decoder::new(body)?;
    decoder.window_log_max(zstd_window_log(max_version_bytes))?;
    Ok(decoder)
}

fn sleep_rest(control: &Control, until: i64) -> Waited<()> {
    if control.sleep_until(until) {
        Waited::Stopped
    } else {
        Waited::TimedOut
    }
}

/// Whether a download's body is zstd (the only encoding the client asks for); any other
/// encoding is refused rather than read as a version.
fn zstd_encoded(headers: &ureq::http::HeaderMap) -> Result<bool, String> {
    match headers
        .get("content-encoding")
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("identity") => Ok(false),
        Some("zstd") => Ok(true),
        Some(other) => Err(format!("unrequested content-encoding '{other}'")),
    }
}

/// The body of a check-in answer (200). Public for the `checkin` fuzz target, which feeds it
/// and [`plausible`] arbitrary bytes.
pub fn parse_checkin(body: &[u8]) -> Result<CheckinResponse, String> {
    serde_json::from_slice(body).map_err(|e| format!("check-in answer is not a sync table: {e}"))
}

/// Rejects sync tables no data server sends, so that arithmetic on them cannot overflow and a
/// garbage answer that happens to parse changes nothing. The interval and window bounds are the
/// ones the data server enforces, so every table it may send is accepted.
pub fn plausible(table: &SyncTable, server_us: i64) -> Result<(), String> {
    const YEAR_US: i64 = 366 * 86_400 * 1_000_000;
    if !(wire::MIN_INTERVAL_US..=wire::MAX_INTERVAL_US).contains(&table.interval_us)
        || !(wire::MIN_WINDOW_US..=table.interval_us).contains(&table.min_window_us)
    {
        return Err("check-in answer has a nonsensical interval".into());
    }
    if !(0..=100 * YEAR_US).contains(&server_us)
        || table
            .activation_time_us
            .checked_sub(server_us)
            .is_none_or(|lead| lead.abs() > 10 * YEAR_US)
    {
        return Err("check-in answer has a nonsensical time".into());
    }
    Ok(())
}

/// 401 (no token, or one the data server does not know) and 403 (a token it refuses): the
/// data server was reached, and the same token will not do better next time.
fn refused(status: u16) -> bool {
    matches!(status, 401 | 403)
}

fn http_error(what: &str, status: u16, body: &[u8]) -> String {
    let msg = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    format!("{what}: data server answered {status}: {msg}")
}

/// Exponential backoff with equal jitter (uniform between half the ceiling and the ceiling),
/// the ceiling doubling from 50 ms per failure in a row and capped at an eighth of the
/// interval (at most 30 s), so a farm that lost the data server does not come back in
/// lockstep, and no client retries at once.
fn backoff_ns(rng: &mut fastrand::Rng, failures: u32, interval_ns: i64) -> i64 {
    let cap = clamp_ns(interval_ns / 8, 50_000_000, 30_000_000_000);
    let exp = 50_000_000i64.saturating_mul(1 << failures.min(20));
    let ceiling = exp.min(cap);
    rng.i64(ceiling / 2..=ceiling)
}

#[cfg(test)]
mod backoff_tests {
    use super::backoff_ns;

    const MS: i64 = 1_000_000;

    #[test]
    fn backoff_doubles_from_50_ms_to_an_eighth_of_the_interval_with_equal_jitter() {
        let mut rng = fastrand::Rng::with_seed(7);
        let interval = 10_000 * MS; // cap 1.25 s
        for failures in 0..40u32 {
            let ceiling = ((50 * MS) << failures.min(20)).min(1_250 * MS);
            let samples: Vec<i64> = (0..500)
                .map(|_| backoff_ns(&mut rng, failures, interval))
                .collect();
            let (lo, hi) = (
                *samples.iter().min().unwrap(),
                *samples.iter().max().unwrap(),
            );
            assert!(
                lo >= ceiling / 2 && hi <= ceiling,
                "{failures} failures: {lo}..{hi} outside {}..={ceiling}",
                ceiling / 2
            );
            // Spread over the range, not one value: clients that failed together retry apart.
            assert!(
                lo < ceiling / 2 + ceiling / 10 && hi > ceiling - ceiling / 10,
                "{failures} failures: {lo}..{hi} does not spread over {}..={ceiling}",
                ceiling / 2
            );
        }
        // Never more than 30 s, whatever the interval.
        let longest = (0..100)
            .map(|_| backoff_ns(&mut rng, 30, 3_600_000 * MS))
            .max()
            .unwrap();
        assert!(longest <= 30_000 * MS && longest > 27_000 * MS);
    }
}

#[cfg(test)]
mod arming_tests {
    use super::{check_in_before_arming, checkin_period_ns};

    const MS: i64 = 1_000_000;

    #[test]
    fn a_long_download_checks_in_again_before_arming_a_version_that_may_be_replaced() {
        // A 10 s interval: check-ins every 2.5 s.
        let poll = checkin_period_ns(10_000_000);
        assert_eq!(poll, 2_500 * MS);
        let read = 1_000_000 * MS;
        let at = read + 8_000 * MS;
        // A quick download, T still 8 s off: the next check-in comes before T.
        assert!(!check_in_before_arming(read, read + 50 * MS, at, poll, MS));
        // A download of 6 s: T is 2 s off, the next check-in only after it, and the data
        // server could have replaced the version from 2.5 s after the read on.
        assert!(check_in_before_arming(
            read,
            read + 6_000 * MS,
            at,
            poll,
            MS
        ));
        // T passed during the download.
        assert!(check_in_before_arming(
            read,
            read + 9_000 * MS,
            at,
            poll,
            MS
        ));
        // Read less than a check-in period before T: nothing could replace it since.
        let soon = read + 2_000 * MS;
        assert!(!check_in_before_arming(
            read,
            read + 1_000 * MS,
            soon,
            poll,
            MS
        ));
        // The clock error counts against it.
        let edge = read + poll;
        assert!(!check_in_before_arming(
            read,
            read + 100 * MS,
            edge,
            poll,
            0
        ));
        assert!(check_in_before_arming(
            read,
            read + 100 * MS,
            edge,
            poll,
            MS
        ));
    }
}

#[cfg(test)]
mod zstd_tests {
    use super::{zstd_decoder, zstd_window_log};
    use crate::buffer::AlignedBuf;
    use std::io::Write;

    /// A zstd stream of `len` zeros whose frame asks for a window of 2^`window_log` bytes
    /// (streamed without a pledged size, so the header states the window, not the size).
    fn frame(len: usize, window_log: u32) -> Vec<u8> {
        let mut e = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        e.window_log(window_log).unwrap();
        e.write_all(&vec![0u8; len]).unwrap();
        e.finish().unwrap()
    }

    fn decode(body: &[u8], max_version_bytes: u64) -> Result<usize, String> {
        let mut body: &[u8] = body;
        let mut decoder = zstd_decoder(&mut body, max_version_bytes).map_err(|e| e.to_string())?;
        let mut buf = AlignedBuf::new();
        buf.read_capped(&mut decoder, max_version_bytes, None)
            .map_err(|e| e.to_string())?;
        Ok(buf.len())
    }

    #[test]
    fn the_window_follows_max_version_bytes_within_zstds_limits() {
        assert_eq!(zstd_window_log(1), 10);
        assert_eq!(zstd_window_log(1 << 20), 20);
        assert_eq!(zstd_window_log((1 << 20) + 1), 21);
        assert_eq!(zstd_window_log(4 << 30), 27);
    }

    #[test]
    fn a_frame_asking_for_a_window_past_the_limit_is_refused_before_it_allocates_one() {
        // 1 MiB of output allowed: a window of 1 MiB decodes, one of 8 MiB is refused.
        assert_eq!(decode(&frame(1 << 20, 20), 1 << 20), Ok(1 << 20));
        let e = decode(&frame(1 << 20, 23), 1 << 20).unwrap_err();
        assert!(e.contains("memory") || e.contains("window"), "{e}");
        // And output past the cap is refused whatever the window.
        let e = decode(&frame((1 << 20) + 1, 20), 1 << 20).unwrap_err();
        assert!(e.contains("more than"), "{e}");
    }
}
