//! The X.509 that the kubelet's TLS bootstrap needs (client-go's util/certificate): an ECDSA
//! P-256 key made on the device, a PKCS#10 request for `CN=system:node:<name>, O=system:nodes`,
//! and the validity and public key of the certificate the API server signs.
//!
//! Written on `ring` (already linked for rustls) and `der.rs` rather than rcgen/x509-parser:
//! those would add far more binary than the few hundred lines here. Certificates are parsed, not
//! verified: they arrive from the API server over its authenticated TLS connection, and what the
//! kubelet checks is that the certificate carries its own key (`key_matches_cert`).

// The TLS bootstrap that calls this is not wired in yet; remove when it is.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};

use super::der::{self, DerError, Tlv, Writer};
use super::der::{BIT_STRING, INTEGER, OID, SEQUENCE, SET};

// OBJECT IDENTIFIER contents (X.690 encoding) of the only algorithms and attributes we use.
/// 1.2.840.10045.2.1 id-ecPublicKey
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// 1.2.840.10045.3.1.7 prime256v1 (P-256)
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// 1.2.840.10045.4.3.2 ecdsa-with-SHA256
pub(super) const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// 2.5.4.3 commonName
pub(super) const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// 2.5.4.10 organizationName
pub(super) const OID_O: &[u8] = &[0x55, 0x04, 0x0a];

/// What went wrong, worded for a log line or a `tinylet` error message.
#[derive(Debug)]
pub enum PkiError {
    /// The text has no PEM block with the wanted label(s).
    NoPem(&'static str),
    /// A PEM block that cannot be decoded; `what` names it ("certificate 2").
    Pem { what: String, why: &'static str },
    /// DER that is malformed; `at` names the item and field ("certificate 2: validity").
    Malformed { at: String, err: DerError },
    /// A well-formed key tinylet cannot use (not P-256, encrypted, rejected by ring).
    Key(String),
    /// The system random number generator or the signer failed.
    Crypto(&'static str),
    /// An argument that cannot go into a request.
    Invalid(String),
}

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            PkiError::NoPem(label) => write!(f, "no PEM block labelled {}", label),
            PkiError::Pem { what, why } => write!(f, "{}: {}", what, why),
            PkiError::Malformed { at, err } => write!(f, "{}: {}", at, err),
            PkiError::Key(why) => write!(f, "private key: {}", why),
            PkiError::Crypto(why) => f.write_str(why),
            PkiError::Invalid(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for PkiError {}

/// An ECDSA P-256 key pair, kept with its PKCS#8 encoding so it can be written back out
/// (ring cannot re-export a key it has loaded).
pub struct KeyPair {
    key: EcdsaKeyPair,
    pkcs8: Vec<u8>,
}

/// Shows the public half only, so a key never lands in a log by accident.
impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_key", &self.key.public_key())
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A new P-256 key from the system's random number generator (getrandom).
    pub fn generate() -> Result<KeyPair, PkiError> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                .map_err(|_| {
                    PkiError::Crypto("generating a P-256 key failed (no system randomness?)")
                })?;
        KeyPair::from_pkcs8(doc.as_ref().to_vec())
    }

    #[cfg(test)]
    /// Reads the first private key in `pem`, skipping other blocks (the kubelet's
    /// `kubelet-client-current.pem` holds the certificate and the key together). Accepts
    /// `PRIVATE KEY` (PKCS#8) and `EC PRIVATE KEY` (SEC1, as client-go writes it), P-256 only.
    pub fn from_pem(pem: &str) -> Result<KeyPair, PkiError> {
        for (label, body) in pem_sections(pem) {
            let what = || format!("{} block", label);
            match label {
                "PRIVATE KEY" => {
                    let der = body.map_err(|why| PkiError::Pem { what: what(), why })?;
                    return KeyPair::from_pkcs8(der);
                }
                "EC PRIVATE KEY" => {
                    let der = body.map_err(|why| PkiError::Pem { what: what(), why })?;
                    return KeyPair::from_pkcs8(sec1_to_pkcs8(&der)?);
                }
                "RSA PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
                    return Err(PkiError::Key(format!(
                        "{} is not supported: tinylet needs an unencrypted ECDSA P-256 key",
                        label
                    )));
                }
                _ => {}
            }
        }
        Err(PkiError::NoPem("PRIVATE KEY or EC PRIVATE KEY"))
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> Result<KeyPair, PkiError> {
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|e| PkiError::Key(format!("not a usable ECDSA P-256 key ({})", e)))?;
        Ok(KeyPair { key, pkcs8 })
    }

    /// The key as `-----BEGIN PRIVATE KEY-----` (unencrypted PKCS#8), the form openssl and Go
    /// both read. The caller writes it with mode 0600.
    pub fn to_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.pkcs8)
    }

    /// The uncompressed point `04 || X || Y`.
    fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// SubjectPublicKeyInfo: id-ecPublicKey with the named curve, and the point.
    pub(super) fn spki_der(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.sequence(|w| {
            w.sequence(|w| {
                w.oid(OID_EC_PUBLIC_KEY);
                w.oid(OID_P256);
            });
            w.bit_string(self.public_key());
        });
        w.into_bytes()
    }

    /// A PKCS#10 `CERTIFICATE REQUEST` in PEM for subject `CN=common_name, O=...` (one RDN per
    /// attribute, in that order), signed ecdsa-with-SHA256, with no extensions: what
    /// client-go's bootstrap sends for a node client certificate.
    pub fn csr_pem(&self, common_name: &str, organizations: &[&str]) -> Result<String, PkiError> {
        super::x509::csr(self, common_name, organizations, None)
    }

    /// An ecdsa-with-SHA256 signature (ASN.1 DER) of `data`.
    pub(super) fn sign(&self, data: &[u8]) -> Result<Vec<u8>, PkiError> {
        self.key
            .sign(&SystemRandom::new(), data)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| PkiError::Crypto("ECDSA signing failed"))
    }
}

