//! Delta against full download, for `benches/delta.sh`: a client that holds the active version
//! and needs the staged one, measured both ways against a running data server.
//!
//! Usage: `delta_client URL TOKEN ROUNDS`. Waits until a check-in offers a delta from the
//! active version to a staged one, then prints, side by side, the bytes a client receives per cycle (the full
//! version and the delta, each plain and as zstd), the client's time to download and verify
//! the full version against its time to download, apply and verify the delta, and the CPU time
//! of making the delta (`lockstep::delta::make`, the data server's code, here on one thread).
//! Both client paths and the make run interleaved for ROUNDS rounds after one unrecorded
//! warm-up, in alternating order; each figure is the median with its min–max.

use std::io::Read;
use std::time::Instant;

use lockstep::activation::Version;
use lockstep::format::VersionBuf;
use lockstep::wire::{self, CheckinResponse};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// GET `url`; returns (bytes as transferred, decoded bytes). The body streams into the
/// client's own aligned buffer (through a streaming zstd decoder when compressed), as
/// `src/retrieval.rs` does, so neither path pays for an extra copy.
fn get(agent: &ureq::Agent, url: &str, token: &str, zstd: bool) -> (usize, VersionBuf) {
    let mut req = agent
        .get(url)
        .header("Authorization", &format!("Bearer {token}"));
    if zstd {
        req = req.header("Accept-Encoding", "zstd");
    }
    let mut resp = req.call().expect("request");
    assert_eq!(resp.status().as_u16(), 200, "{url}");
    let compressed = resp
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v == "zstd");
    let mut counted = Counted {
        inner: resp.body_mut().with_config().limit(u64::MAX).reader(),
        n: 0,
    };
    let mut buf = VersionBuf::new();
    if compressed {
        let mut decoder = zstd::stream::read::Decoder::new(&mut counted).expect("zstd");
        buf.read_capped(&mut decoder, u64::MAX, None).expect("body");
    } else {
        buf.read_capped(&mut counted, u64::MAX, None).expect("body");
    }
    (counted.n, buf)
}

/// A reader that counts the bytes as transferred.
struct Counted<R> {
    inner: R,
    n: usize,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        self.n += n;
        Ok(n)
    }
}

/// The data server's CPU time so far (utime + stime from /proc, in ms).
fn server_cpu_ms(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1000.0 / hz
}

fn thread_cpu_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

