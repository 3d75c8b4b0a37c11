//! Tests of pki.rs against the real `openssl` CLI: what we write it must accept, what it writes
//! we must read, and its reading of dates must match ours.

use super::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tinylet-pki-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("creating test dir");
        TempDir(path)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.file(name);
        fs::write(&p, text).expect("writing test file");
        p
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.file(name)).expect("reading test file")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs openssl in `dir`; returns success and stdout + stderr (some versions print "verify OK"
/// on one, some on the other).
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl (is it installed?)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = openssl(dir, args);
    assert!(ok, "openssl {:?} failed: {}", args, text);
    text
}

/// "notBefore=Nov 27 17:37:14 2026 GMT" as openssl prints it, converted by date(1).
fn openssl_date(line: &str) -> u64 {
    let (_, date) = line.split_once('=').expect("openssl date line");
    let out = Command::new("date")
        .args(["-u", "-d", date.trim(), "+%s"])
        .output()
        .expect("running date");
    assert!(out.status.success(), "date -d {:?}", date);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("date +%s output")
}

fn openssl_validity(dir: &Path, cert: &str) -> (u64, u64) {
    let text = openssl_ok(
        dir,
        &["x509", "-in", cert, "-noout", "-startdate", "-enddate"],
    );
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .expect(prefix)
            .to_string()
    };
    (
        openssl_date(&line("notBefore=")),
        openssl_date(&line("notAfter=")),
    )
}

/// A throwaway CA in `dir` (ca.pem, ca.key), and `csr` signed by it for `days` into `out`.
fn sign_with_ca(dir: &TempDir, csr: &str, days: &str, out: &str) {
    if !dir.file("ca.pem").exists() {
        openssl_ok(
            &dir.0,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=tinylet-test-ca",
            ],
        );
    }
    openssl_ok(
        &dir.0,
        &[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            days,
            "-out",
            out,
        ],
    );
}

fn node_csr(key: &KeyPair) -> String {
    key.csr_pem("system:node:n1", &["system:nodes"])
        .expect("csr")
}

#[test]
fn csr_verifies_with_openssl_and_has_the_node_subject() {
    let dir = TempDir::new("csr");
    let key = KeyPair::generate().expect("generate");
    let csr = node_csr(&key);
    assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
    dir.write("csr.pem", &csr);
    let text = openssl_ok(
        &dir.0,
        &["req", "-in", "csr.pem", "-noout", "-verify", "-subject"],
    );
    assert!(text.contains("verify OK"), "{}", text);
    assert!(
        text.contains("subject=CN = system:node:n1, O = system:nodes"),
        "{}",
        text
    );
    // The request's key is ours.
    let pubkey = openssl_ok(&dir.0, &["req", "-in", "csr.pem", "-noout", "-pubkey"]);
    assert_eq!(pem_blocks(&pubkey, "PUBLIC KEY"), vec![key.spki_der()]);
}

#[test]
fn csr_structure_is_pkcs10() {
    let key = KeyPair::generate().expect("generate");
    let csr = key
        .csr_pem("system:node:n1", &["system:nodes", "extra"])
        .expect("csr");
    let der = pem_blocks(&csr, "CERTIFICATE REQUEST")
        .pop()
        .expect("one block");
    let outer = der::parse_one(&der, SEQUENCE).expect("CertificationRequest");
    let mut r = outer.reader();
    let info = r.read(SEQUENCE).expect("info");
    let alg = r.read(SEQUENCE).expect("signatureAlgorithm");
    let sig = r.read(BIT_STRING).expect("signature");
    r.finish().expect("nothing after the signature");
    assert_eq!(alg.value, [&[OID, 8][..], OID_ECDSA_SHA256].concat());

    let mut i = info.reader();
    assert_eq!(der::small_uint(&i.read(INTEGER).expect("version")), Ok(0));
    let subject = i.read(SEQUENCE).expect("subject");
    let (cn, o) = parse_name(&subject).expect("name");
    assert_eq!(cn.as_deref(), Some("system:node:n1"));
    assert_eq!(o, ["system:nodes", "extra"]);
    // One RDN per attribute.
    let mut rdns = subject.reader();
    let mut count = 0;
    while !rdns.is_empty() {
        let rdn = rdns.read(SET).expect("RDN");
        assert_eq!(rdn.value.first(), Some(&SEQUENCE));
        der::parse_one(rdn.value, SEQUENCE).expect("one attribute per RDN");
        count += 1;
    }
    assert_eq!(count, 3);
    assert_eq!(i.read(SEQUENCE).expect("spki").raw, key.spki_der());
    assert_eq!(
        i.read(der::context(0)).expect("attributes").raw,
        [0xa0, 0x00]
    );
    i.finish().expect("no extensions");

    let sig = der::bit_string_bytes(&sig).expect("signature bits");
    let verifier = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        key.public_key(),
    );
    verifier.verify(info.raw, sig).expect("signature verifies");
}

