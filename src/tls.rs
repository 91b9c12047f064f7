//! Which certificate authorities an `https://` data server is verified against.
//!
//! TLS is always built (rustls through ureq). By default the platform verifier checks the
//! server against the system's roots (`/etc/ssl/certs` on Linux, honouring `SSL_CERT_FILE`);
//! `ca_file` replaces them with the authorities in one PEM file, for a farm with a private CA.
//! The file is read once, when the handle opens: a missing or empty file fails the open with
//! a message that names it, rather than every check-in later with a handshake error.

use std::path::Path;

use ureq::tls::{PemItem, RootCerts, TlsConfig};

/// The TLS configuration of a handle's agents.
pub fn config(ca_file: Option<&Path>) -> Result<TlsConfig, String> {
    let roots = match ca_file {
        None => RootCerts::PlatformVerifier,
        Some(path) => RootCerts::new_with_certs(&authorities(path)?),
    };
    Ok(TlsConfig::builder().root_certs(roots).build())
}

/// At most this much PEM: a bundle of every public root is about 250 KiB.
const MAX_CA_FILE_BYTES: u64 = 16 << 20;

fn authorities(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("ca_file {name}: {e}"))?;
    let mut pem = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_CA_FILE_BYTES + 1),
        &mut pem,
    )
    .map_err(|e| format!("ca_file {name}: {e}"))?;
    if pem.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(format!(
            "ca_file {name} is larger than {MAX_CA_FILE_BYTES} bytes"
        ));
    }
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        // A key next to the certificates is not ours to use, and harmless to skip.
        if let PemItem::Certificate(c) = item.map_err(|e| format!("ca_file {name}: {e}"))? {
            certs.push(c);
        }
    }
    if certs.is_empty() {
        return Err(format!("ca_file {name} holds no PEM certificate"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_certificate_less_ca_file_is_refused_with_its_name() {
        let e = config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = config(Some(&empty)).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        assert!(config(None).is_ok());
    }
}
