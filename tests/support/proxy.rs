//! A man in the middle between clients and the real data server: it passes requests through,
//! or damages version downloads, or answers everything with garbage.
#![allow(dead_code)]

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
    /// Flip a byte in every version download.
    FlipByte,
    /// Cut every version download in half.
    Truncate,
    /// Replace every version download with a well-formed version of the same number and a
    /// valid checksum, but other content.
    Forge,
    /// Answer every request with junk (random bytes, bad HTTP, bad JSON).
    Garbage,
}

pub struct Proxy {
    pub url: String,
    mode: Arc<Mutex<Mode>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on `listen` ("127.0.0.1:0" for any port) and forwards to `upstream`.
    pub fn start(listen: &str, upstream: &str, mode: Mode) -> Proxy {
        let listener = TcpListener::bind(listen).unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mode = Arc::new(Mutex::new(mode));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s, up) = (mode.clone(), stop.clone(), upstream.to_owned());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        n += 1;
                        let mode = *m.lock().unwrap();
                        let up = up.clone();
                        std::thread::spawn(move || serve(stream, &up, mode, n));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Proxy { url, mode, stop }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
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

fn serve(mut stream: TcpStream, upstream: &str, mode: Mode, n: u64) {
    stream.set_nonblocking(false).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
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
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
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
    let pass: Vec<(String, String)> = resp
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
    if path.starts_with("/v1/versions/") && status == 200 {
        body = damage(body, mode);
    }
    respond(&mut stream, status, &pass, &body);
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
        Mode::PassThrough | Mode::Garbage => body,
    }
}
