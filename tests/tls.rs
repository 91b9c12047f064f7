//! HTTPS to the data server: the client verifies it against a `ca_file`, and refuses a server
//! its authorities did not sign (a clear TLS error, never a crash or a read of its data).

#[path = "support/mod.rs"]
mod support;
// Not in support/mod.rs: the server crate's tests share that file without rustls.
#[path = "support/tls.rs"]
mod tls_support;

use std::time::{Duration, Instant};

use lockstep::client::{Client, OpenError};
use support::*;
use tls_support::{TestCa, TlsProxy};

fn open(url: &str, ca: Option<&std::path::Path>) -> Result<Client, OpenError> {
    let ca = ca.map_or(String::new(), |p| format!(";ca_file={}", p.display()));
    Client::open(&format!(
        "url={url};name=tls;cache_dir=;bootstrap_wait_ms=5000{ca}"
    ))
}

fn wait_value(client: &Client, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(key.as_bytes()).ok().as_deref() != Some(value.as_bytes()) {
        assert!(Instant::now() < deadline, "{key} never became {value}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn https_with_the_right_ca_file_converges_and_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = fast_server(&dir.path().join("db"));
    put(&server, "price", "12.50");
    wait_active(&server, "price", "12.50");
    let ca = TestCa::new(&dir.path().join("pki"), "farm");
    let stranger = TestCa::new(&dir.path().join("pki"), "stranger");
    let proxy = TlsProxy::start(&ca, &server.url);

    let client = open(&proxy.url, Some(&ca.ca_pem)).expect("open over HTTPS");
    wait_value(&client, "price", "12.50");
    put(&server, "price", "13.75");
    wait_value(&client, "price", "13.75");
    assert_eq!(
        client.stats().last_failure,
        lockstep::retrieval::Failure::None
    );
    drop(client);

    // Signed by an authority the client was not told to trust: refused at the handshake.
    for ca_file in [Some(stranger.ca_pem.as_path()), None] {
        match open(&proxy.url, ca_file) {
            Err(OpenError::Unreachable(why)) => assert!(
                why.to_lowercase().contains("certificate"),
                "not a clear TLS error: {why}"
            ),
            Err(other) => panic!("expected a refused certificate, got {other:?}"),
            Ok(_) => panic!("a server signed by another CA was trusted ({ca_file:?})"),
        }
    }
    // A ca_file that holds no certificate fails the open, naming the file.
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "no certificates here\n").unwrap();
    match open(&proxy.url, Some(&bogus)) {
        Err(OpenError::BadOption(why)) => assert!(why.contains("bogus.pem"), "{why}"),
        other => panic!("expected a bad option, got {:?}", other.err()),
    }
}
