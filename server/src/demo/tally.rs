//! The driver's bookkeeping: what each web server reported, which activations the data server
//! logged, and, once every web server's part in an activation is known, how it went.
//!
//! An activation is settled server by server, from what the server's reader observed rather
//! than from what its library planned or says about itself: late when a read still saw the old
//! version after the activation time (beyond the server's clock-error bound), early when one
//! saw the new version before it, missed when the server never served the version at all. A
//! switch is on time only when its bracket (last read of the old version to first read of the
//! new) is narrow, no wider than that same tolerance, so that the observation itself places
//! the switch at the activation time; a reader descheduled across the instant leaves a wide
//! bracket that shows neither lateness nor punctuality, and counts as unresolved. Nothing is
//! dropped: a late, missed or unresolved server is counted, and the activation is reported
//! with the others.

use std::collections::{HashMap, VecDeque};

use lockstep::wire::RotationRecord;

use super::event::{value_of, Switch, Values};

/// Slack on top of a server's own clock-error bound before a switch counts as late or early:
/// the driver maps the data server's clock onto CLOCK_MONOTONIC from one sample, and the
/// reader's clock reads are not free.
pub const TOLERANCE_NS: i64 = 1_000_000;

/// A web server as the driver sees it.
#[derive(Default)]
pub struct Web {
    pub name: String,
    pub skew_s: i64,
    pub offset_us: i64,
    pub error_us: i64,
    pub active: u64,
    pub lagging: bool,
    /// What this server's reads saw in each version it served.
    pub values: HashMap<u64, Values>,
    pub switches: Vec<Switch>,
    pub outcomes: Counts,
}

/// Per-server outcome counts, for the summary.
#[derive(Default, Clone, Copy)]
pub struct Counts {
    pub on_time: usize,
    pub late: usize,
    pub early: usize,
    pub missed: usize,
    pub unresolved: usize,
}

/// The data server's clock mapped onto this host's CLOCK_MONOTONIC, from one sample of both
/// taken by the driver (same host as the data server, wall clock not skewed).
#[derive(Clone, Copy)]
pub struct HostClock {
    mono_ns: i64,
    wall_us: i64,
}

impl HostClock {
    pub fn now() -> HostClock {
        let a = lockstep::clock::mono_ns();
        let wall_us = crate::clock::now_us();
        let b = lockstep::clock::mono_ns();
        HostClock {
            mono_ns: a + (b - a) / 2,
            wall_us,
        }
    }

    pub fn to_mono(self, server_us: i64) -> i64 {
        self.mono_ns + (server_us - self.wall_us) * 1000
    }
}

/// An activation the data server logged: `version` became active at `time_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activation {
    pub version: u64,
    pub time_us: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    OnTime,
    Late,
    Early,
    Missed,
    /// Neither late nor early, but the bracket is wider than the tolerance: the reader did not
    /// observe when the switch happened.
    Unresolved,
}

/// One server's part in one activation.
pub struct Served {
    pub outcome: Outcome,
    /// The switch into the version; `None` when missed.
    pub switch: Option<Switch>,
    /// The switch's bracket is no wider than the server's tolerance (clock-error bound +
    /// [`TOLERANCE_NS`]): the observation places the switch that precisely.
    pub narrow: bool,
}

/// An activation once every server's part is known.
pub struct Settled {
    pub activation: Activation,
    /// The activation time on CLOCK_MONOTONIC.
    pub time_ns: i64,
    /// In the order of the web servers.
    pub servers: Vec<Served>,
}

