//! A man in the middle between clients and the real data server: it passes requests through,
//! or damages version downloads, or answers everything with garbage.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstep::format::{self, Content};

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    PassThrough,
    /// Flip a byte in every version download, whole or as a delta.
    FlipByte,
    /// Cut every version download (whole or as a delta) in half.
    Truncate,
    /// Replace every version download with a well-formed version of the same number and a
    /// valid checksum, but other content; deltas are answered 404.
    Forge,
    /// Answer every request with junk (random bytes, bad HTTP, bad JSON).
    Garbage,
    /// Accept every connection, read the request, and never answer.
    Blackhole,
    /// Pass check-ins through; answer version downloads (whole or as a delta) with their
    /// headers and half their body, then stall forever.
    StallBody,
    /// Pass downloads through; answer check-ins with their headers and half their body, then
    /// stall forever.
    StallCheckin,
    /// Replace every version download with one whose header and checksum are right but whose
    /// archive is structurally invalid, and announce that checksum in check-ins: only the
    /// client's structural validation can catch it.
    ForgeStructure,
    /// Pass everything through, but move the data server's clock headers of a held
    /// (long-poll) answer [`HELD_SKEW_US`] ahead: a client that took it as a clock sample
    /// would move its offset by that much.
    SkewHeld,
    /// Answer delta downloads 404 (the client downloads the full version) and hold the body of
    /// every full version's download [`SLOW_FULL_DELAY`] after its head: a slow link.
    SlowFull,
    /// Pass everything through, but send the body of every version download (whole or as a
    /// delta) at [`THROTTLE_BYTES_PER_SEC`]: a slow link that never stalls.
    Throttle,
    /// Pass everything through, but hold every check-in's answer [`SLOW_CHECKIN_DELAY`].
    SlowCheckin,
}

/// The rate of [`Mode::Throttle`].
pub const THROTTLE_BYTES_PER_SEC: usize = 400 << 10;

/// How long [`Mode::SlowCheckin`] holds a check-in's answer.
pub const SLOW_CHECKIN_DELAY: Duration = Duration::from_millis(1_500);

/// How long [`Mode::SlowFull`] holds a full version's body.
pub const SLOW_FULL_DELAY: Duration = Duration::from_millis(6_800);

/// How far [`Mode::SkewHeld`] moves a held answer's clock, µs.
pub const HELD_SKEW_US: i64 = 5_000_000;

