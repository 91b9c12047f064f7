//! The client's estimate of the data server's clock, expressed on the local monotonic clock.
//!
//! Every check-in is a clock sample, with NTP's four timestamps: the monotonic time the request
//! left (`t0`), the data server's clock when the request arrived (`s0`) and when the answer
//! left (`s1`), and the monotonic time the answer arrived (`t1`). The server's work `s1 - s0`
//! drops out: the network's share of the round trip is `d = (t1 - t0) - (s1 - s0)`, and
//! `(s0 + s1)/2 - (t0 + t1)/2` estimates the offset with an error of at most `d/2`. A server
//! that sends only `s1` gives `s0 = s1` (Cristian's algorithm: the work counts as network, so
//! the bound still holds, only wider). We keep the recent sample whose error bound — half its
//! network delay, plus the drift that can have built up since it was taken — is the smallest.
//!
//! Activations are scheduled as monotonic instants: `server_time - offset`. The monotonic clock
//! never steps, so moving the wall clock (NTP, an operator, libfaketime) cannot move an
//! activation. The wall clock is used only to report, for people, how far this host's clock is
//! from the data server's.

use std::time::{SystemTime, UNIX_EPOCH};

/// How fast a host's monotonic clock may drift from the data server's clock: 100 ppm is ten
/// times what an NTP-disciplined clock does, and a generous bound for a free-running crystal.
pub const MAX_DRIFT_PPM: i64 = 100;

/// Samples remembered; older ones age out.
const WINDOW: usize = 16;

/// CLOCK_MONOTONIC in ns. Cheap (a vDSO call), never steps, and is one clock for every
/// process on the host — so activation instants of different processes can be compared.
#[inline]
pub fn mono_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// The local wall clock in µs since the Unix epoch (what libfaketime changes).
pub fn wall_us() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// One round trip's worth of clock information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Monotonic ns when the request was sent.
    pub sent_ns: i64,
    /// Monotonic ns when the answer arrived.
    pub received_ns: i64,
    /// The data server's clock when it sent its answer, µs since the Unix epoch.
    pub server_us: i64,
    /// The data server's clock when the request arrived, µs, if it said.
    pub server_received_us: Option<i64>,
    /// Local wall clock at the midpoint, µs (for reporting only).
    pub wall_mid_us: i64,
}

impl Sample {
    fn rtt_ns(&self) -> i64 {
        (self.received_ns - self.sent_ns).max(0)
    }

    /// The server's time inside the round trip, ns: what it says, but never less than zero
    /// nor more than the round trip itself (a number from the network is not trusted).
    fn server_work_ns(&self) -> i64 {
        self.server_received_us
            .map_or(0, |r| self.server_us.saturating_sub(r).saturating_mul(1000))
            .clamp(0, self.rtt_ns())
    }

    /// Server time in ns minus monotonic ns: the server's midpoint against ours.
    fn mono_offset_ns(&self) -> i64 {
        let work = self.server_work_ns();
        let server_mid = self.server_us.saturating_mul(1000) - work / 2;
        server_mid - (self.sent_ns + self.rtt_ns() / 2)
    }

    /// The error bound of this sample, seen from monotonic time `now_ns`: half the network's
    /// share of the round trip, the stamps' µs resolution, and drift since.
    fn error_ns(&self, now_ns: i64) -> i64 {
        let age = (now_ns - self.received_ns).max(0);
        let network = self.rtt_ns() - self.server_work_ns();
        let resolution = if self.server_received_us.is_some() {
            1_000
        } else {
            500
        };
        network / 2 + resolution + age.saturating_mul(MAX_DRIFT_PPM) / 1_000_000
    }
}

/// The offset estimate: how to turn data-server time into a local monotonic instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Data-server time (ns) minus local monotonic time (ns).
    pub mono_offset_ns: i64,
    /// Bound on the error of that offset when it was chosen, µs.
    pub error_us: i64,
    /// Data-server clock minus the local wall clock, µs: what a person calls the clock skew.
    pub wall_offset_us: i64,
}

impl Estimate {
    /// The local monotonic instant (ns) at which the data server's clock reads `server_us`.
    pub fn mono_at(&self, server_us: i64) -> i64 {
        server_us.saturating_mul(1000) - self.mono_offset_ns
    }

    /// The data server's clock now, µs.
    pub fn server_now_us(&self) -> i64 {
        (mono_ns() + self.mono_offset_ns) / 1000
    }
}

/// Keeps the recent samples and picks the best.
#[derive(Debug, Default, Clone)]
pub struct ClockSync {
    samples: Vec<Sample>,
}

