//! Proof of activation: which members of the farm switched to each activated version, when
//! (on the data server's clock), who was late and who never said.
//!
//! At its first check-in after a switch, a client reports the version and checksum it switched
//! to, the instant its readers switched (its monotonic instant converted with its clock offset
//! estimate) with that estimate's error bound, and whether it switched on time or caught up
//! late ([`lockstep::wire::SwitchReport`]). Reports are batched like the farm view and written
//! once a second; [`prove`] judges them against the version the rotation log says went live at
//! each activation time and against the members the farm view says were up then.
//!
//! The spread is the distance between the earliest and the latest on-time switch instant, as
//! measured. Each measured instant lies within its member's error bound of the true one, so the
//! true spread is at most `spread_us + error_us`, where `error_us` is how much further apart the
//! extreme ends of those intervals are: `max(at + err) - min(at - err) - spread`. With every
//! bound equal to `e`, that is `2e`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use lockstep::wire::{self, CheckinQuery, SwitchReport};
use serde::{Deserialize, Serialize};

use crate::farm::{self, Member, Role};

/// The largest error bound a report may carry, µs: past a minute, an instant says nothing.
const MAX_ERROR_US: i64 = 60_000_000;

/// How far from the data server's clock a reported instant may lie, µs: a report is made at
/// the check-in after the switch, so its instant is in the recent past.
const MAX_AGE_US: i64 = 86_400_000_000;

/// What a report that claims an on-time switch may be off the activation time beyond twice its
/// error bound, µs. A client reports the instant it armed converted with its latest estimate,
/// which lies within its error bound of the true offset, as did the estimate it armed with:
/// the two differ by at most both bounds, and the report carries only the latest one. The
/// earlier bound is assumed no larger, and these 5 ms stand for the rest (a bound that grew).
/// A report further off is counted late whatever it claims: the data server checks what it can.
pub const ON_TIME_SLACK_US: i64 = 5_000;

/// Members listed per activation and list: enough for a large farm, bounded for the page.
pub const MAX_LISTED: usize = 2_000;

/// One member's report of a switch, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchRow {
    pub name: String,
    pub host: String,
    pub pid: u32,
    pub report: SwitchReport,
    /// Data-server clock when the report came, µs.
    pub reported_us: i64,
}

/// The switch a check-in at `now_us` reports, if it reports one worth keeping: a number the
/// data server did not send is never trusted, so an instant far from now or an absurd error
/// bound drops the report rather than skewing a spread.
pub fn row_of_checkin(q: &CheckinQuery, now_us: i64) -> Option<SwitchRow> {
    let report = q.switch_report()?;
    let plausible = (0..=MAX_ERROR_US).contains(&report.error_us)
        && report.switched_us <= now_us.saturating_add(MAX_ERROR_US)
        && report.switched_us >= now_us.saturating_sub(MAX_AGE_US)
        && report.activation_us >= 0;
    plausible.then(|| SwitchRow {
        name: q.name.clone(),
        host: q.host.clone(),
        pid: q.pid,
        report,
        reported_us: now_us,
    })
}

/// Reports seen since the last flush, by (version, name, host, pid).
#[derive(Default)]
pub struct Batch {
    seen: Mutex<HashMap<(u64, String, String, u32), SwitchRow>>,
}

impl Batch {
    pub fn record(&self, row: SwitchRow) {
        let key = (
            row.report.version,
            row.name.clone(),
            row.host.clone(),
            row.pid,
        );
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, row);
    }

    pub fn take(&self) -> Vec<SwitchRow> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.drain().map(|(_, r)| r).collect()
    }

    /// Puts back reports a failed flush took, unless newer ones replaced them.
    pub fn restore(&self, rows: Vec<SwitchRow>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for row in rows {
            let key = (
                row.report.version,
                row.name.clone(),
                row.host.clone(),
                row.pid,
            );
            seen.entry(key).or_insert(row);
        }
    }
}

/// How long reports are kept: a thousand intervals, at least an hour and at most a week.
pub fn keep_us(interval_us: i64) -> i64 {
    interval_us
        .saturating_mul(1000)
        .clamp(3_600_000_000, 7 * 86_400_000_000)
}

/// One member's switch, as an activation's proof lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switched {
    pub name: String,
    pub host: String,
    pub pid: u32,
    /// When its readers switched, data-server clock, µs.
    pub switched_us: i64,
    pub error_us: i64,
    /// `switched_us` minus the activation time.
    pub offset_us: i64,
    pub late: bool,
    /// The checksum it reported (16 hex digits).
    pub checksum: String,
}

/// A member that was up at the activation time and has not reported the switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    pub name: String,
    pub host: String,
    pub pid: u32,
    /// What it said it served at its last check-in.
    pub active: u64,
    pub last_checkin_us: i64,
}

