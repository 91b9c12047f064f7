//! `GET /metrics`: the data server in the Prometheus (OpenMetrics) text format, through the
//! `prometheus-client` crate.
//!
//! Counters of this process (check-ins, downloads, request latency) count as requests pass;
//! everything the database knows (rotations, versions, production keys, the farm, the last
//! activation's proof) is read at scrape time, so every instance sharing a database reports
//! the same farm. Each metric is documented in the README.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::proof::ActivationProof;
use crate::store::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuantileLabel {
    pub quantile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The route's pattern (`/v1/versions/{number}`), never the raw path: bounded labels.
    pub route: String,
    pub method: String,
    pub status: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 6.5 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    rotations: Counter,
    checkins: Family<ResultLabel, Counter>,
    downloads: Counter,
    download_bytes: Counter,
    versions: Gauge,
    production_keys: Gauge,
    farm_members: Family<StateLabel, Gauge>,
    lagging: Gauge,
    /// Families without labels, so that a sample can be left out: no on-time switch, no
    /// spread, and a 0 would claim a perfect one.
    spread: Family<NoLabels, Gauge<f64, AtomicU64>>,
    spread_error: Family<NoLabels, Gauge<f64, AtomicU64>>,
    activation_clients: Family<OutcomeLabel, Gauge>,
    clock_error: Family<QuantileLabel, Gauge<f64, AtomicU64>>,
    http: Family<RouteLabel, Histogram, fn() -> Histogram>,
    held_checkins: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            rotations: Counter::default(),
            checkins: Family::default(),
            downloads: Counter::default(),
            download_bytes: Counter::default(),
            versions: Gauge::default(),
            production_keys: Gauge::default(),
            farm_members: Family::default(),
            lagging: Gauge::default(),
            spread: Family::default(),
            spread_error: Family::default(),
            activation_clients: Family::default(),
            clock_error: Family::default(),
            http: Family::new_with_constructor(latency_histogram),
            held_checkins: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "lockstep_held_checkins",
            "Long-poll check-ins this instance holds now",
            m.held_checkins.clone(),
        );
        // Counters get `_total` appended by the encoder.
        registry.register(
            "lockstep_rotations",
            "Rotations performed, by every instance sharing the database",
            m.rotations.clone(),
        );
        registry.register(
            "lockstep_checkins",
            "Check-ins answered by this instance, by result (ok, not_modified, error)",
            m.checkins.clone(),
        );
        registry.register(
            "lockstep_downloads",
            "Version downloads served by this instance (200 answers with bytes)",
            m.downloads.clone(),
        );
        registry.register(
            "lockstep_download_bytes",
            "Bytes of version data served by this instance",
            m.download_bytes.clone(),
        );
        registry.register(
            "lockstep_versions",
            "Versions in the history",
            m.versions.clone(),
        );
        registry.register(
            "lockstep_production_keys",
            "Keys in production",
            m.production_keys.clone(),
        );
        registry.register(
            "lockstep_farm_members",
            "Farm processes in the view, by state (live, stale)",
            m.farm_members.clone(),
        );
        registry.register(
            "lockstep_lagging_members",
            "Live farm processes that missed an activation and are catching up",
            m.lagging.clone(),
        );
        registry.register(
            "lockstep_activation_spread_seconds",
            "Latest minus earliest on-time switch instant of the last settled activation (absent \
             without on-time switches)",
            m.spread.clone(),
        );
        registry.register(
            "lockstep_activation_spread_error_seconds",
            "Error bound of that spread: the true spread is at most spread plus this (absent with \
             it)",
            m.spread_error.clone(),
        );
        registry.register(
            "lockstep_activation_clients",
            "Members of the last settled activation, by outcome (switched, late, missing)",
            m.activation_clients.clone(),
        );
        registry.register(
            "lockstep_clock_error_seconds",
            "Clock offset error bounds the live farm members report, by quantile",
            m.clock_error.clone(),
        );
        registry.register(
            "lockstep_http_request_duration_seconds",
            "Time to answer an HTTP request, by route, method and status",
            m.http.clone(),
        );
        // Labels known ahead are shown from the start, at zero.
        for result in ["ok", "not_modified", "error"] {
            drop(m.checkins.get_or_create(&ResultLabel {
                result: result.into(),
            }));
        }
        Metrics { registry, ..m }
    }

    /// Long-poll check-ins held at scrape time.
    pub fn held_checkins(&self, held: usize) {
        self.held_checkins.set(held as i64);
    }

    pub fn checkin(&self, result: &str) {
        self.checkins
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn download(&self, bytes: usize) {
        self.downloads.inc();
        self.download_bytes.inc_by(bytes as u64);
    }

    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.http
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
                method: method.to_owned(),
                status: status.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Sets what the database says, then encodes every metric. `last` is the last settled
    /// activation (see [`settled_after_us`]).
    pub fn render(&self, status: &Status, last: Option<&ActivationProof>) -> String {
        // The database's count only grows; a counter must never go back.
        let rotations: &AtomicU64 = self.rotations.inner();
        rotations.fetch_max(status.rotations, Relaxed);
        self.versions.set(status.versions as i64);
        self.production_keys.set(status.production_keys as i64);
        let live: Vec<_> = status.farm.iter().filter(|m| !m.process.stale).collect();
        let stale = status.farm.len() - live.len();
        for (state, n) in [("live", live.len()), ("stale", stale)] {
            self.farm_members
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(n as i64);
        }
        self.lagging
            .set(live.iter().filter(|m| m.process.lagging).count() as i64);
        let mut errors: Vec<i64> = live.iter().map(|m| m.process.error_us).collect();
        errors.sort_unstable();
        for q in ["0.5", "0.9", "0.99", "1"] {
            let v = quantile(&errors, q.parse().unwrap_or(1.0));
            self.clock_error
                .get_or_create(&QuantileLabel { quantile: q.into() })
                .set(v as f64 / 1e6);
        }
        self.spread.clear();
        self.spread_error.clear();
        self.activation_clients.clear();
        if let Some(p) = last {
            for (gauge, v) in [
                (&self.spread, p.spread_us),
                (&self.spread_error, p.error_us),
            ] {
                if let Some(v) = v {
                    gauge.get_or_create(&Vec::new()).set(v as f64 / 1e6);
                }
            }
            for (outcome, n) in [
                ("switched", p.clients_switched),
                ("late", p.clients_late),
                ("missing", p.clients_missing),
            ] {
                self.activation_clients
                    .get_or_create(&OutcomeLabel {
                        outcome: outcome.into(),
                    })
                    .set(n as i64);
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// An empty label set.
type NoLabels = Vec<(String, String)>;

/// How old an activation must be before the metrics show its proof, µs: every live member
/// checks in at least once a check-in period, and reports are written within a second after.
/// A younger one would show every member missing for a moment after each activation.
pub fn settled_after_us(interval_us: i64) -> i64 {
    crate::rotation::checkin_period_us(interval_us) + 1_000_000
}

/// The `q` quantile of sorted values (nearest rank); 0 for none.
fn quantile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(super::quantile(&v, 0.5), 50);
        assert_eq!(super::quantile(&v, 0.99), 99);
        assert_eq!(super::quantile(&v, 1.0), 100);
        assert_eq!(super::quantile(&[], 0.5), 0);
    }
}