impl Settled {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.servers.iter().filter(|s| s.outcome == outcome).count()
    }

    fn switches(&self, on_time_only: bool) -> impl Iterator<Item = &Switch> {
        self.servers
            .iter()
            .filter(move |s| !on_time_only || s.outcome == Outcome::OnTime)
            .filter_map(|s| s.switch.as_ref())
    }

    /// Spread of the instants the libraries armed, over the servers neither late, early nor
    /// missed (on time or unresolved: what was armed does not depend on the observation).
    pub fn planned_spread_ns(&self) -> Option<i64> {
        spread(
            self.servers
                .iter()
                .filter(|s| matches!(s.outcome, Outcome::OnTime | Outcome::Unresolved))
                .filter_map(|s| s.switch.as_ref()?.planned_ns),
        )
    }

    /// Spread of the first reads of the new version: over the servers on time, or over every
    /// server that served it (late ones included). `None` with fewer than two: one server's
    /// read has no spread, and a 0 would flatter the figure.
    pub fn observed_spread_ns(&self, on_time_only: bool) -> Option<i64> {
        let firsts: Vec<i64> = self
            .switches(on_time_only)
            .map(|s| s.first_new_read_ns)
            .collect();
        if firsts.len() < 2 {
            return None;
        }
        spread(firsts.into_iter())
    }

    /// For each late server, how long after the activation time it still served the old
    /// version (the start of its last read of it).
    pub fn lateness_ns(&self) -> impl Iterator<Item = i64> + '_ {
        self.servers
            .iter()
            .filter(|s| s.outcome == Outcome::Late)
            .filter_map(|s| s.switch.as_ref())
            .map(|s| s.last_old_read_ns - self.time_ns)
    }

    pub fn widths_ns(&self) -> impl Iterator<Item = i64> + '_ {
        self.switches(false).map(Switch::width_ns)
    }

    /// (switches whose armed instant lies inside the observed bracket, armed switches with a
    /// narrow bracket). A wide bracket would contain the armed instant whatever the reads did,
    /// so only narrow ones count.
    pub fn planned_inside_bracket(&self) -> (usize, usize) {
        let planned: Vec<(&Switch, i64)> = self
            .servers
            .iter()
            .filter(|s| s.narrow)
            .filter_map(|s| s.switch.as_ref())
            .filter_map(|s| s.planned_ns.map(|p| (s, p)))
            .collect();
        let inside = planned
            .iter()
            .filter(|(s, p)| (s.last_old_read_ns..=s.first_new_read_ns).contains(p))
            .count();
        (inside, planned.len())
    }
}

fn spread(instants: impl Iterator<Item = i64>) -> Option<i64> {
    let (lo, hi) = instants.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    // Lazily: with no instants, hi - lo would overflow.
    (lo <= hi).then(|| hi - lo)
}

/// The activations logged but not yet settled, in order.
pub struct Tally {
    /// Versions up to this one were active before the demo watched.
    start_version: u64,
    last_logged: u64,
    pending: VecDeque<Activation>,
    /// How long after an activation a server that has not switched counts as having missed it.
    give_up_ns: i64,
}

impl Tally {
    pub fn new(start_version: u64, interval_us: i64) -> Tally {
        Tally {
            start_version,
            last_logged: start_version,
            pending: VecDeque::new(),
            give_up_ns: 2 * interval_us * 1000 + 2_000_000_000,
        }
    }

    /// Notes the activation a rotation logged, if it brought a version the demo has not seen.
    pub fn note_rotation(&mut self, r: &RotationRecord) {
        if r.active_version > self.last_logged && r.active_version > self.start_version {
            self.last_logged = r.active_version;
            self.pending.push_back(Activation {
                version: r.active_version,
                time_us: r.activation_time_us,
            });
        }
    }

    /// Settles the oldest pending activation if every server's part in it is known.
    pub fn settle_next(&mut self, webs: &mut [Web], clock: HostClock) -> Option<Settled> {
        let activation = *self.pending.front()?;
        let time_ns = clock.to_mono(activation.time_us);
        let given_up = lockstep::clock::mono_ns() > time_ns + self.give_up_ns;
        let servers = webs
            .iter()
            .map(|w| part_of(w, activation.version, time_ns, given_up))
            .collect::<Option<Vec<Served>>>()?;
        self.pending.pop_front();
        for (w, s) in webs.iter_mut().zip(&servers) {
            let c = &mut w.outcomes;
            *match s.outcome {
                Outcome::OnTime => &mut c.on_time,
                Outcome::Late => &mut c.late,
                Outcome::Early => &mut c.early,
                Outcome::Missed => &mut c.missed,
                Outcome::Unresolved => &mut c.unresolved,
            } += 1;
        }
        Some(Settled {
            activation,
            time_ns,
            servers,
        })
    }
}

