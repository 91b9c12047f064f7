//! A bound on the farm rows check-ins without a token may create.
//!
//! When reads need no token, anyone who reaches the port can check in under any name, and
//! each distinct (name, host, pid) becomes a farm row until it expires; a leader's check-in
//! may name up to 256 followers besides. This admits at most `cap` distinct members in all,
//! followers included, seen within the farm expiry; beyond that a new member's check-in is
//! still answered but not shown in the farm, and that is logged.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::farm::{Member, Role};

type Key = (String, String, u32);

pub struct OpenFarm {
    cap: usize,
    expiry_us: i64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Last check-in of each admitted member.
    seen: HashMap<Key, i64>,
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
        // The process that checked in is decided first, so its own followers cannot take
        // the last room from it.
        let (own, followers): (Vec<Member>, Vec<Member>) =
            members.into_iter().partition(|m| m.role != Role::Follower);
        for m in own.into_iter().chain(followers) {
            let key = (
                m.process.name.clone(),
                m.process.host.clone(),
                m.process.pid,
            );
            if let Some(seen) = st.seen.get_mut(&key) {
                *seen = now_us;
                admitted.push(m);
                continue;
            }
            // Expired members leave room; swept at most once a second, since a sweep reads
            // every entry.
            if st.seen.len() >= self.cap && now_us - st.last_sweep_us >= 1_000_000 {
                let oldest_kept = now_us - self.expiry_us;
                st.seen.retain(|_, last| *last >= oldest_kept);
                st.last_sweep_us = now_us;
            }
            if st.seen.len() >= self.cap {
                st.refused_since_warned += 1;
                continue;
            }
            st.seen.insert(key, now_us);
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
