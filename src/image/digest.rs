//! Content digests: validation of `sha256:<hex>` strings and a reader that hashes what flows
//! through it, so blobs and layers are verified while streaming instead of buffered.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::ImageError;

/// Returns the hex part of a `sha256:<64 lowercase hex>` digest. Anything else is refused: the hex
/// becomes a file name in the blob store, so it must never carry '/' or '..'.
pub(crate) fn sha256_hex(digest: &str) -> Result<&str, ImageError> {
    let invalid = |reason: &str| ImageError::InvalidDigest {
        digest: digest.to_string(),
        reason: reason.to_string(),
    };
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or_else(|| invalid("expected <algorithm>:<hex>"))?;
    if algorithm != "sha256" {
        return Err(invalid("only sha256 digests are supported"));
    }
    if !is_sha256_hex(hex) {
        return Err(invalid("expected 64 lowercase hex characters"));
    }
    Ok(hex)
}

pub(crate) fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", to_hex(&Sha256::digest(bytes)))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes and counts every byte read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads the rest of the stream so the digest covers all of it (tar readers stop at the
    /// end-of-archive marker and leave padding unread).
    pub(crate) fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn digest(&self) -> String {
        format!("sha256:{}", to_hex(&self.hasher.clone().finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_digests() {
        let good = sha256_of(b"x");
        assert_eq!(sha256_hex(&good).unwrap().len(), 64);
        for bad in [
            "sha256:abc",
            "sha512:00",
            "nocolon",
            &good.to_uppercase(),
            "sha256:../../../../etc/passwd",
        ] {
            assert!(sha256_hex(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn hashing_reader_matches_one_shot() {
        let mut r = HashingReader::new(&b"hello world"[..]);
        r.drain().unwrap();
        assert_eq!(r.digest(), sha256_of(b"hello world"));
        assert_eq!(r.count(), 11);
    }
}