impl KeyPair {
    /// A PKCS#10 request like `csr_pem`'s, with a subjectAltName extension request for `dns`
    /// names and `ips`: what the kubelet sends for its serving certificate
    /// (`kubernetes.io/kubelet-serving`).
    pub fn csr_pem_with_sans(
        &self,
        common_name: &str,
        organizations: &[&str],
        dns: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<String, PkiError> {
        super::x509::csr(self, common_name, organizations, Some((dns, ips)))
    }
}

/// PrintableString when it fits, as Go's crypto/x509 chooses; UTF8String otherwise.
pub(super) fn rdn(w: &mut Writer, oid: &[u8], value: &str) {
    w.set(|w| {
        w.sequence(|w| {
            w.oid(oid);
            if der::is_printable(value) {
                w.printable_string(value);
            } else {
                w.utf8_string(value);
            }
        })
    });
}

#[cfg(test)]
/// ring reads PKCS#8 only, so a SEC1 `ECPrivateKey` is wrapped in a PrivateKeyInfo. The curve and
/// the public key are checked first so that the error says which one is wrong: ring only says
/// "WrongAlgorithm" or "InvalidEncoding".
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>, PkiError> {
    let bad = |err| PkiError::Malformed {
        at: "EC PRIVATE KEY".into(),
        err,
    };
    let key = der::parse_one(sec1, SEQUENCE).map_err(bad)?;
    let mut r = key.reader();
    if der::small_uint(&r.read(INTEGER).map_err(bad)?).map_err(bad)? != 1 {
        return Err(PkiError::Key("EC PRIVATE KEY: version is not 1".into()));
    }
    r.read(der::OCTET_STRING).map_err(bad)?;
    if let Some(params) = r.read_optional(der::context(0)).map_err(bad)? {
        if der::parse_one(params.value, OID).map_err(bad)?.value != OID_P256 {
            return Err(PkiError::Key(
                "EC PRIVATE KEY: the curve is not P-256 (prime256v1)".into(),
            ));
        }
    }
    // RFC 5915 makes publicKey optional, but ring needs it; openssl and Go always write it.
    if r.read_optional(der::context(1)).map_err(bad)?.is_none() {
        return Err(PkiError::Key(
            "EC PRIVATE KEY: no public key in it (openssl ec -in KEY rewrites it with one)".into(),
        ));
    }
    r.finish().map_err(bad)?;
    let mut w = Writer::new();
    w.sequence(|w| {
        w.integer(0);
        w.sequence(|w| {
            w.oid(OID_EC_PUBLIC_KEY);
            w.oid(OID_P256);
        });
        w.octet_string(sec1);
    });
    Ok(w.into_bytes())
}

/// What the bootstrap needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity, seconds since the Unix epoch (0 for dates before 1970).
    pub not_before: u64,
    /// End of validity, seconds since the Unix epoch: rotation is due at 70–90 % of
    /// `not_after - not_before`.
    pub not_after: u64,
    /// The last commonName in the subject (as Go's crypto/x509 picks it).
    pub subject_cn: Option<String>,
    /// Every organizationName in the subject, in order.
    pub subject_o: Vec<String>,
    /// The whole SubjectPublicKeyInfo element, DER.
    pub public_key_spki_der: Vec<u8>,
}

