//! The X.509 the kubelet's serving side needs on top of `pki.rs`: a certificate request with
//! subjectAltNames (for `kubernetes.io/kubelet-serving`), and the self-signed pair the kubelet
//! writes to `kubelet.crt|key` when it is given no serving certificate: a throw-away CA
//! (`<host>-ca@<time>`) and a leaf it signs (`<host>@<time>`), the leaf first in the file.
//!
//! A CA plus leaf rather than one self-signed leaf, as client-go's GenerateSelfSignedCertKey
//! does: clients that pin `kubelet.crt` then trust an issuer (OpenSSL wants keyCertSign on it)
//! while the leaf stays a plain end-entity certificate (rustls refuses a CA as a leaf).

use std::net::IpAddr;

use super::der::{Writer, BIT_STRING};
use super::pki::{pem_encode, rdn, KeyPair, PkiError, OID_CN, OID_ECDSA_SHA256, OID_O};

/// 1.2.840.113549.1.9.14 extensionRequest (PKCS#9)
const OID_EXTENSION_REQUEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x0e];
/// 2.5.29.17 subjectAltName
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
/// 2.5.29.19 basicConstraints
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
/// 2.5.29.15 keyUsage
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
/// 2.5.29.37 extKeyUsage
const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
/// 1.3.6.1.5.5.7.3.1 id-kp-serverAuth
const OID_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
const BOOLEAN: u8 = 0x01;

/// A PKCS#10 request for `CN=common_name, O=...` signed ecdsa-with-SHA256: with `sans`, a
/// subjectAltName extension request (`KeyPair::csr_pem_with_sans`); without, no attributes
/// (`KeyPair::csr_pem`).
pub(super) fn csr(
    key: &KeyPair,
    common_name: &str,
    organizations: &[&str],
    sans: Option<(&[String], &[IpAddr])>,
) -> Result<String, PkiError> {
    if common_name.is_empty() {
        return Err(PkiError::Invalid(
            "certificate request: empty common name".into(),
        ));
    }
    if sans.is_some_and(|(dns, ips)| dns.is_empty() && ips.is_empty()) {
        return Err(PkiError::Invalid(
            "certificate request: a serving certificate needs a DNS name or an IP address".into(),
        ));
    }
    let mut info = Writer::new();
    info.sequence(|w| {
        w.integer(0);
        w.sequence(|w| {
            rdn(w, OID_CN, common_name);
            for o in organizations {
                rdn(w, OID_O, o);
            }
        });
        w.raw(&key.spki_der());
        // attributes [0] IMPLICIT SET: PKCS#10 makes it mandatory even when empty.
        w.context(0, |w| {
            if let Some((dns, ips)) = sans {
                w.sequence(|w| {
                    w.oid(OID_EXTENSION_REQUEST);
                    w.set(|w| w.sequence(|w| san_extension(w, dns, ips)));
                })
            }
        });
    });
    let info = info.into_bytes();
    let sig = key.sign(&info)?;
    Ok(pem_encode("CERTIFICATE REQUEST", &signed(&info, &sig)))
}

/// `tbs` with its signature algorithm and signature: a Certificate or a CertificationRequest.
fn signed(tbs: &[u8], sig: &[u8]) -> Vec<u8> {
    let mut w = Writer::new();
    w.sequence(|w| {
        w.raw(tbs);
        w.sequence(|w| w.oid(OID_ECDSA_SHA256));
        w.bit_string(sig);
    });
    w.into_bytes()
}

fn extension(w: &mut Writer, oid: &[u8], critical: bool, value: impl FnOnce(&mut Writer)) {
    w.sequence(|w| {
        w.oid(oid);
        if critical {
            w.tlv(BOOLEAN, &[0xff]);
        }
        let mut inner = Writer::new();
        value(&mut inner);
        w.octet_string(&inner.into_bytes());
    });
}

fn san_extension(w: &mut Writer, dns: &[String], ips: &[IpAddr]) {
    extension(w, OID_SAN, false, |w| {
        w.sequence(|w| {
            for d in dns {
                // dNSName [2] IMPLICIT IA5String
                w.tlv(0x82, d.as_bytes());
            }
            for ip in ips {
                // iPAddress [7] IMPLICIT OCTET STRING: 4 or 16 bytes
                match ip {
                    IpAddr::V4(v4) => w.tlv(0x87, &v4.octets()),
                    IpAddr::V6(v6) => w.tlv(0x87, &v6.octets()),
                }
            }
        })
    });
}

/// An X.509 Time: UTCTime through 2049, GeneralizedTime after (RFC 5280 4.1.2.5).
fn time(w: &mut Writer, unix: u64) {
    let s = crate::clock::rfc3339(std::time::Duration::from_secs(unix));
    // "2026-11-27T22:58:32Z" -> "20261127225832Z"
    let digits: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.starts_with("20") && digits[..4] < *"2050" {
        w.tlv(
            super::der::UTC_TIME,
            format!("{}Z", &digits[2..]).as_bytes(),
        );
    } else {
        w.tlv(
            super::der::GENERALIZED_TIME,
            format!("{}Z", digits).as_bytes(),
        );
    }
}

struct CertSpec<'a> {
    subject_cn: &'a str,
    issuer_cn: &'a str,
    subject_key: &'a KeyPair,
    signer: &'a KeyPair,
    not_before: u64,
    not_after: u64,
    ca: bool,
    dns: &'a [String],
    ips: &'a [IpAddr],
}

