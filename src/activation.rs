//! Activation: which version a read sees, and the lock-free swap from staged to active.
//!
//! # Why it is built this way
//!
//! The whole state a reader needs — the active version and the staged versions armed for
//! their activation instants — is one immutable [`State`] behind an [`ArcSwap`]. A reader does
//! one `load` (no lock, no allocation, no reference-count traffic in the common case: arc-swap
//! borrows through a per-thread debt slot) and then decides by the monotonic clock:
//!
//! * a staged version whose instant has passed is what the reader sees, **even if the retrieval
//!   thread has not woken up yet** to swap it in. So an activation is exact on the read path
//!   however late the scheduler runs the thread, and a read never waits for the thread;
//! * otherwise the active version.
//!
//! The retrieval thread is the only writer. At the instant it replaces the state with one
//! where the due staged version has become the active one — the same answer readers were
//! already computing, so the swap is invisible — and the old version is freed when its last
//! reader or snapshot lets go. No reader can see a half-activated state: it holds either the
//! old `State` or the new one, never parts of both.
//!
//! A staged version is armed at a monotonic instant computed from the data server's activation
//! time and this host's clock offset (see [`crate::clock`]), so wall-clock steps cannot move it.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::clock::mono_ns;
use crate::format::{self, FormatError, VersionBuf};

/// Where a version's bytes live.
enum Bytes {
    /// Downloaded into this process.
    Heap(VersionBuf),
    /// A file of the host cache, mapped read-only: every process on the host shares its pages.
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Heap(b) => b,
            Bytes::Mapped(m) => m,
        }
    }
}

/// One verified version held in memory, queried in place.
pub struct Version {
    number: u64,
    checksum: u64,
    buf: Bytes,
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version")
            .field("number", &self.number)
            .field("bytes", &self.buf.len())
            .finish()
    }
}

impl Version {
    /// Accepts downloaded bytes only if they verify completely and are the version asked for.
    pub fn verify(buf: VersionBuf, expected: Option<u64>) -> Result<Version, FormatError> {
        Self::verify_bytes(Bytes::Heap(buf), expected)
    }

    /// Accepts a mapped file of the host cache only if it verifies completely: a file is
    /// never trusted for having been written by a process of this host.
    pub fn verify_mapped(
        map: memmap2::Mmap,
        expected: Option<u64>,
    ) -> Result<Version, FormatError> {
        Self::verify_bytes(Bytes::Mapped(map), expected)
    }

    fn verify_bytes(buf: Bytes, expected: Option<u64>) -> Result<Version, FormatError> {
        let (header, _) = format::validate(&buf)?;
        if let Some(expected) = expected {
            if header.version != expected {
                return Err(FormatError::WrongVersion {
                    expected,
                    actual: header.version,
                });
            }
        }
        Ok(Version {
            number: header.version,
            checksum: header.checksum,
            buf,
        })
    }