/// Drops what settling activations up to `version` no longer needs, so `--watch` runs in
/// bounded memory: switches into it or older, and values of versions no later switch came from.
pub fn forget_before(webs: &mut [Web], version: u64) {
    for w in webs {
        w.switches.retain(|s| s.to > version);
        let oldest = w.switches.iter().map(|s| s.from).fold(w.active, u64::min);
        w.values.retain(|v, _| *v >= oldest);
    }
}

/// Server `w`'s part in the activation of `version` at `time_ns`; `None` while unknown.
fn part_of(w: &Web, version: u64, time_ns: i64, given_up: bool) -> Option<Served> {
    if let Some(s) = w.switches.iter().find(|s| s.to == version) {
        let error_ns = w.error_us.max(0) * 1000 + TOLERANCE_NS;
        let narrow = s.width_ns() <= error_ns;
        let outcome = if s.last_old_read_ns > time_ns + error_ns {
            Outcome::Late
        } else if s.first_new_read_ns < time_ns - error_ns {
            Outcome::Early
        } else if narrow {
            Outcome::OnTime
        } else {
            Outcome::Unresolved
        };
        return Some(Served {
            outcome,
            switch: Some(s.clone()),
            narrow,
        });
    }
    let skipped = w
        .switches
        .iter()
        .any(|s| s.from < version && s.to > version);
    (skipped || given_up).then_some(Served {
        outcome: Outcome::Missed,
        switch: None,
        narrow: false,
    })
}

/// A change the admin scheduled for an exact time.
pub struct ScheduledChange {
    pub key: String,
    pub value: String,
    pub at_us: i64,
}

/// How one server served a scheduled change at its activation.
pub struct ServedChange {
    /// The value the server's last version before the activation held.
    pub before: Option<String>,
    /// The value the server's first read of the activated version saw.
    pub after: Option<String>,
    pub outcome: Outcome,
}

impl ScheduledChange {
    /// Whether `settled` is the activation this change is due in: the first at or after it.
    pub fn is_due_in(&self, settled: &Settled) -> bool {
        settled.activation.time_us >= self.at_us
    }

    /// What each server served of this change at `settled`.
    pub fn served(&self, settled: &Settled, webs: &[Web]) -> Vec<ServedChange> {
        webs.iter()
            .zip(&settled.servers)
            .map(|(w, s)| {
                let value = |v: u64| {
                    w.values
                        .get(&v)
                        .and_then(|vals| value_of(vals, &self.key))
                        .map(str::to_owned)
                };
                ServedChange {
                    before: s.switch.as_ref().and_then(|sw| value(sw.from)),
                    after: s.switch.as_ref().and_then(|sw| value(sw.to)),
                    outcome: s.outcome,
                }
            })
            .collect()
    }

    /// Live at its time on every server as far as the reads show: the activation is at that
    /// time, no server was late, early or missed it, and each served the old value before and
    /// the new value from its first read of the version. Some switches may be unresolved.
    pub fn went_live(&self, settled: &Settled, served: &[ServedChange]) -> bool {
        settled.activation.time_us == self.at_us
            && served.iter().all(|s| {
                matches!(s.outcome, Outcome::OnTime | Outcome::Unresolved)
                    && s.after.as_deref() == Some(self.value.as_str())
                    && s.before.as_deref() != Some(self.value.as_str())
            })
    }

