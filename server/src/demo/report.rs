//! What the demo prints: the cycle as it happens (Fig. 7), each settled activation, the check
//! of the scheduled change, and the summary. Times of day are the data server's clock; offsets
//! are from the activation time, on CLOCK_MONOTONIC.

use std::collections::BTreeSet;
use std::io::Write;

use lockstep::wire::RotationRecord;

use super::event::Values;
use super::tally::{Outcome, ScheduledChange, ServedChange, Settled, Web, TOLERANCE_NS};

/// Time of day (UTC) with milliseconds: 09:10:02.123.
pub fn hms(us: i64) -> String {
    let ms = us.div_euclid(1000);
    let day_ms = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

fn ms(ns: i64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

fn signed_ms(ns: i64) -> String {
    format!("{:+.3} ms", ns as f64 / 1e6)
}

/// Prints the narrative unless quiet; activations and the summary always print.
pub struct Narrator {
    pub quiet: bool,
}

impl Narrator {
    pub fn say(&self, line: impl AsRef<str>) {
        if !self.quiet {
            println!("{}", line.as_ref());
        }
    }

    pub fn legend(&self) {
        self.say("");
        self.say("Fig. 7, live. Times are the data server's clock.");
        self.say("  ROTATION    the first web server to check in after the activation time rotates the data server:");
        self.say("              active <- staged, staged <- production, next activation on the grid (once, under a lock)");
        self.say("  RETRIEVAL   asynchronous: each web server downloads the staged version into its staging cache");
        self.say("  ACTIVATION  synchronous: at the activation time every web server swaps staged -> active;");
        self.say("              each reader brackets its switch by its last read of the old version and first of the new");
        self.say("");
    }

    pub fn admin(&self, at_us: i64, what: &str) {
        self.say(format!("{}  ADMIN       {what}", hms(at_us)));
    }

    pub fn rotation(&self, r: &RotationRecord) {
        self.say(format!(
            "{}  ROTATION    by {:<7} (first check-in after {}): active <- v{}, staged <- v{}, next activation {}",
            hms(r.rotated_at_us),
            r.rotated_by,
            hms(r.activation_time_us),
            r.active_version,
            r.staged_version,
            hms(r.next_activation_us)
        ));
    }

    pub fn retrieval(&self, now_us: i64, web: &Web, version: u64, activation_us: i64) {
        self.say(format!(
            "{}  RETRIEVAL   {:<7} staged v{version} for activation at {} (async, local clock {:+}s)",
            hms(now_us),
            web.name,
            hms(activation_us),
            web.skew_s
        ));
    }

    /// One settled activation: always its line; unless quiet, each server's bracket, the data
    /// served and the farm table.
    pub fn activation(&self, s: &Settled, webs: &[Web]) {
        println!("{}", activation_line(s, webs));
        if !self.quiet {
            for (w, served) in webs.iter().zip(&s.servers) {
                println!("              {}", server_line(w, served, s));
            }
            println!("              {}", same_data_line(s, webs));
            farm_table(webs);
        }
        let _ = std::io::stdout().flush();
    }

    /// The check of a scheduled change at the activation it is due in.
    pub fn scheduled(&self, change: &ScheduledChange, s: &Settled, webs: &[Web]) {
        let served = change.served(s, webs);
        let v = s.activation.version;
        if !self.quiet {
            println!(
                "              scheduled change {}={} for {}: due in v{v}, activated at {}",
                change.key,
                change.value,
                hms(change.at_us),
                hms(s.activation.time_us)
            );
            for (w, c) in webs.iter().zip(&served) {
                println!(
                    "                {:<7} {} before, {} at its first read of v{v} ({})",
                    w.name,
                    shown(&c.before),
                    shown(&c.after),
                    outcome_word(c.outcome)
                );
            }
        }
        println!(
            "              {}",
            scheduled_verdict(change, s, &served, webs)
        );
    }
}

/// The run ended before the activation a scheduled change was due in.
pub fn not_reached(change: &ScheduledChange, activations: usize) {
    println!(
        "the scheduled change {}={} for {} was NOT observed: the demo stopped after {activations} activations, before it",
        change.key,
        change.value,
        hms(change.at_us)
    );
}

fn shown(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "(not read)".into())
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::OnTime => "on time",
        Outcome::Late => "LATE",
        Outcome::Early => "EARLY",
        Outcome::Missed => "MISSED",
        Outcome::Unresolved => "UNRESOLVED",
    }
}

