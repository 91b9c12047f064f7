//! TLS for tests: a private certificate authority made with the `openssl` command, and a
//! TLS-terminating proxy (rustls) in front of a real data server, so the client's HTTPS path
//! is tested against real certificates and a real handshake.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate authority and one server certificate it signed for 127.0.0.1.
pub struct TestCa {
    /// The authority's certificate (what a client's `ca_file` names).
    pub ca_pem: PathBuf,
    /// The server's certificate and key.
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// Makes an authority named `name` in `dir` and a certificate for 127.0.0.1 and
    /// localhost signed by it.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = format!("{name}-ca.key");
        let ca_pem = format!("{name}-ca.pem");
        let key = format!("{name}-server.key");
        let csr = format!("{name}-server.csr");
        let cert = format!("{name}-server.pem");
        let ext = format!("{name}-ext.cnf");
        std::fs::write(
            dir.join(&ext),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut args = vec!["req", "-x509", "-days", "2", "-subj"];
        let ca_subject = format!("/CN={name} test CA");
        args.extend([ca_subject.as_str(), "-keyout", &ca_key, "-out", &ca_pem]);
        args.extend(ec);
        openssl(dir, &args);
        let mut args = vec![
            "req",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &key,
            "-out",
            &csr,
        ];
        args.extend(ec);
        openssl(dir, &args);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        );
        TestCa {
            ca_pem: dir.join(ca_pem),
            cert_pem: dir.join(cert),
            key_pem: dir.join(key),
        }
    }
}

/// Terminates TLS with `ca`'s server certificate and forwards the plain bytes to `upstream`
/// (`http://host:port`); stops when dropped.
pub struct TlsProxy {
    pub url: String,
    stop: Arc<AtomicBool>,
}

impl TlsProxy {
    pub fn start(ca: &TestCa, upstream: &str) -> TlsProxy {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca.cert_pem)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&ca.key_pem).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (config, upstream, s) = (config.clone(), upstream.clone(), s.clone());
                        std::thread::spawn(move || relay(client, config, &upstream, &s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TlsProxy { url, stop }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Pumps bytes both ways between a TLS client and the plain upstream until either closes.
/// One thread, short read timeouts on both sides: a rustls stream cannot be split.
fn relay(client: TcpStream, config: Arc<rustls::ServerConfig>, upstream: &str, stop: &AtomicBool) {
    let tick = Some(Duration::from_millis(2));
    let _ = client.set_nonblocking(false);
    let _ = client.set_read_timeout(tick);
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, client);
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    let _ = up.set_read_timeout(tick);
    let mut buf = vec![0u8; 64 * 1024];
    let idle = |e: &std::io::Error| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut);
    while !stop.load(Ordering::Relaxed) {
        match tls.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if up.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if idle(&e) => {}
            // A failed handshake (the client refused our certificate) ends the connection.
            Err(_) => return,
        }
        match up.read(&mut buf) {
            Ok(0) => {
                let _ = tls.flush();
                return;
            }
            Ok(n) => {
                if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
                    return;
                }
            }
            Err(e) if idle(&e) => {}
            Err(_) => return,
        }
    }
}