/// Every `CERTIFICATE` block of `pem`, in order (leaf first in a chain); other blocks, such as a
/// key kept in the same file, are skipped. Errors name the certificate by its position.
pub fn parse_cert_pem(pem: &str) -> Result<Vec<CertInfo>, PkiError> {
    let mut certs = Vec::new();
    for (label, body) in pem_sections(pem) {
        if label != "CERTIFICATE" {
            continue;
        }
        let n = certs.len() + 1;
        let der = body.map_err(|why| PkiError::Pem {
            what: format!("certificate {}", n),
            why,
        })?;
        let cert = parse_cert_der(&der).map_err(|(field, err)| PkiError::Malformed {
            at: format!("certificate {}: {}", n, field),
            err,
        })?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(PkiError::NoPem("CERTIFICATE"));
    }
    Ok(certs)
}

/// The subject and validity of one DER certificate (a TLS peer's, already verified by rustls).
pub fn cert_info_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    parse_cert_der(der).map_err(|(field, err)| PkiError::Malformed {
        at: format!("certificate: {}", field),
        err,
    })
}

/// Errors carry the field at fault, for `parse_cert_pem` to prefix with the certificate.
fn parse_cert_der(der: &[u8]) -> Result<CertInfo, (&'static str, DerError)> {
    let at = |field: &'static str| move |e| (field, e);
    let cert = der::parse_one(der, SEQUENCE).map_err(at("Certificate"))?;
    let mut c = cert.reader();
    let tbs = c.read(SEQUENCE).map_err(at("tbsCertificate"))?;
    c.read(SEQUENCE).map_err(at("signatureAlgorithm"))?;
    c.read(BIT_STRING).map_err(at("signatureValue"))?;
    c.finish().map_err(at("Certificate"))?;

    let mut t = tbs.reader();
    // v1 certificates omit the version; nothing we read differs between versions.
    t.read_optional(der::context(0)).map_err(at("version"))?;
    t.read(INTEGER).map_err(at("serialNumber"))?;
    t.read(SEQUENCE).map_err(at("signature"))?;
    t.read(SEQUENCE).map_err(at("issuer"))?;
    let validity = t.read(SEQUENCE).map_err(at("validity"))?;
    let mut v = validity.reader();
    let not_before = v.read_any().map_err(at("validity"))?;
    let not_after = v.read_any().map_err(at("validity"))?;
    v.finish().map_err(at("validity"))?;
    let not_before = der::parse_time(&not_before).map_err(at("validity"))?;
    let not_after = der::parse_time(&not_after).map_err(at("validity"))?;
    let subject = t.read(SEQUENCE).map_err(at("subject"))?;
    let (subject_cn, subject_o) = parse_name(&subject).map_err(at("subject"))?;
    let spki = t.read(SEQUENCE).map_err(at("subjectPublicKeyInfo"))?;
    Ok(CertInfo {
        not_before,
        not_after,
        subject_cn,
        subject_o,
        public_key_spki_der: spki.raw.to_vec(),
    })
}

