//! A blob download as one `Read` stream, for `Blobs::ingest` to hash and store: when the
//! connection breaks mid-blob it reconnects with `Range: bytes=<offset>-` and carries on (a
//! registry that ignores Range and sends the whole blob again has the prefix skipped), so the
//! hash over the stream stays the hash of the blob. Verification stays with the store.

use std::io::{self, Read};

use ureq::BodyReader;

use super::client::Client;
use crate::image::ImageError;

/// Reconnections per blob before giving up.
const MAX_RESUMES: u32 = 3;

pub(crate) struct BlobReader<'c, 'a, 'p> {
    client: &'c mut Client<'a>,
    digest: &'c str,
    size: u64,
    body: Option<BodyReader<'static>>,
    offset: u64,
    resumes: u32,
    progress: &'p mut dyn FnMut(u64),
    /// Why the stream ended early, as a registry error (the io::Error Read must return loses it).
    pub failure: Option<ImageError>,
}

impl<'c, 'a, 'p> BlobReader<'c, 'a, 'p> {
    pub(crate) fn new(
        client: &'c mut Client<'a>,
        digest: &'c str,
        size: u64,
        progress: &'p mut dyn FnMut(u64),
    ) -> Self {
        BlobReader {
            client,
            digest,
            size,
            body: None,
            offset: 0,
            resumes: 0,
            progress,
            failure: None,
        }
    }

    fn open(&mut self) -> Result<BodyReader<'static>, ImageError> {
        let range = format!("bytes={}-", self.offset);
        let mut headers = vec![("Accept", "*/*")];
        if self.offset > 0 {
            headers.push(("Range", range.as_str()));
        }
        let resp = self.client.get("blobs", self.digest, &headers)?;
        let partial = resp.status().as_u16() == 206;
        let mut body = resp.into_body().into_reader();
        if self.offset > 0 && !partial {
            log::debug!(
                "{}: no Range support; skipping {} bytes of {}",
                self.client.host(),
                self.offset,
                self.digest
            );
            let skipped =
                io::copy(&mut (&mut body).take(self.offset), &mut io::sink()).map_err(|e| {
                    self.client
                        .registry_error(format!("re-reading blob {}: {e}", self.digest))
                })?;
            if skipped != self.offset {
                return Err(self.client.registry_error(format!(
                    "blob {} ended after {skipped} bytes on retry",
                    self.digest
                )));
            }
        }
        Ok(body)
    }

    /// Records `e` as the failure (unless retries remain) and says whether to retry.
    fn retry_after(&mut self, e: &io::Error) -> bool {
        self.body = None;
        if self.resumes < MAX_RESUMES {
            self.resumes += 1;
            log::warn!(
                "{}: download of {} broke at {} of {} bytes ({e}); resuming ({}/{MAX_RESUMES})",
                self.client.host(),
                self.digest,
                self.offset,
                self.size,
                self.resumes
            );
            return true;
        }
        self.failure = Some(self.client.registry_error(format!(
            "downloading blob {}: {e} (after {MAX_RESUMES} retries)",
            self.digest
        )));
        false
    }
}

impl Read for BlobReader<'_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let body = match &mut self.body {
                Some(b) => b,
                None => match self.open() {
                    Ok(b) => self.body.insert(b),
                    Err(e) => {
                        let msg = e.to_string();
                        self.failure = Some(e);
                        return Err(io::Error::other(msg));
                    }
                },
            };
            match body.read(buf) {
                Ok(0) if self.offset < self.size => {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed early");
                    if !self.retry_after(&e) {
                        return Err(e);
                    }
                }
                Ok(n) => {
                    self.offset += n as u64;
                    (self.progress)(self.offset);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if !self.retry_after(&e) {
                        return Err(e);
                    }
                }
            }
        }
    }
}
