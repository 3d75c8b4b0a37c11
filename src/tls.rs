//! What the registry client and the API client share about TLS material.

use ureq::tls::{Certificate, PemItem};

/// Every certificate in a PEM bundle (other blocks, such as keys, are skipped).
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Certificate<'static>>, String> {
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::Certificate(c)) => out.push(c.to_owned()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out)
}