fn certificate(spec: &CertSpec) -> Result<Vec<u8>, PkiError> {
    let serial = crate::fsutil::random_hex(8)
        .ok()
        .and_then(|h| u64::from_str_radix(&h, 16).ok())
        .ok_or(PkiError::Crypto("no system randomness for a serial number"))?
        >> 1
        | 1;
    let mut tbs = Writer::new();
    tbs.sequence(|w| {
        w.context(0, |w| w.integer(2)); // v3
        w.integer(serial);
        w.sequence(|w| w.oid(OID_ECDSA_SHA256));
        w.sequence(|w| rdn(w, OID_CN, spec.issuer_cn));
        w.sequence(|w| {
            time(w, spec.not_before);
            time(w, spec.not_after);
        });
        w.sequence(|w| rdn(w, OID_CN, spec.subject_cn));
        w.raw(&spec.subject_key.spki_der());
        w.context(3, |w| {
            w.sequence(|w| {
                // keyUsage: digitalSignature (bit 0), plus keyCertSign (bit 5) for the CA.
                extension(w, OID_KEY_USAGE, true, |w| {
                    if spec.ca {
                        w.tlv(BIT_STRING, &[2, 0x84]);
                    } else {
                        w.tlv(BIT_STRING, &[7, 0x80]);
                    }
                });
                if !spec.ca {
                    extension(w, OID_EXT_KEY_USAGE, false, |w| {
                        w.sequence(|w| w.oid(OID_SERVER_AUTH))
                    });
                }
                extension(w, OID_BASIC_CONSTRAINTS, true, |w| {
                    w.sequence(|w| {
                        if spec.ca {
                            w.tlv(BOOLEAN, &[0xff]);
                        }
                    })
                });
                if !spec.ca {
                    san_extension(w, spec.dns, spec.ips);
                }
            })
        });
    });
    let tbs = tbs.into_bytes();
    let sig = spec.signer.sign(&tbs)?;
    Ok(signed(&tbs, &sig))
}

/// The kubelet's self-signed serving pair for `host`: returns (certificate PEM with the leaf
/// then its CA, leaf key PEM). Valid from an hour ago (clock skew) for `days`.
pub fn self_signed_serving(
    host: &str,
    dns: &[String],
    ips: &[IpAddr],
    now: u64,
    days: u64,
) -> Result<(String, String), PkiError> {
    let ca_key = KeyPair::generate()?;
    let leaf_key = KeyPair::generate()?;
    let not_before = now.saturating_sub(3600);
    let not_after = now + days * 86400;
    let ca_cn = format!("{}-ca@{}", host, now);
    let ca = certificate(&CertSpec {
        subject_cn: &ca_cn,
        issuer_cn: &ca_cn,
        subject_key: &ca_key,
        signer: &ca_key,
        not_before,
        not_after,
        ca: true,
        dns: &[],
        ips: &[],
    })?;
    let leaf = certificate(&CertSpec {
        subject_cn: &format!("{}@{}", host, now),
        issuer_cn: &ca_cn,
        subject_key: &leaf_key,
        signer: &ca_key,
        not_before,
        not_after,
        ca: false,
        dns,
        ips,
    })?;
    let mut pem = pem_encode("CERTIFICATE", &leaf);
    pem.push_str(&pem_encode("CERTIFICATE", &ca));
    Ok((pem, leaf_key.to_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn openssl(args: &[&str], stdin: &str) -> (bool, String) {
        use std::io::Write;
        let mut c = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl");
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    #[test]
    fn csr_carries_the_sans_and_verifies() {
        let key = KeyPair::generate().unwrap();
        let pem = key
            .csr_pem_with_sans(
                "system:node:edge-1",
                &["system:nodes"],
                &["edge-1".to_string()],
                &["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
            )
            .unwrap();
        let (ok, out) = openssl(&["req", "-noout", "-verify", "-text"], &pem);
        assert!(ok && out.contains("verify OK"), "{}", out);
        assert!(out.contains("DNS:edge-1"), "{}", out);
        assert!(out.contains("IP Address:10.0.0.7"), "{}", out);
        assert!(out.contains("IP Address:FD00:0:0:0:0:0:0:7"), "{}", out);
        assert!(key
            .csr_pem_with_sans("system:node:x", &[], &[], &[])
            .is_err());
    }

    #[test]
    fn self_signed_pair_verifies_with_its_own_ca() {
        let now = crate::clock::now_unix().as_secs();
        let (cert, key) = self_signed_serving(
            "edge-1",
            &["edge-1".to_string(), "localhost".to_string()],
            &["127.0.0.1".parse().unwrap()],
            now,
            365,
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "tinylet-x509-{}-{}",
            std::process::id(),
            crate::fsutil::random_hex(4).unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("all.pem"), &cert).unwrap();
        let ca_pem = &cert[cert.find("-----END CERTIFICATE-----").unwrap() + 26..];
        std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
        let ca_arg = dir.join("ca.pem").display().to_string();
        let (ok, out) = openssl(
            &[
                "verify",
                "-CAfile",
                &ca_arg,
                "-purpose",
                "sslserver",
                "-verify_ip",
                "127.0.0.1",
            ],
            &cert,
        );
        assert!(ok, "{}", out);
        let (_, text) = openssl(&["x509", "-noout", "-text"], &cert);
        assert!(text.contains("DNS:edge-1, DNS:localhost, IP Address:127.0.0.1"));
        assert!(text.contains("CA:FALSE"), "{}", text);
        let infos = crate::kube::pki::parse_cert_pem(&cert).unwrap();
        assert_eq!(infos.len(), 2);
        assert!(infos[0].not_after >= now + 365 * 86400 - 1);
        let k = KeyPair::from_pem(&key).unwrap();
        assert!(crate::kube::pki::key_matches_cert(&k, &infos[0]));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