/// The commonName (last one wins) and organizationNames of a Name.
fn parse_name(name: &Tlv) -> Result<(Option<String>, Vec<String>), DerError> {
    let (mut cn, mut orgs) = (None, Vec::new());
    let mut rdns = name.reader();
    while !rdns.is_empty() {
        let mut atvs = rdns.read(SET)?.reader();
        while !atvs.is_empty() {
            let mut atv = atvs.read(SEQUENCE)?.reader();
            let oid = atv.read(OID)?;
            let value = atv.read_any()?;
            atv.finish()?;
            if oid.value == OID_CN {
                cn = Some(directory_string(&value)?);
            } else if oid.value == OID_O {
                orgs.push(directory_string(&value)?);
            }
        }
    }
    Ok((cn, orgs))
}

/// An attribute value as text. Read as UTF-8, lossily, whatever the string type: CAs write
/// UTF8String or PrintableString (RFC 5280 4.1.2.4), and these names are only logged or
/// compared with what we asked for. A BMPString from an old CA would come out garbled.
fn directory_string(tlv: &Tlv) -> Result<String, DerError> {
    // Universal, primitive: the string types (and a few others we have no reason to refuse).
    if tlv.tag & 0xe0 != 0 {
        return Err(DerError::Bad("attribute value is not a string"));
    }
    Ok(String::from_utf8_lossy(tlv.value).into_owned())
}

/// Whether `cert` is for `key`. DER has one encoding of a P-256 SubjectPublicKeyInfo with an
/// uncompressed point (which is what every CA copies from the request), so bytes are compared.
pub fn key_matches_cert(key: &KeyPair, cert: &CertInfo) -> bool {
    cert.public_key_spki_der == key.spki_der()
}

#[cfg(test)]
/// The decoded content of every well-formed PEM block labelled `label`, in order. Blocks whose
/// body is not valid base64 (or that have RFC 1421 headers) are left out; `parse_cert_pem` and
/// `KeyPair::from_pem` report them instead.
pub fn pem_blocks(text: &str, label: &str) -> Vec<Vec<u8>> {
    pem_sections(text)
        .into_iter()
        .filter(|(l, _)| *l == label)
        .filter_map(|(_, body)| body.ok())
        .collect()
}

/// Every `-----BEGIN X-----` ... `-----END X-----` block in order: its label and its decoded
/// body, or why the body cannot be decoded. Text outside blocks is ignored (RFC 7468).
fn pem_sections(text: &str) -> Vec<(&str, Result<Vec<u8>, &'static str>)> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut sections = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let begin = lines[i];
        i += 1;
        let Some(label) = begin
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {}-----", label);
        let mut body = String::new();
        let mut result = Err("no END line");
        let mut headers = false;
        while i < lines.len() {
            let line = lines[i];
            if line.starts_with("-----BEGIN ") {
                // Not consumed: the next block is read on its own.
                break;
            }
            i += 1;
            if line == end {
                result = match (headers, decode_base64(&body)) {
                    (true, _) => Err("PEM headers (an encrypted key?) are not supported"),
                    (false, Some(der)) => Ok(der),
                    (false, None) => Err("invalid base64"),
                };
                break;
            }
            headers |= line.contains(':');
            body.push_str(line);
        }
        sections.push((label, result));
    }
    sections
}

/// PEM with 64-character lines, as RFC 7468 and openssl write it.
pub(super) fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = crate::base64::base64_encode(der);
    let mut out = format!("-----BEGIN {}-----\n", label);
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {}-----\n", label));
    out
}

/// Strict standard base64 (the PEM body, whitespace already removed): whole 4-character groups
/// only, as RFC 7468 requires; anything else is a damaged PEM, not something to guess at.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let pad = text.bytes().rev().take_while(|&b| b == b'=').count();
    let body = &text[..text.len() - pad];
    if text.len() % 4 != 0
        || pad > 2
        || (pad > 0 && body.is_empty())
        || body.bytes().any(|b| b == b'=' || b.is_ascii_whitespace())
    {
        return None;
    }
    crate::base64::base64_decode(text)
}

#[cfg(test)]
#[path = "pki_tests.rs"]
mod tests;
