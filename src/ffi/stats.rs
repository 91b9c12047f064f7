//! `sync_stats`: a handle's counters, in a struct that grows only at its end.

use super::error::fail;
use super::sync_handle;
use super::sync_result;
use super::sync_result_code::*;
use crate::retrieval::Failure;

/// Counters and gauges of a handle. Set `struct_size` to `sizeof(sync_stats)` before calling
/// `sync_stats_get`; fields may be added at the end in later versions.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct sync_stats {
    /// Set by the caller: the size of the struct it passes.
    pub struct_size: u32,
    /// 1 if the client missed an activation and caught up late; 0 once it activates on time.
    pub lagging: u32,
    /// The version reads see now (0: none yet).
    pub active_version: u64,
    /// The version armed for the next activation (0: none).
    pub staged_version: u64,
    /// Next activation time on the data server's clock, µs since the Unix epoch (0: unknown).
    pub next_activation_us: i64,
    /// Data server's clock at the last successful check-in, µs (0: none yet).
    pub last_checkin_us: i64,
    /// Check-ins or downloads that failed in a row since the last success.
    pub consecutive_failures: u64,
    /// Data server's clock minus this host's wall clock, µs.
    pub clock_offset_us: i64,
    /// Bound on the error of the offset used for activations, µs.
    pub clock_error_us: i64,
    /// Successful check-ins.
    pub checkins: u64,
    /// Activations (on time or catching up).
    pub activations: u64,
    /// Downloads that failed verification and were discarded.
    pub rejected_versions: u64,
    /// Data-server time of the last on-time activation, µs.
    pub last_activation_us: i64,
    /// CLOCK_MONOTONIC instant of the last on-time activation, ns: the same clock in every
    /// process on a host, so activations of several clients can be compared.
    pub last_activation_mono_ns: i64,
    /// CLOCK_MONOTONIC instant at which the staged version becomes active, ns (0: none).
    pub next_activation_mono_ns: i64,
    /// What this handle does on its host: 0 no host cache (`cache_dir=`), 1 leader (talks to
    /// the data server for the host), 2 follower (follows the leader through the host cache),
    /// 3 the host cache could not be used (this process alone; `sync_last_error` says why).
    pub host_role: u32,
    /// 1 while the version served came from the host cache at open and nothing has confirmed
    /// it since (the data server may be down); 0 once a check-in has.
    pub unconfirmed: u32,
    /// Data server's clock when the version served was last confirmed current, µs: its age.
    pub confirmed_us: i64,
    /// Host-cache operations that failed (a full disk, a corrupt file); reads never fail
    /// for them.
    pub cache_failures: u64,
    /// Why the last check-in or download failed, as a `sync_result`: `SYNC_OK` while the
    /// last one succeeded (or before the first), `SYNC_UNAUTHORIZED` if the data server
    /// refused the token, `SYNC_UNREACHABLE` for anything else (`sync_last_error` says what).
    pub last_failure: u32,
    /// Bytes received for versions and deltas, as transferred (compressed when they came
    /// compressed), since the handle opened.
    pub bytes_downloaded: u64,
    /// Versions rebuilt from a delta against the active version, verified and kept.
    pub deltas_applied: u64,
    /// Versions downloaded whole.
    pub full_downloads: u64,
}

/// The size of `sync_stats` before fields were added at its end: callers built against that
/// header get that prefix filled.
const SYNC_STATS_V1_SIZE: usize = std::mem::offset_of!(sync_stats, host_role);

/// Fills `*out` (whose `struct_size` the caller has set) with the handle's statistics.
#[no_mangle]
pub extern "C" fn sync_stats_get(handle: *const sync_handle, out: *mut sync_stats) -> sync_result {
    ffi_panic_boundary!({
        let handle = try_ref!(handle);
        let out = try_out!(out);
        // SAFETY: out is non-NULL; struct_size is the first field of every version.
        let size = unsafe { (*out).struct_size } as usize;
        if size < SYNC_STATS_V1_SIZE {
            return fail(
                SYNC_INVALID_PARAMETER,
                format!(
                    "sync_stats.struct_size is {size}; this library needs at least \
                     {SYNC_STATS_V1_SIZE}"
                ),
            );
        }
        let s = handle.client.stats();
        let stats = sync_stats {
            struct_size: std::mem::size_of::<sync_stats>() as u32,
            lagging: s.lagging as u32,
            active_version: s.active_version,
            staged_version: s.staged_version,
            next_activation_us: s.next_activation_us,
            last_checkin_us: s.last_checkin_us,
            consecutive_failures: s.consecutive_failures,
            clock_offset_us: s.clock_offset_us,
            clock_error_us: s.clock_error_us,
            checkins: s.checkins,
            activations: s.activations,
            rejected_versions: s.rejected_versions,
            last_activation_us: s.last_activation_us,
            last_activation_mono_ns: s.last_activation_mono_ns,
            next_activation_mono_ns: s.next_activation_mono_ns,
            host_role: s.host_role,
            unconfirmed: s.unconfirmed as u32,
            confirmed_us: s.confirmed_us,
            cache_failures: s.cache_failures,
            last_failure: match s.last_failure {
                Failure::None => SYNC_OK,
                Failure::Unreachable => SYNC_UNREACHABLE,
                Failure::Unauthorized => SYNC_UNAUTHORIZED,
            } as u32,
            bytes_downloaded: s.bytes_downloaded,
            deltas_applied: s.deltas_applied,
            full_downloads: s.full_downloads,
        };
        // A caller built against an older header gets the fields its struct has.
        let n = size.min(std::mem::size_of::<sync_stats>());
        // SAFETY: out is non-NULL with `size` writable bytes (the caller's struct_size), and
        // n <= size; the source is a whole sync_stats.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&stats as *const sync_stats).cast::<u8>(),
                out.cast::<u8>(),
                n,
            );
            (*out).struct_size = n as u32;
        }
        SYNC_OK
    })
}
