//! Container logs in the CRI format that fluent-bit, promtail and `kubectl logs` parse:
//! `<RFC3339Nano> <stdout|stderr> <F|P> <text>\n`, one write(2) per line. A line longer than
//! MAX_LINE is split into P(artial) chunks ending with an F(ull) one.

use crate::clock;
use std::io::{self, Write};

pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Splits one stream's bytes into CRI lines.
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn new(stream: Stream) -> Self {
        LineSplitter {
            stream,
            pending: Vec::new(),
        }
    }

    /// Feeds bytes read from the container and writes every complete line.
    pub fn feed(&mut self, data: &[u8], out: &mut impl Write) -> io::Result<()> {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            self.write_chunks(start, end, out)?;
            start = end + 1;
        }
        self.pending.drain(..start);
        // A line without its newline yet: flush full-size partial chunks, keep the rest.
        while self.pending.len() >= MAX_LINE {
            write_line(out, self.stream, 'P', &self.pending[..MAX_LINE])?;
            self.pending.drain(..MAX_LINE);
        }
        Ok(())
    }

    fn write_chunks(&self, start: usize, end: usize, out: &mut impl Write) -> io::Result<()> {
        let line = &self.pending[start..end];
        let mut chunks = line.chunks(MAX_LINE).peekable();
        if chunks.peek().is_none() {
            return write_line(out, self.stream, 'F', b"");
        }
        while let Some(c) = chunks.next() {
            write_line(
                out,
                self.stream,
                if chunks.peek().is_some() { 'P' } else { 'F' },
                c,
            )?;
        }
        Ok(())
    }

    /// At end of stream, what is left is a last, unterminated line.
    pub fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if !self.pending.is_empty() {
            write_line(out, self.stream, 'F', &self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }
}

fn write_line(out: &mut impl Write, stream: Stream, tag: char, text: &[u8]) -> io::Result<()> {
    let ts = clock::rfc3339_nano(clock::now_unix());
    let mut line = Vec::with_capacity(text.len() + 48);
    line.extend_from_slice(ts.as_bytes());
    line.push(b' ');
    line.extend_from_slice(stream.name().as_bytes());
    line.push(b' ');
    line.push(tag as u8);
    line.push(b' ');
    line.extend_from_slice(text);
    line.push(b'\n');
    out.write_all(&line)
}

/// One parsed CRI log line.
#[derive(Debug, PartialEq)]
pub struct LogLine<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub text: &'a [u8],
}

pub fn parse_line(line: &[u8]) -> Option<LogLine<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    Some(LogLine {
        time,
        stream,
        partial: tag == b"P",
        text,
    })
}

/// Rebuilds the container's output from CRI lines: partial chunks are joined, full lines end with
/// a newline. Returns the bytes of text for every complete line in `data` and how many bytes of
/// `data` were consumed (an incomplete trailing line is left for the next call).
pub fn decode(data: &[u8], out: &mut Vec<u8>) -> usize {
    let mut consumed = 0;
    while let Some(nl) = data[consumed..].iter().position(|&b| b == b'\n') {
        let line = &data[consumed..consumed + nl];
        if let Some(l) = parse_line(line) {
            out.extend_from_slice(l.text);
            if !l.partial {
                out.push(b'\n');
            }
        }
        consumed += nl + 1;
    }
    consumed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_and_marks_partials() {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(Stream::Stdout);
        s.feed(b"hello\nwor", &mut out).unwrap();
        s.feed(b"ld\n\n", &mut out).unwrap();
        let long = vec![b'x'; MAX_LINE + 10];
        s.feed(&long, &mut out).unwrap();
        s.feed(b"\ntail", &mut out).unwrap();
        s.finish(&mut out).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(lines[0].ends_with(" stdout F hello"));
        assert!(lines[1].ends_with(" stdout F world"));
        assert!(lines[2].ends_with(" stdout F "));
        assert!(lines[3].contains(" stdout P xxx"));
        assert!(lines[4].ends_with(&format!(" stdout F {}", "x".repeat(10))));
        assert!(lines[5].ends_with(" stdout F tail"));
        let ts = lines[0].split(' ').next().unwrap();
        assert!(crate::clock::parse_rfc3339(ts).is_some(), "{ts}");
        assert_eq!(ts.len(), "2026-11-27T17:37:14.123456789Z".len());

        let mut decoded = Vec::new();
        assert_eq!(decode(&out, &mut decoded), out.len());
        let mut want = b"hello\nworld\n\n".to_vec();
        want.extend_from_slice(&long);
        want.extend_from_slice(b"\ntail\n");
        assert_eq!(decoded, want);
    }
}