    /// The version's bytes, exactly as encoded.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// True if the bytes are a mapped host-cache file rather than this process's memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self.buf, Bytes::Mapped(_))
    }

    pub fn number(&self) -> u64 {
        self.number
    }

    /// The checksum in the version's header (verified against its bytes).
    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    /// Encoded size, which is also what it costs in memory.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// The value of `key`, borrowed from the version's bytes.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        // SAFETY: `buf` passed `format::validate` in `verify` and is never mutated after.
        let entries = unsafe { format::entries_unchecked(&self.buf) };
        format::lookup_within(&self.buf, entries, key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        // SAFETY: as in `get`.
        unsafe { format::entries_unchecked(&self.buf) }.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How close to its instant an armed switch stops following refinements of the clock
/// estimate: far longer than a switch takes, far shorter than any retrieval window, and the
/// refinements it forgoes are a fraction of a millisecond.
const FREEZE_NS: i64 = 100_000_000;

/// A staged version waiting for its instant.
#[derive(Clone)]
struct Armed {
    version: Arc<Version>,
    /// Local monotonic instant of the activation, ns (see [`crate::clock::mono_ns`]).
    at_mono_ns: i64,
    /// The activation time on the data server's clock, µs; identifies the slot on the grid.
    activation_us: i64,
}

/// Everything a read decides by; immutable once published.
#[derive(Clone, Default)]
pub struct State {
    active: Option<Arc<Version>>,
    /// Sorted by instant; rarely more than one.
    armed: Vec<Armed>,
}

impl State {
    /// The version a read at monotonic time `now_ns` must see.
    #[inline]
    fn resolve(&self, now_ns: i64) -> Option<&Arc<Version>> {
        self.armed
            .iter()
            .rev()
            .find(|a| a.at_mono_ns <= now_ns)
            .map(|a| &a.version)
            .or(self.active.as_ref())
    }

    #[inline]
    fn resolve_now(&self) -> Option<&Arc<Version>> {
        if self.armed.is_empty() {
            // Nothing is pending: no need to read the clock.
            self.active.as_ref()
        } else {
            self.resolve(mono_ns())
        }
    }
}

/// What promotion did, for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    pub version: u64,
    pub checksum: u64,
    pub activation_us: i64,
    pub at_mono_ns: i64,
}

/// The active and staged caches of one handle.
#[derive(Default)]
pub struct Activation {
    state: ArcSwap<State>,
}

impl Activation {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on the version a read sees now (None before the first version arrives).
    /// Lock-free and allocation-free.
    #[inline]
    pub fn with_current<R>(&self, f: impl FnOnce(Option<&Version>) -> R) -> R {
        let state = self.state.load();
        f(state.resolve_now().map(|v| &**v))
    }

    /// Pins the version a read sees now, for as long as the caller keeps it.
    pub fn pin(&self) -> Option<Arc<Version>> {
        self.state.load().resolve_now().cloned()
    }

    /// Number of the version a read sees now (0: none yet).
    pub fn current_number(&self) -> u64 {
        self.with_current(|v| v.map_or(0, Version::number))
    }

    /// The newest armed version still ahead: its number, its activation time (data-server
    /// µs) and the local CLOCK_MONOTONIC instant (ns) that time maps to.
    pub fn staged(&self) -> Option<(u64, i64, i64)> {
        let state = self.state.load();
        let now = mono_ns();
        state
            .armed
            .iter()
            .rev()
            .find(|a| a.at_mono_ns > now)
            .map(|a| (a.version.number, a.activation_us, a.at_mono_ns))
    }

    /// An armed version with this number, if held, and its monotonic instant.
    pub fn armed_version(&self, number: u64) -> Option<(Arc<Version>, i64)> {
        self.state
            .load()
            .armed
            .iter()
            .find(|a| a.version.number == number)
            .map(|a| (a.version.clone(), a.at_mono_ns))
    }

    /// Earliest instant at which an armed version becomes active, if any.
    pub fn next_instant(&self) -> Option<i64> {
        self.state.load().armed.first().map(|a| a.at_mono_ns)
    }

    /// Makes `version` active at once (bootstrap, or catching up after a missed activation).
    /// Armed versions older than it are dropped; newer ones stay armed.
    pub fn activate_now(&self, version: Arc<Version>) {
        let current = self.state.load_full();
        let number = version.number;
        let next = State {
            active: Some(version),
            armed: current
                .armed
                .iter()
                .filter(|a| a.version.number > number)
                .cloned()
                .collect(),
        };
        self.state.store(Arc::new(next));
    }

