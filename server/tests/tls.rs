//! HTTPS on the data server: the CLI against a test CA, a wrong CA, plain HTTP on the TLS
//! port, and a certificate reloaded on SIGHUP under an open keep-alive connection.

#[path = "../../tests/support/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::bin;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (Debian's openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` (name.pem, name.key).
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
}

/// A server certificate for 127.0.0.1 signed by `ca`, with `serial`, as srv.pem / srv.key.
fn make_server_cert(dir: &Path, ca: &str, serial: u32) {
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "new.key",
            "-out",
            "new.csr",
            "-subj",
            "/CN=lockstep-test",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "new.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            &serial.to_string(),
            "-days",
            "2",
            "-out",
            "new.pem",
            "-extfile",
            "ext",
        ],
    );
    // Put in place by renames, as a certificate tool would.
    std::fs::rename(dir.join("new.key"), dir.join("srv.key")).unwrap();
    std::fs::rename(dir.join("new.pem"), dir.join("srv.pem")).unwrap();
}

struct TlsServer {
    child: Child,
    url: String,
    addr: String,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(dir: &Path, url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin())
        .current_dir(dir)
        .args(["--server", url])
        .args(args)
        .env_remove("SSL_CERT_FILE")
        .env_remove("LOCKSTEP_CA_FILE")
        .env("LOCKSTEP_ADMIN_TOKEN", "a-secret")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn start(dir: &Path) -> TlsServer {
    let mut child = Command::new(bin())
        .current_dir(dir)
        .args(["serve", "--db", "db", "--listen", "127.0.0.1:0"])
        .args(["--tls-cert", "srv.pem", "--tls-key", "srv.key"])
        .env("LOCKSTEP_ADMIN_TOKEN", "a-secret")
        .env("LOCKSTEP_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("lockstep: listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    assert!(url.starts_with("https://"), "{url}");
    let addr = url.strip_prefix("https://").unwrap().to_owned();
    let s = TlsServer { child, url, addr };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cli(dir, &s.url, &["status"], &[("LOCKSTEP_CA_FILE", "ca.pem")])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

/// The serial of the certificate a new connection is given, by `openssl s_client`.
fn served_serial(dir: &Path, addr: &str) -> String {
    let out = Command::new("sh")
        .current_dir(dir)
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_cli_over_https_with_a_test_ca_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    make_server_cert(d, "ca", 1001);
    let s = start(d);

    // --ca-file, and SSL_CERT_FILE for the system roots.
    let put = cli(d, &s.url, &["--ca-file", "ca.pem", "put", "k", "v1"], &[]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let got = cli(d, &s.url, &["get", "k"], &[("SSL_CERT_FILE", "ca.pem")]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "v1");

    // A wrong CA, and the system roots alone, are refused.
    for args in [
        &["--ca-file", "other-ca.pem", "get", "k"][..],
        &["get", "k"],
    ] {
        let refused = cli(d, &s.url, args, &[]);
        assert!(!refused.status.success(), "{args:?}");
        let e = String::from_utf8_lossy(&refused.stderr);
        assert!(
            e.contains("UnknownIssuer") || e.contains("certificate"),
            "{e}"
        );
    }

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    assert!(
        !buf.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    let plain = cli(d, &s.url.replace("https://", "http://"), &["get", "k"], &[]);
    assert!(!plain.status.success());
    // Refused, not crashed: TLS on the same port still answers.
    let after = cli(d, &s.url, &["--ca-file", "ca.pem", "get", "k"], &[]);
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&after.stdout).trim(), "v1");
}

#[test]
fn the_certificate_reloads_on_sighup_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ca");
    make_server_cert(d, "ca", 1001);
    let s = start(d);
    assert_eq!(served_serial(d, &s.addr), "serial=03E9");

    // A keep-alive connection opened with the first certificate.
    let mut held = Command::new("openssl")
        .current_dir(d)
        .args([
            "s_client", "-quiet", "-connect", &s.addr, "-CAfile", "ca.pem",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut to = held.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut from = held.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let ask = |to: &mut std::process::ChildStdin| {
        to.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        to.flush().unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&got).contains("\"status\":\"ok\"") {
            let left = deadline.saturating_duration_since(Instant::now());
            got.extend(
                rx.recv_timeout(left)
                    .expect("no answer on the held connection"),
            );
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    };
    ask(&mut to);

    make_server_cert(d, "ca", 2002);
    let r = unsafe { libc::kill(s.child.id() as i32, libc::SIGHUP) };
    assert_eq!(r, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_serial(d, &s.addr) != "serial=07D2" {
        assert!(
            Instant::now() < deadline,
            "new connections never saw the new certificate"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The connection opened before goes on.
    ask(&mut to);
    drop(to);
    let _ = held.kill();
    let _ = held.wait();
}
