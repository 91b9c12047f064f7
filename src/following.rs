//! Following the host: how a process takes the leader's schedule from the host cache, and how
//! the leader writes it.
//!
//! The leader talks to the data server for the whole host (see [`crate::host_cache`]); every
//! other process of the host applies its schedule: the version active now, and the staged
//! version with its activation instant on CLOCK_MONOTONIC. A follower arms that very instant,
//! so a host's processes switch together to within a clock read. The same step serves a
//! process that opens while the data server is down (it serves the host's last active
//! version at once) and a `fork()` child's first call (it takes the schedule from disk before
//! its first read, without the network).

use std::sync::atomic::Ordering::Relaxed;

use crate::clock::mono_ns;
use crate::host_cache::{FileRef, HostCache, Schedule, StagedRef};
use crate::retrieval::Shared;

/// The version a schedule says reads see at monotonic `now`: the staged one once its instant
/// has passed (on this boot) if its word is trusted, else the active one.
fn due_now(s: &Schedule, now: i64, trust_staged: bool) -> Option<FileRef> {
    match s.staged {
        Some(st) if trust_staged && s.same_boot() && st.at_mono_ns <= now => Some(st.file),
        _ => s.active,
    }
}

/// Makes `shared` hold what the schedule says: the version due now, active; the staged one,
/// armed for its instant. Loads from the host cache only what it does not already hold.
/// An error means a version file is missing or does not verify: the caller falls back to the
/// network for it. `arm_staged` false takes only the active version: the staged version of a
/// schedule whose leader is gone was that leader's last word, which a rollback may have
/// replaced since; it is neither armed nor, past its instant, served.
pub fn apply_schedule(
    shared: &Shared,
    cache: &HostCache,
    s: &Schedule,
    arm_staged: bool,
) -> Result<(), String> {
    // The schedule's stats first: once the version below is active and the handle ready,
    // a reader (sync_open returning, an nginx worker's first request) must find the check-in
    // that stands behind it, not "never checked in".
    let stats = &shared.stats;
    stats.clock_offset_us.store(s.clock_offset_us, Relaxed);
    stats.clock_error_us.store(s.clock_error_us, Relaxed);
    stats.lagging.store(s.lagging as u64, Relaxed);
    if s.confirmed_us > 0 {
        stats.confirmed_us.store(s.confirmed_us, Relaxed);
    }
    let last_checkin = s.last_checkin_us.max(s.confirmed_us);
    if last_checkin > 0 {
        stats.last_checkin_us.store(last_checkin, Relaxed);
    }
    let act = &shared.activation;
    let now = mono_ns();
    if let Some(due) = due_now(s, now, arm_staged) {
        if act.pin().map(|v| FileRef::of(&v)) != Some(due) {
            let armed = act
                .armed_version(due.version)
                .map(|(v, _)| v)
                .filter(|v| v.checksum() == due.checksum);
            let version = match armed {
                Some(v) => v,
                None => cache
                    .load(due)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("version {} is not in the host cache", due.version))?,
            };
            act.activate_now(version);
            shared.stats.activations.fetch_add(1, Relaxed);
        }
        shared.mark_ready();
    }
    if arm_staged {
        // What the leader no longer stages must not go live here either (a rollback the
        // leader heard of while its successor is still on its way).
        act.disarm_others(
            s.staged.map(|st| (st.file.version, Some(st.file.checksum))),
            now,
        );
    }
    if let Some(st) = s
        .staged
        .filter(|st| arm_staged && s.same_boot() && st.at_mono_ns > now)
    {
        let armed = act
            .armed_version(st.file.version)
            .filter(|(v, _)| v.checksum() == st.file.checksum);
        match armed {
            Some((_, at)) if at == st.at_mono_ns => {}
            // The leader refined its clock estimate: the same version, a new instant.
            Some((v, _)) => act.arm(v, st.activation_us, st.at_mono_ns),
            None => {
                let v = cache
                    .load(st.file)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| {
                        format!("version {} is not in the host cache", st.file.version)
                    })?;
                act.arm(v, st.activation_us, st.at_mono_ns);
            }
        }
        shared
            .stats
            .next_activation_us
            .store(st.activation_us, Relaxed);
    }
    Ok(())
}

/// What the leader writes after each cycle and each activation.
pub fn leader_schedule(shared: &Shared, confirmed_us: i64, confirmed_mono_ns: i64) -> Schedule {
    let act = &shared.activation;
    let stats = &shared.stats;
    let mut s = Schedule::new(std::process::id());
    s.written_mono_ns = mono_ns();
    s.confirmed_us = confirmed_us;
    s.confirmed_mono_ns = confirmed_mono_ns;
    s.active = act.pin().map(|v| FileRef::of(&v));
    s.staged = act
        .staged()
        .and_then(|(number, activation_us, at_mono_ns)| {
            let (v, _) = act.armed_version(number)?;
            Some(StagedRef {
                file: FileRef::of(&v),
                activation_us,
                at_mono_ns,
            })
        });
    s.clock_offset_us = stats.clock_offset_us.load(Relaxed);
    s.clock_error_us = stats.clock_error_us.load(Relaxed);
    s.lagging = stats.lagging.load(Relaxed) != 0;
    s.last_checkin_us = stats.last_checkin_us.load(Relaxed);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;

    #[test]
    fn a_follower_shows_its_leaders_last_check_in_before_the_leaders_cycle_finished() {
        // The leader checked in and activated a version, but its cycle returned before it
        // confirmed the table (a staged version waits for another check-in, a staged download
        // failed): its followers serve that version and must not say "never checked in".
        let options = Options::parse("url=http://127.0.0.1:9").unwrap();
        let tls = crate::tls::config(None).unwrap();
        let leader = Shared::new(options.clone(), tls.clone());
        leader
            .stats
            .last_checkin_us
            .store(1_700_000_000_000_000, Relaxed);
        let s = leader_schedule(&leader, 0, 0);
        assert_eq!(s.confirmed_us, 0);

        let root = tempfile::tempdir().unwrap();
        let cache = HostCache::open(root.path(), "http://127.0.0.1:9").unwrap();
        cache.write_schedule(&s).unwrap();
        let read = cache.read_schedule().unwrap().unwrap();
        let follower = Shared::new(options, tls);
        apply_schedule(&follower, &cache, &read, true).unwrap();
        assert_eq!(
            follower.stats.last_checkin_us.load(Relaxed),
            1_700_000_000_000_000
        );
        assert_eq!(follower.stats.confirmed_us.load(Relaxed), 0);
    }
}