/// `GET /v1/admin/activations`: one activation and its proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationProof {
    pub activation_time_us: i64,
    pub version: u64,
    pub checksum: String,
    /// Members that switched on time to this version with its checksum.
    pub clients_switched: u64,
    /// Members that switched to it after the activation time (they caught up).
    pub clients_late: u64,
    /// Members up at the activation time that have not reported switching to it.
    pub clients_missing: u64,
    /// Hosts with at least one member that switched on time.
    pub hosts_switched: u64,
    /// Latest minus earliest on-time switch instant, µs; `null` without on-time switches.
    pub spread_us: Option<i64>,
    /// The true spread is at most `spread_us + error_us` (see the module's documentation).
    pub error_us: Option<i64>,
    /// On-time switches, earliest first (at most [`MAX_LISTED`]).
    pub switched: Vec<Switched>,
    /// Late switches, earliest first.
    pub late: Vec<Switched>,
    pub missing: Vec<Missing>,
    /// Reports of this version number with another checksum: a member serving something
    /// else under its number. Counted neither switched nor late.
    pub mismatched: Vec<Switched>,
    /// The activation time was an urgent one (`lockstep put --urgent`), off the grid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub urgent: bool,
}

/// An activated version, as [`prove`] judges it.
#[derive(Debug, Clone, Copy)]
pub struct Activated {
    pub activation_us: i64,
    pub version: u64,
    pub checksum: u64,
}

/// Judges the reports of `activated` (reports of other versions are ignored) against the farm
/// members that were up at its time: check-in processes (leaders and processes on their own;
/// followers switch at their leader's instant and do not report) that told when they started,
/// started before the activation time and were not yet stale at it.
pub fn prove(
    activated: Activated,
    interval_us: i64,
    reports: &[SwitchRow],
    farm: &[Member],
) -> ActivationProof {
    let t = activated.activation_us;
    let switched_of = |r: &SwitchRow| Switched {
        name: r.name.clone(),
        host: r.host.clone(),
        pid: r.pid,
        switched_us: r.report.switched_us,
        error_us: r.report.error_us,
        offset_us: r.report.switched_us.saturating_sub(t),
        late: r.report.late,
        checksum: wire::checksum_hex(r.report.checksum),
    };
    let mut on_time = Vec::new();
    let mut late = Vec::new();
    let mut mismatched = Vec::new();
    let mut proved = BTreeSet::new();
    for r in reports
        .iter()
        .filter(|r| r.report.version == activated.version)
    {
        if r.report.checksum != activated.checksum {
            mismatched.push(switched_of(r));
            continue;
        }
        proved.insert((&r.name, &r.host, r.pid));
        // A switch armed for another activation time is not this activation's on-time one.
        let armed_for_this = r.report.activation_us == t;
        let near = r.report.switched_us.saturating_sub(t).saturating_abs()
            <= r.report
                .error_us
                .saturating_mul(2)
                .saturating_add(ON_TIME_SLACK_US);
        if r.report.late || !armed_for_this || !near {
            late.push(switched_of(r));
        } else {
            on_time.push(switched_of(r));
        }
    }
    let stale_after = farm::stale_after_us(interval_us);
    let mut missing: Vec<Missing> = farm
        .iter()
        .filter(|m| m.role != Role::Follower)
        .filter(|m| m.since_us != 0 && m.since_us < t)
        .filter(|m| m.process.last_checkin_us >= t.saturating_sub(stale_after))
        .filter(|m| !proved.contains(&(&m.process.name, &m.process.host, m.process.pid)))
        .map(|m| Missing {
            name: m.process.name.clone(),
            host: m.process.host.clone(),
            pid: m.process.pid,
            active: m.process.active,
            last_checkin_us: m.process.last_checkin_us,
        })
        .collect();
    missing.sort_by(|a, b| (&a.host, a.pid, &a.name).cmp(&(&b.host, b.pid, &b.name)));
    for list in [&mut on_time, &mut late, &mut mismatched] {
        list.sort_by_key(|s| (s.switched_us, s.pid));
    }
    let (spread_us, error_us) = match (on_time.first(), on_time.last()) {
        (Some(first), Some(last)) => {
            let spread = last.switched_us - first.switched_us;
            let hi = on_time.iter().map(|s| s.switched_us + s.error_us).max();
            let lo = on_time.iter().map(|s| s.switched_us - s.error_us).min();
            let bound = hi.zip(lo).map(|(hi, lo)| hi - lo).unwrap_or(spread);
            (Some(spread), Some(bound - spread))
        }
        _ => (None, None),
    };
    let hosts: BTreeSet<&str> = on_time.iter().map(|s| s.host.as_str()).collect();
    let proof = ActivationProof {
        activation_time_us: t,
        version: activated.version,
        checksum: wire::checksum_hex(activated.checksum),
        clients_switched: on_time.len() as u64,
        clients_late: late.len() as u64,
        clients_missing: missing.len() as u64,
        hosts_switched: hosts.len() as u64,
        spread_us,
        error_us,
        switched: on_time,
        late,
        missing,
        mismatched,
        urgent: false,
    };
    truncate_lists(proof)
}