    /// Arms a staged version for `activation_us` (data-server clock), which falls at local
    /// monotonic instant `at_mono_ns`. Re-arming the same slot replaces what was armed there
    /// (the data server rebuilt the staged version) or moves it (a better clock estimate).
    pub fn arm(&self, version: Arc<Version>, activation_us: i64, at_mono_ns: i64) {
        let current = self.state.load_full();
        // A refined clock estimate may move an armed instant, but not once it is imminent:
        // readers may be switching around it right now, and moving it then would show some
        // of them the old version after the new one (a later instant) or a switch before the
        // one they were reading under (an earlier one).
        let frozen_from = mono_ns() + FREEZE_NS;
        let imminent = current.armed.iter().any(|a| {
            a.activation_us == activation_us
                && a.version.number == version.number
                && a.version.checksum == version.checksum
                && a.at_mono_ns <= frozen_from
        });
        if imminent {
            return;
        }
        let mut armed: Vec<Armed> = current
            .armed
            .iter()
            .filter(|a| a.activation_us < activation_us && a.version.number != version.number)
            .cloned()
            .collect();
        armed.push(Armed {
            version,
            at_mono_ns,
            activation_us,
        });
        armed.sort_by_key(|a| a.at_mono_ns);
        self.state.store(Arc::new(State {
            active: current.active.clone(),
            armed,
        }));
    }

    /// What a `fork()` child does before its first read: keeps what was active at the fork
    /// instant `fork_ns` (including an armed version already due then, which the parent was
    /// serving), and disarms every version still ahead. The child's schedule is the parent's
    /// last word, which a rollback or restage may have changed since; a version the child
    /// armed on that word alone could be one the farm never activates. Returns the disarmed
    /// versions, which the child's retrieval thread may re-arm without downloading them once a
    /// check-in confirms them.
    pub fn disarm_after_fork(&self, fork_ns: i64) -> Vec<Arc<Version>> {
        let current = self.state.load_full();
        let (due, ahead): (Vec<&Armed>, Vec<&Armed>) =
            current.armed.iter().partition(|a| a.at_mono_ns <= fork_ns);
        let active = due
            .last()
            .map(|a| a.version.clone())
            .or_else(|| current.active.clone());
        self.state.store(Arc::new(State {
            active,
            armed: Vec::new(),
        }));
        ahead.into_iter().map(|a| a.version.clone()).collect()
    }

    /// Disarms every armed version still ahead of `now_ns` other than `keep` (a number, and
    /// its checksum if known). Versions whose instant has passed stay: readers see them.
    pub fn disarm_others(&self, keep: Option<(u64, Option<u64>)>, now_ns: i64) {
        let current = self.state.load_full();
        let kept = |a: &Armed| {
            a.at_mono_ns <= now_ns
                || keep.is_some_and(|(n, c)| {
                    a.version.number == n && c.is_none_or(|c| c == a.version.checksum)
                })
        };
        if current.armed.iter().all(kept) {
            return;
        }
        self.state.store(Arc::new(State {
            active: current.active.clone(),
            armed: current.armed.iter().filter(|a| kept(a)).cloned().collect(),
        }));
    }

