//! The farm view: who holds what, host by host, and when a member counts as gone.
//!
//! The host is the unit of the farm. On a host with a host cache, one process (the leader)
//! checks in for all of them and lists its followers in the check-in; they never talk to the
//! data server, so they enter the view through that list, seen when their leader was. A
//! process without a host cache checks in for itself, as every process used to.
//!
//! Every process holding a handle checks in (or is listed) at least once per check-in period
//! ([`rotation::checkin_period_us`]: a quarter interval, 200 ms to 15 s), whatever it serves: a
//! pre-fork master that opened a handle keeps its retrieval thread and is listed like its
//! workers. Nothing tells the data server that a process died, so silence is the only signal:
//! a member silent for a few periods is marked stale, and one silent for [`EXPIRE_AFTER_US`]
//! leaves the view.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use lockstep::wire::{CheckinQuery, FarmMember, ReportedMember};
use serde::{Deserialize, Serialize};

use crate::rotation;

/// Check-in periods a member may miss before it is marked stale.
const STALE_AFTER_PERIODS: i64 = 3;

/// Added to the stale threshold: a client's cycle also spreads its check-in after an
/// activation (up to 1 s) and may spend seconds downloading a large version.
const STALE_SLACK_US: i64 = 5_000_000;

/// Silence after which a member is dropped from the view (and the database): ten minutes, far
/// beyond any live client's silence (at most 3 × 15 s + slack before it is stale).
pub const EXPIRE_AFTER_US: i64 = 10 * 60 * 1_000_000;

/// Silence after which a member is marked stale, for a table with this interval.
pub fn stale_after_us(interval_us: i64) -> i64 {
    STALE_AFTER_PERIODS * rotation::checkin_period_us(interval_us) + STALE_SLACK_US
}

/// What a process is to its host. The order is the view's: leaders, then processes on their
/// own, then followers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Checks in for its whole host; the other processes of its host cache follow it.
    #[serde(rename = "leader")]
    Leader,
    /// Checks in for itself only: it has no host cache. The check-in's `role` is empty.
    #[serde(rename = "")]
    Alone,
    /// Follows its leader through the host cache and never talks to the data server.
    #[serde(rename = "follower")]
    Follower,
}

impl Role {
    /// As the check-in query, the JSON and the database write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Alone => "",
            Role::Follower => "follower",
        }
    }

    /// Reads [`Role::as_str`]'s form. Anything else is a process on its own: a client that
    /// says something unknown still checks in for itself.
    pub fn parse(s: &str) -> Role {
        match s {
            "leader" => Role::Leader,
            "follower" => Role::Follower,
            _ => Role::Alone,
        }
    }
}

/// One process of the farm view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// For a follower, `offset_us` and `error_us` are its leader's: it arms the instant its
    /// leader computed, on the clock they share.
    #[serde(flatten)]
    pub process: FarmMember,
    pub role: Role,
    /// The leader whose check-in listed this follower; `null` for the others.
    #[serde(default)]
    pub leader_pid: Option<u32>,
    /// Data-server clock at the process's first check-in, as it told (0: not told, and
    /// always for a follower).
    #[serde(default)]
    pub since_us: i64,
}

/// The members a check-in at `now_us` tells about: the process itself and, from a leader, its
/// followers (the first [`lockstep::wire::MAX_REPORTED_MEMBERS`]).
pub fn members_of_checkin(q: CheckinQuery, now_us: i64) -> Vec<Member> {
    let role = match Role::parse(&q.role) {
        // Nobody is a follower by its own check-in: a process that checks in leads or is alone.
        Role::Follower => Role::Alone,
        role => role,
    };
    let followers = match role {
        Role::Leader => ReportedMember::decode(&q.members),
        _ => Vec::new(),
    };
    let mut out = Vec::with_capacity(1 + followers.len());
    for f in followers {
        // The leader's own row says what it is; a list that names it too must not demote it.
        if f.pid == q.pid {
            continue;
        }
        out.push(Member {
            process: FarmMember {
                name: f.name,
                host: q.host.clone(),
                pid: f.pid,
                staged: f.staged,
                active: f.active,
                offset_us: q.offset_us,
                error_us: q.error_us,
                lagging: f.lagging,
                last_checkin_us: now_us,
                silent_us: 0,
                stale: false,
            },
            role: Role::Follower,
            leader_pid: Some(q.pid),
            since_us: 0,
        });
    }
    let since_us = q.since_us.clamp(0, now_us);
    out.push(Member {
        process: FarmMember {
            name: q.name,
            host: q.host,
            pid: q.pid,
            staged: q.staged,
            active: q.active,
            offset_us: q.offset_us,
            error_us: q.error_us,
            lagging: q.lagging != 0,
            last_checkin_us: now_us,
            silent_us: 0,
            stale: false,
        },
        role,
        leader_pid: None,
        since_us,
    });
    out
}

/// Orders members as the view lists them: by host, then leaders, processes on their own and
/// followers, each by pid.
pub fn sort_for_view(members: &mut [Member]) {
    members.sort_by(|a, b| {
        (&a.process.host, a.role, a.process.pid, &a.process.name).cmp(&(
            &b.process.host,
            b.role,
            b.process.pid,
            &b.process.name,
        ))
    });
}

/// One host of the farm view: who leads it and what its processes hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub host: String,
    /// The leader seen last, a live one before a stale one; `null` when no process of the host
    /// has a host cache.
    pub leader_pid: Option<u32>,
    /// Live processes following a leader of this host.
    pub following: u64,
    /// Every process listed on this host, stale ones included.
    pub processes: u64,
    pub stale: u64,
    /// Live processes that missed an activation and are catching up.
    pub lagging: u64,
    /// The versions the live processes hold, the most common first.
    pub versions: Vec<HeldVersions>,
}

