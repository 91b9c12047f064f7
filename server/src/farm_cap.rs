//! A bound on the farm rows check-ins without a token may create.
//!
//! When reads need no token, anyone who reaches the port can check in under any name, and
//! each distinct (name, host, pid) becomes a farm row until it expires. This admits at most
//! `cap` distinct processes that check in themselves, seen within the farm expiry, and at
//! most [`FOLLOWERS_PER_PROCESS`] times as many members in all (the followers a leader
//! reports); beyond that a new member's check-in is still answered but not shown in the
//! farm, and that is logged.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::farm::{Member, Role};

/// Room for followers: a leader reports up to 256, most hosts run far fewer processes.
pub const FOLLOWERS_PER_PROCESS: usize = 10;

type Key = (String, String, u32);

pub struct OpenFarm {
    cap: usize,
    expiry_us: i64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Last check-in of each admitted member, and whether it is a follower.
    seen: HashMap<Key, (i64, bool)>,
    /// Admitted members that are not followers.
    processes: usize,
    last_sweep_us: i64,
    last_warned_us: i64,
    refused_since_warned: u64,
}

impl OpenFarm {
    pub fn new(cap: usize, expiry_us: i64) -> OpenFarm {
        OpenFarm {
            cap,
            expiry_us,
            state: Mutex::default(),
        }
    }

    /// The members of an anonymous check-in that may enter the farm.
    pub fn admit(&self, members: Vec<Member>, now_us: i64) -> Vec<Member> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut admitted = Vec::with_capacity(members.len());
        for m in members {
            let key = (
                m.process.name.clone(),
                m.process.host.clone(),
                m.process.pid,
            );
            let follower = m.role == Role::Follower;
            if let Some(seen) = st.seen.get_mut(&key) {
                seen.0 = now_us;
                admitted.push(m);
                continue;
            }
            let full = |st: &State| {
                st.seen.len() >= self.cap.saturating_mul(FOLLOWERS_PER_PROCESS)
                    || (!follower && st.processes >= self.cap)
            };
            // Expired members leave room; swept at most once a second, since a sweep reads
            // every entry.
            if full(&st) && now_us - st.last_sweep_us >= 1_000_000 {
                let oldest_kept = now_us - self.expiry_us;
                st.seen.retain(|_, (last, _)| *last >= oldest_kept);
                st.processes = st.seen.values().filter(|(_, f)| !f).count();
                st.last_sweep_us = now_us;
            }
            if full(&st) {
                st.refused_since_warned += 1;
                continue;
            }
            st.seen.insert(key, (now_us, follower));
            st.processes += usize::from(!follower);
            admitted.push(m);
        }
        if st.refused_since_warned > 0 && now_us - st.last_warned_us >= 60_000_000 {
            tracing::warn!(
                "{} check-ins without a token were left out of the farm view: it already \
                 shows {} members (--max-open-farm-members); give clients a read token",
                st.refused_since_warned,
                self.cap
            );
            st.last_warned_us = now_us;
            st.refused_since_warned = 0;
        }
        admitted
    }
}