fn summary(label: &str, mut ms: Vec<f64>) -> f64 {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = ms[ms.len() / 2];
    println!(
        "  {label:<44} median {median:>9.1} ms  (min {:.1} – max {:.1}, {} rounds)",
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    );
    median
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [url, token, rounds, server_pid] = &args[..] else {
        eprintln!("usage: delta_client URL TOKEN ROUNDS SERVER_PID");
        std::process::exit(2);
    };
    let rounds: usize = rounds.parse().expect("ROUNDS");
    let agent = agent();
    // Waits for the change to be staged: the staged version stays so for one window only, but
    // the URLs the check-in gives stay good after it goes live (versions are kept, and the
    // data server makes a delta of a pair it did not name again from the version below).
    let deadline = Instant::now() + std::time::Duration::from_secs(1800);
    let mut cpu_before_offer;
    let answer = loop {
        cpu_before_offer = server_cpu_ms(server_pid);
        let mut resp = agent
            .get(&format!("{url}{}?name=delta-bench", wire::PATH_CHECKIN))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .expect("check-in");
        let answer: CheckinResponse =
            serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap()).expect("sync table");
        if answer.sync.staged_version != answer.sync.active_version
            && !answer.staged_delta_from_active.is_empty()
        {
            break answer;
        }
        assert!(Instant::now() < deadline, "no delta offered in 30 minutes");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let (a, b) = (answer.sync.active_version, answer.sync.staged_version);
    let version_url = |n: u64| format!("{url}{}/{n}", wire::PATH_VERSIONS);
    let full_url = if answer.staged_blob.is_empty() {
        version_url(b)
    } else {
        format!("{url}{}", answer.staged_blob)
    };
    let delta_url = format!("{url}{}", answer.staged_delta_from_active);
    let (_, base) = get(&agent, &version_url(a), token, false);
    let base = Version::verify(base, Some(a)).expect("active version verifies");

    // First delta request: the data server makes it (once) if the check-in has not already.
    let started = Instant::now();
    let (delta_plain, _) = get(&agent, &delta_url, token, false);
    let first_delta_ms = started.elapsed().as_secs_f64() * 1e3;
    // From just before the check-in that first named the pair (which starts the make) to the
    // delta's last byte: the data server's whole cost of making it and serving it once.
    let server_make_ms = server_cpu_ms(server_pid) - cpu_before_offer;
    let (full_plain, target) = get(&agent, &full_url, token, false);
    let (full_zstd, _) = get(&agent, &full_url, token, true);
    let (delta_zstd, _) = get(&agent, &delta_url, token, true);
    let entries = Version::verify(target.clone(), Some(b)).unwrap().len();
    println!(
        "versions {a} -> {b}: {entries} keys, version {full_plain} bytes, delta {delta_plain} \
         bytes (first request {first_delta_ms:.0} ms)"
    );
    println!("bytes per client per cycle (as transferred):");
    println!("  full version          {full_plain:>12}   zstd {full_zstd:>12}");
    println!(
        "  delta                 {delta_plain:>12}   zstd {delta_zstd:>12}   \
         delta/full {:.2}% (zstd {:.2}% of zstd)",
        100.0 * delta_plain as f64 / full_plain as f64,
        100.0 * delta_zstd as f64 / full_zstd as f64
    );

    let mut full_ms = Vec::new();
    let mut full_plain_ms = Vec::new();
    let mut delta_ms = Vec::new();
    let mut make_ms = Vec::new();
    for round in 0..=rounds {
        let mut order = [0, 1, 2, 3];
        if round % 2 == 1 {
            order.reverse();
        }
        for which in order {
            match which {
                0 => {
                    let t = Instant::now();
                    let (_, bytes) = get(&agent, &full_url, token, true);
                    let v = Version::verify(bytes, Some(b)).expect("full verifies");
                    assert_eq!(v.number(), b);
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    if round > 0 {
                        full_ms.push(ms);
                    }
                }
                1 => {
                    let t = Instant::now();
                    let (_, d) = get(&agent, &delta_url, token, true);
                    let rebuilt =
                        lockstep::delta::apply(base.bytes(), &d, u64::MAX).expect("delta applies");
                    let v = Version::verify(rebuilt, Some(b)).expect("rebuilt verifies");
                    assert_eq!(
                        v.checksum(),
                        wire::parse_checksum_hex(&answer.staged_checksum).unwrap()
                    );
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    if round > 0 {
                        delta_ms.push(ms);
                    }
                }
                3 => {
                    // The full version's best case on loopback: no decompression at all.
                    let t = Instant::now();
                    let (_, bytes) = get(&agent, &full_url, token, false);
                    let v = Version::verify(bytes, Some(b)).expect("full verifies");
                    assert_eq!(v.number(), b);
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    if round > 0 {
                        full_plain_ms.push(ms);
                    }
                }
                _ => {
                    let cpu = thread_cpu_ns();
                    let made = lockstep::delta::make(base.bytes(), &target).expect("make");
                    let ms = (thread_cpu_ns() - cpu) as f64 / 1e6;
                    assert_eq!(made.len(), delta_plain);
                    if round > 0 {
                        make_ms.push(ms);
                    }
                }
            }
        }
    }
    println!("client, from the request to a verified version ready to stage (zstd accepted):");
    let full = summary("download (zstd) + verify the full version", full_ms);
    let plain = summary("download (plain) + verify the full version", full_plain_ms);
    let delta = summary("download + apply + verify the delta", delta_ms);
    println!(
        "  delta/full time {:.2} (against the plain full download {:.2})",
        delta / full,
        delta / plain
    );
    println!(
        "data server, CPU time (utime+stime from /proc) from the check-in that named the pair \
         to the delta served once: {server_make_ms:.0} ms"
    );
    println!("the same code on one thread here, CPU time to make the delta:");
    summary("delta::make (diff both, encode)", make_ms);
}