pub struct Proxy {
    pub url: String,
    mode: Arc<Mutex<Mode>>,
    stop: Arc<AtomicBool>,
    /// Requests that reached the data server, by path without the query.
    downloads: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Proxy {
    /// Listens on `listen` ("127.0.0.1:0" for any port) and forwards to `upstream`.
    pub fn start(listen: &str, upstream: &str, mode: Mode) -> Proxy {
        let listener = TcpListener::bind(listen).unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mode = Arc::new(Mutex::new(mode));
        let stop = Arc::new(AtomicBool::new(false));
        let downloads = Arc::new(Mutex::new(BTreeMap::new()));
        let (m, s, up) = (mode.clone(), stop.clone(), upstream.to_owned());
        let d = downloads.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        n += 1;
                        let mode = *m.lock().unwrap();
                        let (up, d, s) = (up.clone(), d.clone(), s.clone());
                        std::thread::spawn(move || serve(stream, &up, mode, n, &d, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Proxy {
            url,
            mode,
            stop,
            downloads,
        }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// How many times each version path (the old route or a blob URL) was requested through
    /// the proxy.
    pub fn downloads(&self) -> BTreeMap<String, u64> {
        self.downloads
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| is_version_path(p))
            .map(|(p, n)| (p.clone(), *n))
            .collect()
    }

    /// How many times each version was transferred through the proxy, by version number:
    /// whole (the old route or a blob URL) or as a delta to it. A delta and then a full
    /// download of the same version count two.
    pub fn transfers(&self) -> BTreeMap<u64, u64> {
        let mut out = BTreeMap::new();
        for (path, n) in self.downloads.lock().unwrap().iter() {
            let number = if let Some(n) = path.strip_prefix("/v1/versions/") {
                n.parse().ok()
            } else if let Some(name) = path.strip_prefix("/v1/blobs/") {
                name.split('-').next().and_then(|v| v.parse().ok())
            } else if let Some(name) = path.strip_prefix("/v1/deltas/") {
                name.split('-').nth(1).and_then(|v| v.parse().ok())
            } else {
                None
            };
            if let Some(number) = number.filter(|_| *n > 0) {
                *out.entry(number).or_default() += n;
            }
        }
        out
    }

    /// How many check-ins reached the data server through the proxy.
    pub fn checkins(&self) -> u64 {
        self.downloads
            .lock()
            .unwrap()
            .get("/v1/checkin")
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A full version's download: `/v1/versions/{n}` or a blob URL (`/v1/blobs/...`).
fn is_version_path(path: &str) -> bool {
    path.starts_with("/v1/versions/") || path.starts_with("/v1/blobs/")
}

/// Reads one HTTP/1.1 request head from an accepted connection (made blocking): its path and
/// headers. None if the connection broke first.
pub fn read_request(stream: &TcpStream) -> Option<(String, Vec<(String, String)>)> {
    stream.set_nonblocking(false).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    Some((path.to_owned(), headers))
}

/// Writes one HTTP/1.1 response and closes the exchange.
pub fn respond(stream: &mut TcpStream, status: u16, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn serve(
    mut stream: TcpStream,
    upstream: &str,
    mode: Mode,
    n: u64,
    downloads: &Mutex<BTreeMap<String, u64>>,
    stop: &AtomicBool,
) {
    let Some((path, headers)) = read_request(&stream) else {
        return;
    };
    if mode == Mode::Blackhole {
        hold_until(stop);
        return;
    }
    let route = path.split('?').next().unwrap_or("").to_owned();
    *downloads.lock().unwrap().entry(route.clone()).or_default() += 1;
    // A forged version cannot be sent as a delta against the real one: a client offered a delta
    // gets the full (forged) download instead, as it would from a data server that had none.
    if matches!(mode, Mode::SlowFull | Mode::Forge) && path.starts_with("/v1/deltas/") {
        let mut d = downloads.lock().unwrap();
        if let Some(n) = d.get_mut(&route) {
            *n -= 1;
        }
        *d.entry(format!("404 {route}")).or_default() += 1;
        drop(d);
        let body = b"{\"error\":\"no delta through this proxy\"}";
        respond(&mut stream, 404, &[], body);
        return;
    }
    if mode == Mode::Garbage {
        let junk: Vec<u8> = (0..(n * 37 % 500 + 1))
            .map(|i| ((i * 131 + n * 7) % 256) as u8)
            .collect();
        match n % 4 {
            0 => {
                let _ = stream.write_all(&junk);
            }
            1 => respond(&mut stream, 200, &[], &junk),
            2 => respond(&mut stream, 200, &[], b"{\"activation_time_us\": \"soon\"}"),
            _ => respond(&mut stream, 500, &[], b"<html>oops</html>"),
        }
        return;
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(&format!("{upstream}{path}"));
    for (k, v) in &headers {
        if k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("if-none-match") {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let Ok(mut resp) = req.call() else {
        respond(&mut stream, 502, &[], b"{\"error\":\"upstream down\"}");
        return;
    };
    let status = resp.status().as_u16();
    if path.starts_with("/v1/deltas/") && status != 200 {
        // No delta came (none worth sending, not modified): not a transfer of its version.
        let mut d = downloads.lock().unwrap();
        if let Some(n) = d.get_mut(&route) {
            *n -= 1;
        }
        *d.entry(format!("{status} {route}")).or_default() += 1;
    }
    let mut pass: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            k.starts_with("x-lockstep") || k == "etag" || k == "content-type"
        })
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let mut body = Vec::new();
    let _ = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .reader()
        .read_to_end(&mut body);
    if mode == Mode::SkewHeld && pass.iter().any(|(k, _)| k == lockstep::wire::HEADER_HELD) {
        for (k, v) in pass.iter_mut() {
            if k == lockstep::wire::HEADER_SERVER_TIME
                || k == lockstep::wire::HEADER_SERVER_RECEIVED
            {
                *v = (v.parse::<i64>().unwrap_or(0) + HELD_SKEW_US).to_string();
            }
        }
    }
    if mode == Mode::SlowCheckin && path.starts_with("/v1/checkin") {
        std::thread::sleep(SLOW_CHECKIN_DELAY);
    }
    if mode == Mode::StallCheckin && path.starts_with("/v1/checkin") && status == 200 {
        stall_body(&mut stream, &pass, &body, stop);
        return;
    }
    // Deltas carry versions too: the damaging modes damage them as well, or a client would get
    // the real version through an undamaged delta while "every download" was meant damaged.
    let is_delta = path.starts_with("/v1/deltas/");
    if (is_version_path(&path) || is_delta) && status == 200 {
        if mode == Mode::StallBody {
            stall_body(&mut stream, &pass, &body, stop);
            return;
        }
        if mode == Mode::Throttle {
            trickle(&mut stream, &pass, &body, stop);
            return;
        }
        // An honest delta rebuilds the real version, whose checksum is not the forged one
        // announced: the client's announced-checksum check refuses it.
        if !(is_delta && mode == Mode::ForgeStructure) {
            body = damage(body, mode);
        }
    }
    if mode == Mode::ForgeStructure && path.starts_with("/v1/checkin") && status == 200 {
        body = announce_forgeries(&agent, upstream, &headers, body);
        // A table with other announcements is another table: once the proxy stops lying,
        // the client's If-None-Match must not match and keep the forged checksums.
        for (k, v) in pass.iter_mut() {
            if k == "etag" {
                v.push_str("-forged");
            }
        }
    }
    if mode == Mode::SlowFull && is_version_path(&path) {
        // The head at once (the client's wait for it is the check-in timeout), the body late.
        let mut head = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in &pass {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        std::thread::sleep(SLOW_FULL_DELAY);
        let _ = stream.write_all(&body);
        return;
    }
    respond(&mut stream, status, &pass, &body);
}

/// Sends a 200 answer whose body goes out at [`THROTTLE_BYTES_PER_SEC`], in 16 KiB steps.
fn trickle(stream: &mut TcpStream, headers: &[(String, String)], body: &[u8], stop: &AtomicBool) {
    let mut head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    const STEP: usize = 16 << 10;
    let pause = Duration::from_secs_f64(STEP as f64 / THROTTLE_BYTES_PER_SEC as f64);
    for chunk in body.chunks(STEP) {
        if stop.load(Ordering::Relaxed) || stream.write_all(chunk).is_err() {
            return;
        }
        std::thread::sleep(pause);
    }
}

/// Keeps a connection open, saying nothing, until the proxy stops.
fn hold_until(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stall_body(
    stream: &mut TcpStream,
    headers: &[(String, String)],
    body: &[u8],
    stop: &AtomicBool,
) {
    let mut head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body[..body.len() / 2]);
    let _ = stream.flush();
    hold_until(stop);
}

/// The structurally invalid twin of a version: its archive's root points outside the
/// payload, and the header's checksum is recomputed so that everything but rkyv's
/// validation accepts it.
pub fn forge_structure(body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    let n = b.len();
    for byte in &mut b[n - 8..] {
        *byte = 0x7f;
    }
    let sum = format::compute_checksum(&b).unwrap();
    b[56..64].copy_from_slice(&sum.to_le_bytes());
    b
}

/// Rewrites a check-in answer so that it announces the checksums of the forged versions.
fn announce_forgeries(
    agent: &ureq::Agent,
    upstream: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Vec<u8> {
    let Ok(mut r) = serde_json::from_slice::<lockstep::wire::CheckinResponse>(&body) else {
        return body;
    };
    let forged_checksum = |version: u64| -> Option<String> {
        let mut req = agent.get(&format!("{upstream}/v1/versions/{version}"));
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("authorization") {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        let mut resp = req.call().ok()?;
        let real = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .ok()?;
        let forged = forge_structure(&real);
        Some(lockstep::wire::checksum_hex(
            format::read_header(&forged).ok()?.checksum,
        ))
    };
    if let Some(c) = forged_checksum(r.sync.staged_version) {
        r.staged_checksum = c;
    }
    if let Some(c) = forged_checksum(r.sync.active_version) {
        r.active_checksum = c;
    }
    serde_json::to_vec(&r).unwrap()
}

fn damage(body: Vec<u8>, mode: Mode) -> Vec<u8> {
    match mode {
        Mode::FlipByte => {
            let mut b = body;
            let i = b.len() * 2 / 3;
            b[i] ^= 0x20;
            b
        }
        Mode::Truncate => body[..body.len() / 2].to_vec(),
        Mode::Forge => {
            let header = format::read_header(&body).unwrap();
            let mut content = Content::new();
            content.insert(b"price".to_vec(), b"0.01".to_vec());
            format::encode(header.version, header.created_us, &content)
                .unwrap()
                .to_vec()
        }
        Mode::ForgeStructure => forge_structure(&body),
        Mode::PassThrough
        | Mode::Garbage
        | Mode::Blackhole
        | Mode::StallBody
        | Mode::StallCheckin
        | Mode::SkewHeld
        | Mode::SlowFull
        | Mode::Throttle
        | Mode::SlowCheckin => body,
    }
}