#[test]
fn csr_uses_utf8_only_when_needed_and_refuses_empty_cn() {
    let key = KeyPair::generate().expect("generate");
    let csr = key.csr_pem("nöde", &[]).expect("csr");
    let der = pem_blocks(&csr, "CERTIFICATE REQUEST")
        .pop()
        .expect("one block");
    assert!(
        der.windows(2).any(|w| w == [der::UTF8_STRING, 5]),
        "UTF8String for a non-ASCII name"
    );
    let dir = TempDir::new("utf8");
    dir.write("csr.pem", &csr);
    openssl_ok(&dir.0, &["req", "-in", "csr.pem", "-noout", "-verify"]);
    let err = key.csr_pem("", &["system:nodes"]).expect_err("empty CN");
    assert!(err.to_string().contains("empty common name"), "{}", err);
}

#[test]
fn signed_cert_validity_and_key_match_openssl() {
    let dir = TempDir::new("sign");
    let key = KeyPair::generate().expect("generate");
    dir.write("csr.pem", &node_csr(&key));
    sign_with_ca(&dir, "csr.pem", "1", "cert.pem");
    let certs = parse_cert_pem(&dir.read("cert.pem")).expect("parse");
    assert_eq!(certs.len(), 1);
    let cert = &certs[0];
    let (nb, na) = openssl_validity(&dir.0, "cert.pem");
    assert_eq!((cert.not_before, cert.not_after), (nb, na));
    assert_eq!(cert.not_after - cert.not_before, 86400);
    assert_eq!(cert.subject_cn.as_deref(), Some("system:node:n1"));
    assert_eq!(cert.subject_o, ["system:nodes"]);
    assert!(key_matches_cert(&key, cert));
    let other = KeyPair::generate().expect("generate");
    assert!(!key_matches_cert(&other, cert));

    // A chain: leaf then CA.
    let chain = dir.read("cert.pem") + &dir.read("ca.pem");
    let certs = parse_cert_pem(&chain).expect("chain");
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[0], *cert);
    assert_eq!(certs[1].subject_cn.as_deref(), Some("tinylet-test-ca"));
    assert!(certs[1].subject_o.is_empty());
    assert_eq!(
        (certs[1].not_before, certs[1].not_after),
        openssl_validity(&dir.0, "ca.pem")
    );
    assert!(!key_matches_cert(&key, &certs[1]));

    // kubelet-client-current.pem style: certificate and key in one file, both found.
    let combined = dir.read("cert.pem") + &key.to_pem();
    assert_eq!(
        parse_cert_pem(&combined).expect("cert from combined").len(),
        1
    );
    let reread = KeyPair::from_pem(&combined).expect("key from combined");
    assert!(key_matches_cert(&reread, cert));
}