    /// [`went_live`](Self::went_live), and every switch observed on time: live at exactly its
    /// time on every server.
    pub fn went_live_exactly(&self, settled: &Settled, served: &[ServedChange]) -> bool {
        self.went_live(settled, served) && served.iter().all(|s| s.outcome == Outcome::OnTime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    fn switch(from: u64, to: u64, last_old: i64, first_new: i64) -> Switch {
        Switch {
            from,
            to,
            last_old_read_ns: last_old,
            first_new_read_ns: first_new,
            planned_ns: Some(last_old + 1),
            values: Vec::new(),
        }
    }

    fn web(error_us: i64, switches: Vec<Switch>) -> Web {
        Web {
            error_us,
            switches,
            ..Web::default()
        }
    }

    #[test]
    fn a_switch_is_judged_by_its_observed_bracket_against_the_activation_time() {
        let t = 1_000 * MS;
        let on_time = web(200, vec![switch(1, 2, t - MS / 10, t + MS / 20)]);
        let late = web(200, vec![switch(1, 2, t + 2 * MS, t + 3 * MS)]);
        let early = web(200, vec![switch(1, 2, t - 5 * MS, t - 2 * MS)]);
        let mut caught_up = switch(1, 2, t + 300 * MS, t + 300 * MS + 10);
        caught_up.planned_ns = None;
        let caught_up = web(200, vec![caught_up]);
        // A reader descheduled across the instant served nothing in between: not late, but its
        // bracket does not show the switch on time either.
        let stalled = web(200, vec![switch(1, 2, t - 900 * MS, t + 600 * MS)]);
        // Wider than the tolerance (0.2 ms bound + 1 ms) by a little, around the instant.
        let wide = web(200, vec![switch(1, 2, t - MS, t + MS / 2)]);
        let outcome = |w: &Web| part_of(w, 2, t, false).map(|s| s.outcome);
        assert_eq!(outcome(&on_time), Some(Outcome::OnTime));
        assert_eq!(outcome(&late), Some(Outcome::Late));
        assert_eq!(outcome(&early), Some(Outcome::Early));
        assert_eq!(outcome(&caught_up), Some(Outcome::Late));
        assert_eq!(outcome(&stalled), Some(Outcome::Unresolved));
        assert_eq!(outcome(&wide), Some(Outcome::Unresolved));
    }

    #[test]
    fn only_narrow_brackets_count_for_the_armed_instant_inside_its_bracket() {
        let t = 1_000 * MS;
        let webs = [
            web(200, vec![switch(1, 2, t - MS / 10, t + MS / 20)]),
            web(200, vec![switch(1, 2, t - 900 * MS, t + 600 * MS)]),
        ];
        let settled = Settled {
            activation: Activation {
                version: 2,
                time_us: 1_000_000,
            },
            time_ns: t,
            servers: webs
                .iter()
                .map(|w| part_of(w, 2, t, false).unwrap())
                .collect(),
        };
        // Both armed instants lie inside their brackets; the wide one proves nothing.
        assert_eq!(settled.planned_inside_bracket(), (1, 1));
        assert_eq!(settled.count(Outcome::Unresolved), 1);
        // One server on time has no observed spread of its own (not a spread of 0).
        assert_eq!(settled.observed_spread_ns(true), None);
        assert_eq!(settled.observed_spread_ns(false), Some(600 * MS - MS / 20));
    }

    #[test]
    fn the_spread_of_no_instants_is_none() {
        assert_eq!(spread(std::iter::empty()), None);
        assert_eq!(spread([5, 2, 9].into_iter()), Some(7));
    }

    #[test]
    fn a_server_that_skips_a_version_or_never_switches_missed_it() {
        let t = 1_000 * MS;
        let skipped = web(200, vec![switch(1, 3, t + 900 * MS, t + 901 * MS)]);
        assert_eq!(
            part_of(&skipped, 2, t, false).map(|s| s.outcome),
            Some(Outcome::Missed)
        );
        let silent = web(200, Vec::new());
        assert!(part_of(&silent, 2, t, false).is_none(), "decided too soon");
        assert_eq!(
            part_of(&silent, 2, t, true).map(|s| s.outcome),
            Some(Outcome::Missed)
        );
    }
}