fn activation_line(s: &Settled, webs: &[Web]) -> String {
    let v = s.activation.version;
    let served = s.servers.len() - s.count(Outcome::Missed);
    let mut line = format!(
        "{}  ACTIVATION  v{v} served by {served}/{} web servers ({} on time, {} late, {} early, {} missed, {} unresolved): spread {} planned, {} observed (first reads of v{v}), brackets up to {}",
        hms(s.activation.time_us),
        webs.len(),
        s.count(Outcome::OnTime),
        s.count(Outcome::Late),
        s.count(Outcome::Early),
        s.count(Outcome::Missed),
        s.count(Outcome::Unresolved),
        s.planned_spread_ns().map_or("none".into(), ms),
        s.observed_spread_ns(false).map_or("none".into(), ms),
        s.widths_ns().max().map_or("none".into(), ms),
    );
    for o in [
        Outcome::Late,
        Outcome::Early,
        Outcome::Missed,
        Outcome::Unresolved,
    ] {
        let names: Vec<&str> = webs
            .iter()
            .zip(&s.servers)
            .filter(|(_, x)| x.outcome == o)
            .map(|(w, _)| w.name.as_str())
            .collect();
        if names.is_empty() {
            continue;
        }
        line.push_str(&format!("; {}", outcome_word(o)));
        if let (Outcome::Late, Some(worst)) = (o, s.lateness_ns().max()) {
            line.push_str(&format!(" (old version served until {})", signed_ms(worst)));
        }
        if o == Outcome::Unresolved {
            let widest = s
                .servers
                .iter()
                .filter(|x| x.outcome == o)
                .filter_map(|x| x.switch.as_ref())
                .map(super::event::Switch::width_ns)
                .max()
                .unwrap_or(0);
            line.push_str(&format!(" (brackets up to {})", ms(widest)));
        }
        line.push_str(&format!(": {}", names.join(", ")));
    }
    line
}

fn server_line(w: &Web, served: &super::tally::Served, s: &Settled) -> String {
    let v = s.activation.version;
    let Some(sw) = &served.switch else {
        return format!("{:<7} MISSED   never served v{v}", w.name);
    };
    let armed = match sw.planned_ns {
        Some(p) => format!("armed {}", signed_ms(p - s.time_ns)),
        None => "never armed (caught up)".into(),
    };
    format!(
        "{:<7} {:<8} {armed}; switch observed between {} and {}",
        w.name,
        outcome_word(served.outcome),
        signed_ms(sw.last_old_read_ns - s.time_ns),
        signed_ms(sw.first_new_read_ns - s.time_ns)
    )
}