#[test]
fn generalized_time_after_2050() {
    let dir = TempDir::new("gentime");
    let key = KeyPair::generate().expect("generate");
    dir.write("csr.pem", &node_csr(&key));
    // 10000 days from now is past 2049, where RFC 5280 switches to GeneralizedTime.
    sign_with_ca(&dir, "csr.pem", "10000", "cert.pem");
    let der = pem_blocks(&dir.read("cert.pem"), "CERTIFICATE")
        .pop()
        .expect("cert");
    assert!(
        der.windows(2).any(|w| w == [der::GENERALIZED_TIME, 15]),
        "openssl wrote a GeneralizedTime"
    );
    let cert = &parse_cert_pem(&dir.read("cert.pem")).expect("parse")[0];
    assert_eq!(
        (cert.not_before, cert.not_after),
        openssl_validity(&dir.0, "cert.pem")
    );
    assert!(cert.not_after > 2524608000, "after 2050-01-01");
}

#[test]
fn written_key_is_read_by_openssl() {
    let dir = TempDir::new("keyout");
    let key = KeyPair::generate().expect("generate");
    let pem = key.to_pem();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));
    assert!(pem.lines().all(|l| l.len() <= 64));
    dir.write("key.pem", &pem);
    openssl_ok(&dir.0, &["pkey", "-in", "key.pem", "-noout"]);
    openssl_ok(&dir.0, &["ec", "-in", "key.pem", "-noout", "-check"]);
    let pubkey = openssl_ok(&dir.0, &["pkey", "-in", "key.pem", "-pubout"]);
    assert_eq!(pem_blocks(&pubkey, "PUBLIC KEY"), vec![key.spki_der()]);
    let again = KeyPair::from_pem(&pem).expect("reading our own key");
    assert_eq!(again.to_pem(), pem);
}

#[test]
fn reads_openssl_pkcs8_and_sec1_keys() {
    let dir = TempDir::new("keyin");
    openssl_ok(
        &dir.0,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "pkcs8.pem",
        ],
    );
    openssl_ok(
        &dir.0,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.pem",
        ],
    );
    assert!(dir.read("pkcs8.pem").contains("BEGIN PRIVATE KEY"));
    assert!(dir.read("sec1.pem").contains("BEGIN EC PRIVATE KEY"));
    for name in ["pkcs8.pem", "sec1.pem"] {
        let key = KeyPair::from_pem(&dir.read(name)).unwrap_or_else(|e| panic!("{}: {}", name, e));
        let pubkey = openssl_ok(&dir.0, &["pkey", "-in", name, "-pubout"]);
        assert_eq!(
            pem_blocks(&pubkey, "PUBLIC KEY"),
            vec![key.spki_der()],
            "{}",
            name
        );
        // Re-written as PKCS#8, it is still the same key to openssl.
        dir.write("rewritten.pem", &key.to_pem());
        openssl_ok(&dir.0, &["ec", "-in", "rewritten.pem", "-noout", "-check"]);
        let again = openssl_ok(&dir.0, &["pkey", "-in", "rewritten.pem", "-pubout"]);
        assert_eq!(again, pubkey, "{}", name);
        // And it signs requests openssl verifies.
        dir.write("csr.pem", &node_csr(&key));
        openssl_ok(&dir.0, &["req", "-in", "csr.pem", "-noout", "-verify"]);
    }
}

