//! The boundary herd's load generator, for `benches/herd.sh`: N check-ins sent together just
//! after an activation time T, over connections opened beforehand and spread over the given
//! data-server instances, each timed from its own send to the end of its answer.
//!
//! One thread drives every connection (non-blocking sockets and `poll`), so the N requests
//! leave within a millisecond or two of each other and an answer is timestamped when it
//! arrives, not when a thread blocked on another socket gets round to it.
//!
//! Usage: `herd_client T_US N URL...`; prints one JSON object: sorted latencies (µs), the
//! status of each answer, how many answers said `rotated`, the latency of those, and how long
//! sending the N requests took. Run by `cargo bench --bench herd_client -- …` or directly.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest wait for all the answers.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read; a check-in's is a few hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;

struct Conn {
    stream: TcpStream,
    request: Vec<u8>,
    sent: Option<Instant>,
    answer: Vec<u8>,
    done: Option<(Duration, u16, bool)>,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

/// `(status, rotated)` once `buf` holds a whole answer.
fn parse(buf: &[u8]) -> Option<(u16, bool)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    if buf.len() < end + length {
        return None;
    }
    let body = &buf[end..end + length];
    let rotated = body.windows(14).any(|w| w == b"\"rotated\":true");
    Some((status, rotated))
}

fn main() {
    // `cargo bench` adds `--bench`.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [t_us, n, urls @ ..] = args.as_slice() else {
        eprintln!("usage: herd_client T_US N URL...");
        std::process::exit(2);
    };
    let (t_us, n): (i64, usize) = (t_us.parse().expect("T_US"), n.parse().expect("N"));
    assert!(!urls.is_empty(), "give at least one URL");
    // Connected 2 s before T, not at once: T may be a whole interval away, and a data server
    // closes a connection that sits idle longer than its header timeout (20 s by default), so
    // with a 30 s interval every check-in of the herd found its connection closed.
    let connect_at = t_us - 2_000_000 - now_us();
    if connect_at > 0 {
        std::thread::sleep(Duration::from_micros(connect_at as u64));
    }
    let mut conns: Vec<Conn> = (0..n)
        .map(|i| {
            let url = &urls[i % urls.len()];
            let authority = url.strip_prefix("http://").expect("an http:// URL");
            let addr = authority
                .to_socket_addrs()
                .expect("resolve")
                .next()
                .expect("an address");
            let stream = TcpStream::connect(addr).expect("connect");
            stream.set_nodelay(true).unwrap();
            // What a web server of a farm sends: who it is and what it holds.
            let request = format!(
                "GET /v1/checkin?name=herd-{i}&host=host-{}&pid={}&offset_us=0&error_us=500&lagging=0 HTTP/1.1\r\n\
                 Host: {authority}\r\n\r\n",
                i % 50,
                10_000 + i
            );
            Conn {
                stream,
                request: request.into_bytes(),
                sent: None,
                answer: Vec::new(),
                done: None,
            }
        })
        .collect();
    let wait = t_us + 1_000 - now_us();
    if wait > 0 {
        std::thread::sleep(Duration::from_micros(wait as u64));
    }
    let first = Instant::now();
    for c in &mut conns {
        c.sent = Some(Instant::now());
        c.stream.write_all(&c.request).expect("send a check-in");
    }
    let sending = first.elapsed();
    for c in &conns {
        c.stream.set_nonblocking(true).unwrap();
    }
    let deadline = first + TIMEOUT;
    let mut buf = vec![0u8; 16 * 1024];
    let mut left = n;
    while left > 0 && Instant::now() < deadline {
        let open: Vec<usize> = (0..n).filter(|&i| conns[i].done.is_none()).collect();
        let mut fds: Vec<libc::pollfd> = open
            .iter()
            .map(|&i| libc::pollfd {
                fd: conns[i].stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the whole call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if ready <= 0 {
            continue;
        }
        let at = Instant::now();
        for (k, fd) in fds.iter().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            let c = &mut conns[open[k]];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        c.done = Some((at - c.sent.unwrap(), 0, false));
                        break;
                    }
                    Ok(got) => {
                        c.answer.extend_from_slice(&buf[..got]);
                        assert!(c.answer.len() <= MAX_ANSWER, "answer too long");
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        c.done = Some((at - c.sent.unwrap(), 0, false));
                        break;
                    }
                }
            }
            if c.done.is_none() {
                if let Some((status, rotated)) = parse(&c.answer) {
                    c.done = Some((at - c.sent.unwrap(), status, rotated));
                }
            }
            if c.done.is_some() {
                left -= 1;
            }
        }
    }
    let mut latencies: Vec<u64> = Vec::with_capacity(n);
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    let mut rotating = Vec::new();
    for c in &conns {
        let (latency, status, rotated) = c.done.unwrap_or((TIMEOUT, 0, false));
        let us = latency.as_micros() as u64;
        latencies.push(us);
        *statuses.entry(status.to_string()).or_default() += 1;
        if rotated {
            rotating.push(us);
        }
    }
    latencies.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "latencies_us": latencies,
            "statuses": statuses,
            "rotated": rotating.len(),
            "rotating_us": rotating,
            "sending_us": sending.as_micros() as u64,
        })
    );
}