/// How many live processes of a host hold one active and staged version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldVersions {
    pub active: u64,
    pub staged: u64,
    pub processes: u64,
}

/// The farm grouped by host, in host order. Stale members count in `processes` and `stale`
/// only: what a probably dead process held says nothing about the host.
pub fn by_host(members: &[Member]) -> Vec<HostView> {
    let mut hosts: BTreeMap<&str, Vec<&Member>> = BTreeMap::new();
    for m in members {
        hosts.entry(&m.process.host).or_default().push(m);
    }
    hosts
        .into_iter()
        .map(|(host, members)| {
            let live = || members.iter().filter(|m| !m.process.stale);
            let leader_pid = members
                .iter()
                .filter(|m| m.role == Role::Leader)
                .max_by_key(|m| (!m.process.stale, m.process.last_checkin_us))
                .map(|m| m.process.pid);
            let mut held: HashMap<(u64, u64), u64> = HashMap::new();
            for m in live() {
                *held
                    .entry((m.process.active, m.process.staged))
                    .or_default() += 1;
            }
            let mut versions: Vec<HeldVersions> = held
                .into_iter()
                .map(|((active, staged), processes)| HeldVersions {
                    active,
                    staged,
                    processes,
                })
                .collect();
            versions.sort_by_key(|v| (std::cmp::Reverse(v.processes), v.active, v.staged));
            HostView {
                host: host.to_owned(),
                leader_pid,
                following: live().filter(|m| m.role == Role::Follower).count() as u64,
                processes: members.len() as u64,
                stale: members.iter().filter(|m| m.process.stale).count() as u64,
                lagging: live().filter(|m| m.process.lagging).count() as u64,
                versions,
            }
        })
        .collect()
}

/// Members seen since the last flush, by (name, host, pid): check-ins are written to the
/// database in one batch a second (see [`crate::store::Store::flush_batched`]), not one
/// write each.
#[derive(Default)]
pub struct Batch {
    seen: Mutex<HashMap<(String, String, u32), Member>>,
}

impl Batch {
    /// Remembers what a check-in told; a later check-in of the same process replaces it.
    pub fn record(&self, members: Vec<Member>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for m in members {
            let key = (
                m.process.name.clone(),
                m.process.host.clone(),
                m.process.pid,
            );
            seen.insert(key, m);
        }
    }

    /// Everything recorded since the last take.
    pub fn take(&self) -> Vec<Member> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.drain().map(|(_, m)| m).collect()
    }

    /// Puts back members a failed flush took, unless a newer check-in replaced them.
    pub fn restore(&self, members: Vec<Member>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for m in members {
            let key = (
                m.process.name.clone(),
                m.process.host.clone(),
                m.process.pid,
            );
            seen.entry(key).or_insert(m);
        }
    }
}

/// Fills in how long each member has been silent at `now_us`, and whether that is stale for a
/// table with this interval.
pub fn mark_silence(members: &mut [Member], now_us: i64, interval_us: i64) {
    let stale_after = stale_after_us(interval_us);
    for m in members {
        m.process.silent_us = now_us.saturating_sub(m.process.last_checkin_us).max(0);
        m.process.stale = m.process.silent_us > stale_after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_client_never_looks_stale_and_a_dead_one_does_within_a_minute() {
        for interval in [100_000, 1_000_000, 600_000_000, 86_400_000_000] {
            let stale = stale_after_us(interval);
            assert!(stale > 2 * rotation::checkin_period_us(interval) + 1_000_000);
            assert!(stale <= 60_000_000, "{interval}: {stale}");
            assert!(stale < EXPIRE_AFTER_US);
        }
    }

    fn query(s: &str) -> CheckinQuery {
        serde_json::from_value(
            s.split('&')
                .map(|kv| kv.split_once('=').unwrap())
                .map(|(k, v)| match v.parse::<u64>() {
                    Ok(n) if k != "name" && k != "host" => (k.to_owned(), n.into()),
                    _ => (k.to_owned(), v.into()),
                })
                .collect::<serde_json::Map<_, _>>()
                .into(),
        )
        .unwrap()
    }

    #[test]
    fn only_a_leader_speaks_for_followers_and_never_lists_itself_as_one() {
        let leader = members_of_checkin(
            query("name=web&host=h&pid=10&role=leader&members=11:3:4:0,10:3:4:0,bad"),
            7,
        );
        let rows: Vec<_> = leader
            .iter()
            .map(|m| (m.process.pid, m.role, m.leader_pid))
            .collect();
        assert_eq!(
            rows,
            [(11, Role::Follower, Some(10)), (10, Role::Leader, None)]
        );
        assert!(leader.iter().all(|m| m.process.last_checkin_us == 7));
        for role in ["", "follower", "boss"] {
            let alone = members_of_checkin(
                query(&format!("name=a&host=h&pid=5&role={role}&members=6:1:1:0")),
                7,
            );
            assert_eq!(alone.len(), 1, "{role}");
            assert_eq!(alone[0].role, Role::Alone, "{role}");
        }
    }

    #[test]
    fn a_host_is_led_by_its_live_leader_and_counts_only_live_followers() {
        let mut farm = members_of_checkin(
            query("name=new&host=h&pid=11&role=leader&members=12:2:2:0"),
            5,
        );
        let mut old = members_of_checkin(
            query("name=old&host=h&pid=10&role=leader&members=13:1:1:0"),
            9,
        );
        for m in &mut old {
            m.process.stale = true;
        }
        farm.extend(old);
        let hosts = by_host(&farm);
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].leader_pid, Some(11));
        assert_eq!(
            (hosts[0].following, hosts[0].processes, hosts[0].stale),
            (1, 4, 2)
        );
    }
}