fn same_data_line(s: &Settled, webs: &[Web]) -> String {
    let v = s.activation.version;
    let seen: BTreeSet<&Values> = webs
        .iter()
        .zip(&s.servers)
        .filter(|(_, x)| x.switch.is_some())
        .filter_map(|(w, _)| w.values.get(&v))
        .collect();
    let text = |vals: &Values| {
        vals.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match seen.len() {
        1 => format!(
            "every server's first read of v{v} saw the same data: {}",
            text(seen.first().unwrap())
        ),
        _ => format!("the servers' first reads of v{v} did NOT agree: {seen:?}"),
    }
}

fn farm_table(webs: &[Web]) {
    println!(
        "              {:<7} {:>8} {:>14} {:>9} {:>7} {:>7}",
        "server", "skew", "offset to DS", "± error", "active", "lagging"
    );
    for w in webs {
        println!(
            "              {:<7} {:>+7}s {:>+12.3}ms {:>7.3}ms {:>7} {:>7}",
            w.name,
            w.skew_s,
            w.offset_us as f64 / 1000.0,
            w.error_us as f64 / 1000.0,
            format!("v{}", w.active),
            if w.lagging { "yes" } else { "no" }
        );
    }
}

fn scheduled_verdict(
    change: &ScheduledChange,
    s: &Settled,
    served: &[ServedChange],
    webs: &[Web],
) -> String {
    let what = format!("{}={}", change.key, change.value);
    if change.went_live_exactly(s, served) {
        let widest = s.widths_ns().max().unwrap_or(0);
        return format!(
            "the scheduled change {what} went live at exactly {}: every web server served the old value until it switched and {} from its first read of v{}, each switch observed within its tolerance of that time (brackets up to {})",
            hms(change.at_us),
            change.value,
            s.activation.version,
            ms(widest)
        );
    }
    if change.went_live(s, served) {
        let unresolved: Vec<String> = webs
            .iter()
            .zip(&s.servers)
            .filter(|(_, x)| x.outcome == Outcome::Unresolved)
            .filter_map(|(w, x)| Some(format!("{} {}", w.name, ms(x.switch.as_ref()?.width_ns()))))
            .collect();
        return format!(
            "the scheduled change {what} went live at {} as far as the reads show: every web server served the old value until it switched and {} from its first read of v{}, none late, early or missed; {}/{} switches observed on time, {} unresolved (brackets wider than the tolerance: {})",
            hms(change.at_us),
            change.value,
            s.activation.version,
            served.len() - unresolved.len(),
            served.len(),
            unresolved.len(),
            unresolved.join(", ")
        );
    }
    let mut why = Vec::new();
    if s.activation.time_us != change.at_us {
        why.push(format!(
            "the first activation at or after it was at {}",
            hms(s.activation.time_us)
        ));
    }
    for (w, c) in webs.iter().zip(served) {
        if c.outcome == Outcome::Unresolved {
            why.push(format!(
                "{} UNRESOLVED (its reader's bracket was wider than its tolerance: when it switched was not observed)",
                w.name
            ));
        } else if c.outcome != Outcome::OnTime {
            why.push(format!("{} {}", w.name, outcome_word(c.outcome)));
        }
        if c.outcome != Outcome::Missed && c.after.as_deref() != Some(change.value.as_str()) {
            why.push(format!("{} served {} after", w.name, shown(&c.after)));
        }
        if c.before.as_deref() == Some(change.value.as_str()) {
            why.push(format!("{} served it before", w.name));
        }
    }
    format!(
        "the scheduled change {what} did NOT go live at exactly {} on every web server: {}",
        hms(change.at_us),
        why.join("; ")
    )
}

/// Figures over the whole run, printed at the end.
#[derive(Default)]
pub struct Summary {
    activations: usize,
    all_on_time: usize,
    planned: Vec<i64>,
    observed_on_time: Vec<i64>,
    observed_all: Vec<i64>,
    widths: Vec<i64>,
    lateness: Vec<i64>,
    inside: (usize, usize),
    wide: usize,
}

impl Summary {
    pub fn add(&mut self, s: &Settled) {
        self.activations += 1;
        if s.count(Outcome::OnTime) == s.servers.len() {
            self.all_on_time += 1;
        }
        self.planned.extend(s.planned_spread_ns());
        self.observed_on_time.extend(s.observed_spread_ns(true));
        self.observed_all.extend(s.observed_spread_ns(false));
        self.widths.extend(s.widths_ns());
        self.lateness.extend(s.lateness_ns());
        let (inside, of) = s.planned_inside_bracket();
        self.inside.0 += inside;
        self.inside.1 += of;
        self.wide += s
            .servers
            .iter()
            .filter(|x| x.switch.is_some() && !x.narrow)
            .count();
    }

    pub fn activations(&self) -> usize {
        self.activations
    }

    pub fn print(&mut self, webs: &[Web], load: bool) {
        println!();
        println!(
            "Summary over {} activations, {} web servers{}:",
            self.activations,
            webs.len(),
            if load { ", every CPU busy" } else { "" }
        );
        println!(
            "  activation spread, planned (instants the libraries armed, servers on time or unresolved): {}",
            percentiles(&mut self.planned)
        );
        println!(
            "  activation spread, observed (first reads of the new version, servers on time, narrow brackets; over {} activations with two or more): {}",
            self.observed_on_time.len(),
            percentiles(&mut self.observed_on_time)
        );
        println!(
            "  activation spread, observed (first reads, every server that served it, late ones included): {}",
            percentiles(&mut self.observed_all)
        );
        println!(
            "  switch bracket (last read of the old version to first read of the new), over {} switches: {}",
            self.widths.len(),
            percentiles(&mut self.widths)
        );
        println!(
            "  armed instant inside the observed bracket: {}/{} switches with a narrow bracket; {} switches with a bracket wider than the tolerance, not counted",
            self.inside.0, self.inside.1, self.wide
        );
        println!(
            "  activations every web server made on time: {}/{}",
            self.all_on_time, self.activations
        );
        let counts: Vec<String> = webs
            .iter()
            .map(|w| {
                let c = w.outcomes;
                format!(
                    "{} {}/{}/{}/{}/{}",
                    w.name, c.on_time, c.late, c.early, c.missed, c.unresolved
                )
            })
            .collect();
        println!(
            "  per web server, on time/late/early/missed/unresolved: {}",
            counts.join(", ")
        );
        println!(
            "  late switches, last read of the old version after the activation time, over {}: {}",
            self.lateness.len(),
            percentiles(&mut self.lateness)
        );
        println!(
            "  (the tolerance is the server's clock-error bound + {} ms. late: a read saw the old version more than the tolerance after the activation time; early: one saw the new version that much before it; missed: never served it; on time: neither, with a bracket no wider than the tolerance; unresolved: neither, but a wider bracket, so when it switched was not observed)",
            TOLERANCE_NS / 1_000_000
        );
        let errors: Vec<String> = webs
            .iter()
            .map(|w| format!("{} ±{:.3}ms", w.name, w.error_us as f64 / 1000.0))
            .collect();
        println!("  clock-offset error bounds: {}", errors.join(", "));
    }
}

fn percentiles(ns: &mut [i64]) -> String {
    if ns.is_empty() {
        return "none".into();
    }
    ns.sort_unstable();
    let at = |p: f64| ns[((ns.len() - 1) as f64 * p).round() as usize];
    format!(
        "p50 {}, p99 {}, max {}",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(*ns.last().unwrap())
    )
}