#[test]
fn unusable_keys_are_refused_with_a_reason() {
    let dir = TempDir::new("badkeys");
    openssl_ok(
        &dir.0,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.pem",
        ],
    );
    openssl_ok(
        &dir.0,
        &["ec", "-in", "sec1.pem", "-no_public", "-out", "nopub.pem"],
    );
    openssl_ok(
        &dir.0,
        &[
            "ecparam",
            "-name",
            "secp384r1",
            "-genkey",
            "-noout",
            "-out",
            "p384-sec1.pem",
        ],
    );
    openssl_ok(
        &dir.0,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            "p384.pem",
        ],
    );
    openssl_ok(
        &dir.0,
        &["genpkey", "-algorithm", "ED25519", "-out", "ed25519.pem"],
    );
    let cases = [
        ("nopub.pem", "no public key"),
        ("p384-sec1.pem", "not P-256"),
        ("p384.pem", "not a usable ECDSA P-256 key"),
        ("ed25519.pem", "not a usable ECDSA P-256 key"),
    ];
    for (name, want) in cases {
        let err = KeyPair::from_pem(&dir.read(name)).expect_err(name);
        assert!(err.to_string().contains(want), "{}: {}", name, err);
    }
    let rsa = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
    assert!(KeyPair::from_pem(rsa)
        .expect_err("rsa")
        .to_string()
        .contains("RSA PRIVATE KEY is not supported"));
    let encrypted = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END EC PRIVATE KEY-----\n";
    assert!(KeyPair::from_pem(encrypted)
        .expect_err("encrypted")
        .to_string()
        .contains("encrypted key?"));
    let err = KeyPair::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        .expect_err("cert");
    assert_eq!(
        err.to_string(),
        "no PEM block labelled PRIVATE KEY or EC PRIVATE KEY"
    );
    for garbage in [
        "",
        "hello",
        "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
    ] {
        assert!(KeyPair::from_pem(garbage).is_err(), "{:?}", garbage);
    }
    let junk = pem_encode("PRIVATE KEY", &[0x30, 0x03, 0x02, 0x01, 0x00]);
    assert!(KeyPair::from_pem(&junk).is_err());
    let junk = pem_encode("EC PRIVATE KEY", &[0x30, 0x84, 0x7f, 0xff, 0xff, 0xff]);
    assert!(KeyPair::from_pem(&junk)
        .expect_err("huge")
        .to_string()
        .contains("length over"));
}

/// A real certificate's DER, for the damage tests.
fn sample_cert(dir: &TempDir) -> Vec<u8> {
    let key = KeyPair::generate().expect("generate");
    dir.write("csr.pem", &node_csr(&key));
    sign_with_ca(dir, "csr.pem", "1", "cert.pem");
    pem_blocks(&dir.read("cert.pem"), "CERTIFICATE")
        .pop()
        .expect("cert")
}

#[test]
fn damaged_certificates_are_errors_not_panics() {
    let dir = TempDir::new("damage");
    let der = sample_cert(&dir);
    assert!(parse_cert_der(&der).is_ok());
    for len in 0..der.len() {
        assert!(parse_cert_der(&der[..len]).is_err(), "truncated to {}", len);
        let pem = pem_encode("CERTIFICATE", &der[..len]);
        assert!(parse_cert_pem(&pem).is_err(), "truncated to {}", len);
    }
    // Every byte flipped: may parse or not, must not panic.
    for i in 0..der.len() {
        let mut bad = der.clone();
        bad[i] ^= 0xff;
        let _ = parse_cert_der(&bad);
        bad[i] ^= 0x7f;
        let _ = parse_cert_der(&bad);
    }
    let mut trailing = der.clone();
    trailing.push(0);
    let err = parse_cert_pem(&pem_encode("CERTIFICATE", &trailing)).expect_err("trailing byte");
    assert_eq!(
        err.to_string(),
        "certificate 1: Certificate: 1 unexpected bytes after the end"
    );

    let cases: [(&[u8], &str); 5] = [
        (&[0x30, 0x84, 0x7f, 0xff, 0xff, 0xff], "length over"),
        (&[0x30, 0x80, 0x00, 0x00], "indefinite length"),
        (&[0x30, 0x84, 0x00, 0x00, 0x00, 0x01, 0x00], "shortest form"),
        (&[0x02, 0x01, 0x00], "expected SEQUENCE"),
        (&[], "truncated"),
    ];
    for (bytes, want) in cases {
        let err = parse_cert_pem(&pem_encode("CERTIFICATE", bytes)).expect_err(want);
        assert!(err.to_string().contains(want), "{:02x?}: {}", bytes, err);
    }
    for (text, want) in [
        ("", "no PEM block labelled CERTIFICATE"),
        ("garbage\n\u{0}\u{ff}", "no PEM block labelled CERTIFICATE"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n",
            "no PEM block",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nMAA\n-----END CERTIFICATE-----\n",
            "certificate 1: invalid base64",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nMAA=\n",
            "certificate 1: no END line",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICAT-----\n",
            "no END line",
        ),
    ] {
        let err = parse_cert_pem(text).expect_err(want);
        assert!(err.to_string().contains(want), "{:?}: {}", text, err);
    }
}