fn truncate_lists(mut p: ActivationProof) -> ActivationProof {
    p.switched.truncate(MAX_LISTED);
    p.late.truncate(MAX_LISTED);
    p.missing.truncate(MAX_LISTED);
    p.mismatched.truncate(MAX_LISTED);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep::wire::FarmMember;

    fn row(pid: u32, version: u64, checksum: u64, at: i64, err: i64, late: bool) -> SwitchRow {
        SwitchRow {
            name: "web".into(),
            host: format!("h{pid}"),
            pid,
            report: SwitchReport {
                version,
                checksum,
                activation_us: if late { 0 } else { 1_000_000 },
                switched_us: at,
                error_us: err,
                late,
            },
            reported_us: at + 5,
        }
    }

    fn member(pid: u32, since: i64, last: i64, role: Role) -> Member {
        Member {
            process: FarmMember {
                name: "web".into(),
                host: format!("h{pid}"),
                pid,
                staged: 0,
                active: 0,
                offset_us: 0,
                error_us: 0,
                lagging: false,
                last_checkin_us: last,
                silent_us: 0,
                stale: false,
            },
            role,
            leader_pid: None,
            since_us: since,
        }
    }

    #[test]
    fn counts_switches_of_this_version_only_and_bounds_the_spread() {
        let a = Activated {
            activation_us: 1_000_000,
            version: 3,
            checksum: 0xab,
        };
        let reports = [
            row(1, 3, 0xab, 1_000_100, 50, false),
            row(2, 3, 0xab, 999_900, 30, false),
            row(3, 3, 0xab, 1_500_000, 40, true),
            row(4, 2, 0xab, 1_000_000, 10, false),
            row(5, 3, 0xcd, 1_000_000, 10, false),
        ];
        let farm = [
            member(1, 10, 1_100_000, Role::Alone),
            member(6, 10, 1_100_000, Role::Leader),
            member(7, 10, 1_100_000, Role::Follower),
            member(8, 1_200_000, 1_300_000, Role::Alone),
            member(9, 10, 1_000_000 - 60_000_000, Role::Alone),
        ];
        let p = prove(a, 1_000_000, &reports, &farm);
        assert_eq!((p.clients_switched, p.clients_late), (2, 1));
        assert_eq!(p.spread_us, Some(200));
        // max(1_000_150, 999_930) - min(1_000_050, 999_870) - 200
        assert_eq!(p.error_us, Some(80));
        let missing: Vec<u32> = p.missing.iter().map(|m| m.pid).collect();
        // 1 reported; 7 follows its leader; 8 started after; 9 was stale at the time.
        assert_eq!(missing, [6]);
        assert_eq!(p.mismatched.len(), 1);
    }

    #[test]
    fn a_claimed_on_time_switch_far_from_the_activation_time_counts_late() {
        let a = Activated {
            activation_us: 1_000_000,
            version: 3,
            checksum: 0xab,
        };
        let at = |off: i64| 1_000_000 + off;
        let edge = 2 * 100 + ON_TIME_SLACK_US;
        let reports = [
            row(1, 3, 0xab, at(edge), 100, false),
            row(2, 3, 0xab, at(-edge), 100, false),
            row(3, 3, 0xab, at(edge + 1), 100, false),
            row(4, 3, 0xab, at(-edge - 1), 100, false),
        ];
        let p = prove(a, 1_000_000, &reports, &[]);
        let pids = |l: &[Switched]| l.iter().map(|s| s.pid).collect::<Vec<_>>();
        assert_eq!(pids(&p.switched), [2, 1]);
        assert_eq!(pids(&p.late), [4, 3]);
        assert_eq!(p.spread_us, Some(2 * edge));
    }

    #[test]
    fn an_absurd_report_is_dropped() {
        let q = |at: i64, err: i64| CheckinQuery {
            name: "a".into(),
            sw_version: 2,
            sw_checksum: wire::checksum_hex(7),
            sw_at_us: at,
            sw_error_us: err,
            ..Default::default()
        };
        let now = 10 * MAX_AGE_US;
        assert!(row_of_checkin(&q(now - 5, 100), now).is_some());
        assert!(row_of_checkin(&q(now - 5, -1), now).is_none());
        assert!(row_of_checkin(&q(now - 5, MAX_ERROR_US + 1), now).is_none());
        assert!(row_of_checkin(&q(i64::MIN, 100), now).is_none());
        assert!(row_of_checkin(&q(i64::MAX, 100), now).is_none());
    }
}