    /// Swaps in every armed version whose instant has passed. Readers already see it (they
    /// resolve by the clock); this releases the old version and records the activation.
    pub fn promote_due(&self, now_ns: i64) -> Option<Promoted> {
        let current = self.state.load_full();
        let due = current.armed.iter().rposition(|a| a.at_mono_ns <= now_ns)?;
        let winner = &current.armed[due];
        let promoted = Promoted {
            version: winner.version.number,
            checksum: winner.version.checksum,
            activation_us: winner.activation_us,
            at_mono_ns: winner.at_mono_ns,
        };
        self.state.store(Arc::new(State {
            active: Some(winner.version.clone()),
            armed: current.armed[due + 1..].to_vec(),
        }));
        Some(promoted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode, Content};

    #[test]
    fn a_replaced_staged_version_is_disarmed_before_its_successor_arrives() {
        let a = Activation::new();
        a.activate_now(version(1, "old"));
        a.arm(version(2, "new"), 1_000, mono_ns() + 10_000_000_000);
        // The table now stages version 3 (a rollback): 2 must not go live meanwhile.
        a.disarm_others(Some((3, None)), mono_ns());
        assert!(a.armed_version(2).is_none());
        a.arm(version(3, "old"), 1_000, mono_ns() + 10_000_000_000);
        a.disarm_others(Some((3, None)), mono_ns());
        assert!(a.armed_version(3).is_some());
        a.disarm_others(None, mono_ns());
        assert!(a.armed_version(3).is_none());
        assert_eq!(a.current_number(), 1);
    }

    #[test]
    fn a_switch_that_readers_already_see_is_never_moved_back() {
        let a = Activation::new();
        a.activate_now(version(1, "old"));
        let v2 = version(2, "new");
        a.arm(v2.clone(), 1_000, mono_ns() - 1);
        assert_eq!(a.current_number(), 2);
        // A later estimate of the same instant, now in the future: readers stay on 2.
        a.arm(v2, 1_000, mono_ns() + 60_000_000_000);
        assert_eq!(a.current_number(), 2);
        // Nor does an imminent one move; a far one does.
        let v3 = version(3, "next");
        let soon = mono_ns() + 50_000_000;
        a.arm(v3.clone(), 2_000, soon);
        a.arm(v3.clone(), 2_000, soon + 30_000_000);
        assert_eq!(a.staged().unwrap().2, soon);
        let far = mono_ns() + 10_000_000_000;
        a.arm(version(4, "later"), 3_000, far);
        a.arm(version(4, "later"), 3_000, far + 1_000);
        assert_eq!(a.armed_version(4).unwrap().1, far + 1_000);
    }

    fn version(n: u64, value: &str) -> Arc<Version> {
        let mut c = Content::new();
        c.insert(b"price".to_vec(), value.as_bytes().to_vec());
        Arc::new(Version::verify(encode(n, 0, &c).unwrap(), Some(n)).unwrap())
    }

    fn read(a: &Activation) -> Option<String> {
        a.with_current(|v| {
            v.and_then(|v| v.get(b"price"))
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
        })
    }

    #[test]
    fn reads_switch_at_the_instant_without_the_thread() {
        let a = Activation::new();
        assert_eq!(read(&a), None);
        a.activate_now(version(1, "10"));
        let at = mono_ns() + 30_000_000;
        a.arm(version(2, "8"), 1_000, at);
        assert_eq!(read(&a), Some("10".into()));
        assert_eq!(a.staged(), Some((2, 1_000, at)));
        loop {
            let before = mono_ns();
            let seen = read(&a);
            let after = mono_ns();
            if after < at {
                assert_eq!(seen, Some("10".into()), "new version seen early");
            } else if before >= at {
                // Nobody promoted, yet the read sees the new version.
                assert_eq!(seen, Some("8".into()), "old version seen late");
                break;
            }
        }
        assert_eq!(a.current_number(), 2);
        let p = a.promote_due(mono_ns()).unwrap();
        assert_eq!(p.version, 2);
        assert_eq!(read(&a), Some("8".into()));
        assert_eq!(a.staged(), None);
    }

    #[test]
    fn a_pinned_version_outlives_activation() {
        let a = Activation::new();
        a.activate_now(version(1, "10"));
        let pinned = a.pin().unwrap();
        a.arm(version(2, "8"), 1, mono_ns() - 1);
        a.promote_due(mono_ns());
        assert_eq!(pinned.get(b"price"), Some(&b"10"[..]));
        assert_eq!(a.current_number(), 2);
    }

    #[test]
    fn rearming_a_slot_replaces_it_and_catch_up_drops_older() {
        let a = Activation::new();
        a.activate_now(version(1, "10"));
        let far = mono_ns() + 60_000_000_000;
        a.arm(version(2, "8"), 5, far);
        a.arm(version(3, "7"), 5, far); // the data server rebuilt the staged version
        assert_eq!(a.staged().map(|s| (s.0, s.1)), Some((3, 5)));
        a.arm(version(4, "6"), 9, far + 1);
        a.activate_now(version(3, "7"));
        assert_eq!(a.current_number(), 3);
        assert_eq!(a.staged().map(|s| (s.0, s.1)), Some((4, 9)));
    }
}