#[test]
fn bad_date_in_second_certificate_is_named() {
    let dir = TempDir::new("baddate");
    let der = sample_cert(&dir);
    let good = pem_encode("CERTIFICATE", &der);
    // The notBefore UTCTime's month digits become "13".
    let at = der
        .windows(2)
        .position(|w| w == [der::UTC_TIME, 13])
        .expect("openssl writes a UTCTime for a one-day certificate");
    let mut bad = der.clone();
    bad[at + 4] = b'1';
    bad[at + 5] = b'3';
    let err = parse_cert_pem(&(good + &pem_encode("CERTIFICATE", &bad))).expect_err("month 13");
    let msg = err.to_string();
    assert!(
        msg.starts_with("certificate 2: validity: UTCTime \""),
        "{}",
        msg
    );
    assert!(msg.ends_with("\" is not a date"), "{}", msg);
}

#[test]
fn pem_sections_follow_rfc7468() {
    let a = pem_encode("CERTIFICATE", b"first");
    let b = pem_encode("PRIVATE KEY", b"key");
    let c = pem_encode("CERTIFICATE", b"second");
    let text = format!(
        "leading text\n{}between\r\n{}{}",
        a,
        b.replace('\n', "\r\n"),
        c
    );
    assert_eq!(
        pem_blocks(&text, "CERTIFICATE"),
        [b"first".to_vec(), b"second".to_vec()]
    );
    assert_eq!(pem_blocks(&text, "PRIVATE KEY"), [b"key".to_vec()]);
    assert!(pem_blocks(&text, "EC PRIVATE KEY").is_empty());
    // A block without its END does not swallow the next one.
    let text = format!("-----BEGIN CERTIFICATE-----\nAAAA\n{}", c);
    let sections = pem_sections(&text);
    assert_eq!(sections.len(), 2);
    assert_eq!(sections[0].1, Err("no END line"));
    assert_eq!(pem_blocks(&text, "CERTIFICATE"), [b"second".to_vec()]);
}

#[test]
fn base64_round_trips_and_rejects_junk() {
    let data: Vec<u8> = (0..=255u8).chain(0..=100).collect();
    for len in 0..data.len() {
        let pem = pem_encode("X", &data[..len]);
        assert!(pem.lines().all(|l| l.len() <= 64), "{}", pem);
        assert_eq!(
            pem_blocks(&pem, "X"),
            [data[..len].to_vec()],
            "length {}",
            len
        );
    }
    assert_eq!(
        pem_encode("X", b"foob"),
        "-----BEGIN X-----\nZm9vYg==\n-----END X-----\n"
    );
    assert_eq!(decode_base64("Zm9vYmE="), Some(b"fooba".to_vec()));
    assert_eq!(decode_base64("Zm9vYmFy"), Some(b"foobar".to_vec()));
    assert_eq!(decode_base64(""), Some(vec![]));
    for bad in [
        "Zm9",
        "Zm9vY===",
        "Zg==Zg==",
        "Zm9v!mFy",
        "====",
        "Zm9vYmF\u{e9}",
    ] {
        assert_eq!(decode_base64(bad), None, "{:?}", bad);
    }
}

#[test]
fn key_debug_does_not_show_the_private_key() {
    let key = KeyPair::generate().expect("generate");
    let shown = format!("{:?}", key);
    assert!(shown.starts_with("KeyPair { public_key:"), "{}", shown);
    // The scalar is the ECPrivateKey's OCTET STRING of 32 bytes.
    let at = key
        .pkcs8
        .windows(2)
        .position(|w| w == [der::OCTET_STRING, 32])
        .expect("private key");
    let scalar: String = key.pkcs8[at + 2..at + 34]
        .iter()
        .map(|b| format!("{:02x}", b))
        .collect();
    assert!(!shown.contains(&scalar));
}