impl ClockSync {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sample; returns the estimate it leads to.
    pub fn add(&mut self, sample: Sample) -> Estimate {
        if self.samples.len() == WINDOW {
            self.samples.remove(0);
        }
        self.samples.push(sample);
        self.estimate(sample.received_ns)
            .expect("just added a sample")
    }

    /// The best estimate as of monotonic time `now_ns`, if there is any sample.
    pub fn estimate(&self, now_ns: i64) -> Option<Estimate> {
        let best = self.samples.iter().min_by_key(|s| s.error_ns(now_ns))?;
        Some(Estimate {
            mono_offset_ns: best.mono_offset_ns(),
            error_us: (best.error_ns(now_ns) + 999) / 1000,
            wall_offset_us: best.server_us - best.wall_mid_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent: i64, rtt: i64, true_offset_ns: i64, server_read_at: i64) -> Sample {
        Sample {
            sent_ns: sent,
            received_ns: sent + rtt,
            server_us: (sent + server_read_at + true_offset_ns) / 1000,
            server_received_us: None,
            wall_mid_us: 0,
        }
    }

    #[test]
    fn the_servers_work_drops_out_of_the_offset_and_its_bound() {
        let offset = 42_000_000_000;
        // 10 ms round trip: 1 ms out, 8 ms of server work, 1 ms back.
        let s = Sample {
            sent_ns: 0,
            received_ns: 10_000_000,
            server_received_us: Some((1_000_000 + offset) / 1000),
            server_us: (9_000_000 + offset) / 1000,
            wall_mid_us: 0,
        };
        let e = ClockSync::new().add(s);
        assert!((e.mono_offset_ns - offset).abs() <= 1_000, "{e:?}");
        assert!(e.error_us <= 1_000 + 1, "{e:?}");
        // A server that stamps once, after its work, is 4 ms off at the midpoint, and says so.
        let once = Sample {
            server_received_us: None,
            ..s
        };
        let e = ClockSync::new().add(once);
        assert!(
            (e.mono_offset_ns - offset - 4_000_000).abs() <= 1_000,
            "{e:?}"
        );
        assert!(e.error_us >= 5_000);
        // A lying server cannot claim more work than the round trip.
        let liar = Sample {
            server_received_us: Some(i64::MIN),
            ..s
        };
        let e = ClockSync::new().add(liar);
        assert!(e.error_us >= 1, "{e:?}");
        assert!((e.mono_offset_ns - offset).abs() <= 5_000_000);
    }

    #[test]
    fn keeps_the_minimum_round_trip_sample() {
        let offset = 3_600_000_000_000; // the server is an hour ahead
        let mut c = ClockSync::new();
        // A slow round trip where the server answered at the very end: a bad estimate.
        let e1 = c.add(sample(0, 40_000_000, offset, 40_000_000));
        assert_eq!(e1.error_us, 20_001);
        // A fast one shortly after.
        let e2 = c.add(sample(50_000_000, 200_000, offset, 100_000));
        assert!(e2.error_us <= 102, "{e2:?}");
        assert!((e2.mono_offset_ns - offset).abs() <= 100_000);
        // A later slow sample does not replace it.
        let e3 = c.add(sample(60_000_000, 30_000_000, offset, 0));
        assert_eq!(e3.mono_offset_ns, e2.mono_offset_ns);
    }

    #[test]
    fn the_true_offset_is_within_the_error_bound() {
        let offset = -7_200_000_000_000;
        let mut c = ClockSync::new();
        for (i, (rtt, at)) in [(1_000_000, 0), (3_000_000, 3_000_000), (500_000, 250_000)]
            .into_iter()
            .enumerate()
        {
            let e = c.add(sample(i as i64 * 10_000_000, rtt, offset, at));
            assert!((e.mono_offset_ns - offset).abs() <= e.error_us * 1000 + 1000);
        }
    }

    #[test]
    fn old_samples_lose_to_fresh_ones_as_drift_builds() {
        let mut c = ClockSync::new();
        c.add(sample(0, 100_000, 0, 50_000));
        // Ten minutes later, a sample with a 1 ms round trip: drift allowance on the old one
        // (600 s × 100 ppm = 60 ms) now exceeds 0.5 ms.
        let later = 600_000_000_000;
        let e = c.add(sample(later, 1_000_000, 5_000_000, 500_000));
        assert_eq!(e.error_us, 501);
        assert!((e.mono_offset_ns - 5_000_000).abs() < 1_000);
    }

    #[test]
    fn mono_at_inverts_the_offset() {
        let e = Estimate {
            mono_offset_ns: 1_000_000_000_000,
            error_us: 0,
            wall_offset_us: 0,
        };
        assert_eq!(e.mono_at(1_000_000_000 + 5), 5_000);
    }
}
