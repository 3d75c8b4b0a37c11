//! The little DER that the TLS bootstrap needs (see `pki.rs`): a writer for building a PKCS#10
//! request and a defensive reader for certificates that come back from the API server.
//!
//! The reader never panics and never indexes out of bounds: every length is checked against what
//! is left, only definite minimal lengths up to `MAX_LEN` are accepted (DER, not BER), and
//! multi-byte tags are refused (nothing in X.509 that we read uses them).

// The TLS bootstrap that calls this is not wired in yet; remove when it is.

use std::fmt;

pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
pub const INTEGER: u8 = 0x02;
pub const BIT_STRING: u8 = 0x03;
pub const OCTET_STRING: u8 = 0x04;
#[cfg(test)]
pub const NULL: u8 = 0x05;
pub const OID: u8 = 0x06;
pub const UTF8_STRING: u8 = 0x0c;
pub const PRINTABLE_STRING: u8 = 0x13;
pub const UTC_TIME: u8 = 0x17;
pub const GENERALIZED_TIME: u8 = 0x18;

/// `[n]` constructed, context-specific (explicit tags, and PKCS#10's implicit `[0]` SET).
pub const fn context(n: u8) -> u8 {
    0xa0 | n
}

/// Certificates with big SAN lists are a few KiB; a megabyte is not a certificate, and the limit
/// keeps a forged length from meaning anything even before it is checked against the input.
pub const MAX_LEN: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerError {
    /// The input ends inside a tag, a length or a value.
    Truncated,
    /// `0x80`: BER's indefinite length, which DER forbids.
    IndefiniteLength,
    /// A length over `MAX_LEN`, or one written with more than four bytes.
    TooLong,
    /// A long-form length that fits a shorter form (DER requires the shortest).
    NonMinimalLength,
    /// A tag number of 31 or more (multi-byte tag).
    HighTag,
    Unexpected {
        expected: u8,
        found: u8,
    },
    /// Bytes left after a structure that should have ended.
    Trailing(usize),
    /// A value whose content is malformed for its type; says what.
    Bad(&'static str),
    /// A UTCTime or GeneralizedTime (`kind`) that is not a valid RFC 5280 time.
    NotADate {
        kind: &'static str,
        text: String,
    },
}

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DerError::Truncated => write!(f, "truncated DER"),
            DerError::IndefiniteLength => write!(f, "indefinite length (BER, not DER)"),
            DerError::TooLong => write!(f, "length over {} bytes", MAX_LEN),
            DerError::NonMinimalLength => write!(f, "length not in its shortest form"),
            DerError::HighTag => write!(f, "multi-byte tag"),
            DerError::Unexpected { expected, found } => {
                write!(
                    f,
                    "expected {} (0x{:02x}), found 0x{:02x}",
                    tag_name(*expected),
                    expected,
                    found
                )
            }
            DerError::Trailing(n) => write!(f, "{} unexpected bytes after the end", n),
            DerError::Bad(why) => f.write_str(why),
            DerError::NotADate { kind, text } => write!(f, "{} {:?} is not a date", kind, text),
        }
    }
}

fn tag_name(tag: u8) -> &'static str {
    match tag {
        SEQUENCE => "SEQUENCE",
        SET => "SET",
        INTEGER => "INTEGER",
        BIT_STRING => "BIT STRING",
        OCTET_STRING => "OCTET STRING",
        OID => "OBJECT IDENTIFIER",
        UTC_TIME => "UTCTime or GeneralizedTime",
        GENERALIZED_TIME => "GeneralizedTime",
        t if t & 0xe0 == 0xa0 => "a context tag",
        _ => "tag",
    }
}

/// One element: its tag, its content, and its whole encoding (tag and length included), which
/// is what a signature or a SubjectPublicKeyInfo comparison needs.
#[derive(Debug, Clone, Copy)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
    pub raw: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// A reader over the content, for a constructed element.
    pub fn reader(&self) -> Reader<'a> {
        Reader::new(self.value)
    }
}

/// Reads consecutive elements from a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { rest: data }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next element, whatever its tag.
    pub fn read_any(&mut self) -> Result<Tlv<'a>, DerError> {
        let input = self.rest;
        let (&tag, after_tag) = input.split_first().ok_or(DerError::Truncated)?;
        if tag & 0x1f == 0x1f {
            return Err(DerError::HighTag);
        }
        let (&first, mut after_len) = after_tag.split_first().ok_or(DerError::Truncated)?;
        let len = match first {
            0..=0x7f => usize::from(first),
            0x80 => return Err(DerError::IndefiniteLength),
            0x81..=0x84 => {
                let n = usize::from(first & 0x7f);
                let (bytes, rest) = split_at(after_len, n)?;
                after_len = rest;
                if bytes.first() == Some(&0) {
                    return Err(DerError::NonMinimalLength);
                }
                let len = bytes
                    .iter()
                    .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
                if len < 0x80 {
                    return Err(DerError::NonMinimalLength);
                }
                len
            }
            _ => return Err(DerError::TooLong),
        };
        if len > MAX_LEN {
            return Err(DerError::TooLong);
        }
        let (value, rest) = split_at(after_len, len)?;
        let header = input.len() - after_len.len();
        let (raw, _) = split_at(input, header + len)?;
        self.rest = rest;
        Ok(Tlv { tag, value, raw })
    }

    /// The next element, which must have `tag`.
    pub fn read(&mut self, tag: u8) -> Result<Tlv<'a>, DerError> {
        match self.peek_tag() {
            Some(found) if found != tag => Err(DerError::Unexpected {
                expected: tag,
                found,
            }),
            _ => self.read_any(),
        }
    }

    /// The next element if it has `tag` (for OPTIONAL fields).
    pub fn read_optional(&mut self, tag: u8) -> Result<Option<Tlv<'a>>, DerError> {
        if self.peek_tag() == Some(tag) {
            self.read_any().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Errors if anything is left: structures must end where their length says.
    pub fn finish(&self) -> Result<(), DerError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(DerError::Trailing(n)),
        }
    }
}

fn split_at(data: &[u8], n: usize) -> Result<(&[u8], &[u8]), DerError> {
    if n > data.len() {
        return Err(DerError::Truncated);
    }
    Ok(data.split_at(n))
}

/// Parses a whole buffer as exactly one element with `tag`.
pub fn parse_one(data: &[u8], tag: u8) -> Result<Tlv<'_>, DerError> {
    let mut r = Reader::new(data);
    let tlv = r.read(tag)?;
    r.finish()?;
    Ok(tlv)
}

#[cfg(test)]
/// The content of a BIT STRING whose bit count is a whole number of bytes (keys, signatures).
pub fn bit_string_bytes<'a>(tlv: &Tlv<'a>) -> Result<&'a [u8], DerError> {
    match tlv.value.split_first() {
        Some((0, bytes)) => Ok(bytes),
        Some(_) => Err(DerError::Bad("BIT STRING with unused bits")),
        None => Err(DerError::Bad("empty BIT STRING")),
    }
}

#[cfg(test)]
/// A small non-negative INTEGER (versions).
pub fn small_uint(tlv: &Tlv) -> Result<u64, DerError> {
    let v = tlv.value;
    match v {
        [] => Err(DerError::Bad("empty INTEGER")),
        [first, ..] if first & 0x80 != 0 => Err(DerError::Bad("negative INTEGER")),
        [0, second, ..] if second & 0x80 == 0 => {
            Err(DerError::Bad("INTEGER not in its shortest form"))
        }
        _ if v.len() > 9 || (v.len() == 9 && v[0] != 0) => Err(DerError::Bad("INTEGER too large")),
        _ => Ok(v.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))),
    }
}

/// Builds DER. Constructed elements are written through a closure that fills their content, so
/// lengths never have to be patched.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Writer::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Appends bytes that are already DER (a SubjectPublicKeyInfo, a whole sub-structure).
    pub fn raw(&mut self, der: &[u8]) {
        self.buf.extend_from_slice(der);
    }

    pub fn tlv(&mut self, tag: u8, content: &[u8]) {
        self.buf.push(tag);
        push_length(&mut self.buf, content.len());
        self.buf.extend_from_slice(content);
    }

    /// Writes `tag`, then `content`, then slips the length in between: no buffer per level,
    /// and the generic part stays two calls.
    pub fn constructed(&mut self, tag: u8, content: impl FnOnce(&mut Writer)) {
        self.buf.push(tag);
        let start = self.buf.len();
        content(self);
        self.insert_length(start);
    }

    fn insert_length(&mut self, start: usize) {
        let mut len = Vec::new();
        push_length(&mut len, self.buf.len() - start);
        self.buf.splice(start..start, len);
    }

    pub fn sequence(&mut self, content: impl FnOnce(&mut Writer)) {
        self.constructed(SEQUENCE, content);
    }

    /// A SET. Its elements are written in the order given: callers with more than one element
    /// must give them in DER order (we only ever write sets of one, or none).
    pub fn set(&mut self, content: impl FnOnce(&mut Writer)) {
        self.constructed(SET, content);
    }

    /// `[n]` constructed: an EXPLICIT tag's wrapper, or an IMPLICIT SET/SEQUENCE.
    pub fn context(&mut self, n: u8, content: impl FnOnce(&mut Writer)) {
        self.constructed(context(n), content);
    }

    pub fn integer(&mut self, v: u64) {
        let bytes = v.to_be_bytes();
        // Shortest two's complement: no leading zero bytes, but one if the top bit is set.
        let start = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len() - 1);
        let mut content = Vec::with_capacity(bytes.len() + 1);
        if bytes[start] & 0x80 != 0 {
            content.push(0);
        }
        content.extend_from_slice(&bytes[start..]);
        self.tlv(INTEGER, &content);
    }

    /// An OBJECT IDENTIFIER from its content bytes (the OIDs we write are constants).
    pub fn oid(&mut self, encoded: &[u8]) {
        self.tlv(OID, encoded);
    }

    pub fn utf8_string(&mut self, s: &str) {
        self.tlv(UTF8_STRING, s.as_bytes());
    }

    /// The caller checks `is_printable`.
    pub fn printable_string(&mut self, s: &str) {
        self.tlv(PRINTABLE_STRING, s.as_bytes());
    }

    /// A BIT STRING of whole bytes (zero unused bits).
    pub fn bit_string(&mut self, bytes: &[u8]) {
        let mut content = Vec::with_capacity(bytes.len() + 1);
        content.push(0);
        content.extend_from_slice(bytes);
        self.tlv(BIT_STRING, &content);
    }

    pub fn octet_string(&mut self, bytes: &[u8]) {
        self.tlv(OCTET_STRING, bytes);
    }
}

fn push_length(buf: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        buf.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        buf.push(0x80 | (bytes.len() - skip) as u8);
        buf.extend_from_slice(&bytes[skip..]);
    }
}

/// Whether `s` fits PrintableString's alphabet (X.680 41.4).
pub fn is_printable(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b))
}

/// Seconds since the Unix epoch of an X.509 Time (RFC 5280 4.1.2.5): UTCTime `YYMMDDHHMMSSZ`
/// with years 50–99 meaning 19xx, or GeneralizedTime `YYYYMMDDHHMMSSZ`. Times before 1970 are
/// clamped to 0: for validity checks "since before the epoch" and "since the epoch" are the same.
pub fn parse_time(tlv: &Tlv) -> Result<u64, DerError> {
    let (kind, year_digits) = match tlv.tag {
        UTC_TIME => ("UTCTime", 2),
        GENERALIZED_TIME => ("GeneralizedTime", 4),
        found => {
            return Err(DerError::Unexpected {
                expected: UTC_TIME,
                found,
            })
        }
    };
    let bad = || DerError::NotADate {
        kind,
        text: String::from_utf8_lossy(tlv.value).into_owned(),
    };
    let v = tlv.value;
    if v.len() != year_digits + 11 || v.last() != Some(&b'Z') {
        return Err(bad());
    }
    let digits = &v[..v.len() - 1];
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let num = |from: usize, n: usize| -> i64 {
        digits
            .iter()
            .skip(from)
            .take(n)
            .fold(0, |acc, &d| acc * 10 + i64::from(d - b'0'))
    };
    let mut year = num(0, year_digits);
    if year_digits == 2 {
        year += if year >= 50 { 1900 } else { 2000 };
    }
    let d = year_digits;
    let (month, day) = (num(d, 2), num(d + 2, 2));
    let (hour, min, sec) = (num(d + 4, 2), num(d + 6, 2), num(d + 8, 2));
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || min > 59
        || sec > 59
    {
        return Err(bad());
    }
    let secs = days_from_civil(year, month, day) * 86400 + hour * 3600 + min * 60 + sec;
    Ok(u64::try_from(secs).unwrap_or(0))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
/// clock.rs has the same algorithm privately; it is not ours to change.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(tag: u8, s: &str) -> Result<u64, String> {
        time_der(tag, s).map_err(|e| e.to_string())
    }

    fn time_der(tag: u8, s: &str) -> Result<u64, DerError> {
        let mut w = Writer::new();
        w.tlv(tag, s.as_bytes());
        let der = w.into_bytes();
        parse_time(&parse_one(&der, tag).expect("own encoding"))
    }

    #[test]
    fn times() {
        assert_eq!(time(UTC_TIME, "700101000000Z"), Ok(0));
        assert_eq!(time(UTC_TIME, "491231235959Z"), Ok(2524607999));
        // 1950: before the epoch, clamped.
        assert_eq!(time(UTC_TIME, "500101000000Z"), Ok(0));
        assert_eq!(time(UTC_TIME, "991231235959Z"), Ok(946684799));
        assert_eq!(time(UTC_TIME, "000229120000Z"), Ok(951825600));
        assert_eq!(time(GENERALIZED_TIME, "20500101000000Z"), Ok(2524608000));
        assert_eq!(time(GENERALIZED_TIME, "99991231235959Z"), Ok(253402300799));
        assert_eq!(time(GENERALIZED_TIME, "21000301000000Z"), Ok(4107542400));
        for bad in [
            "700101000000",
            "7001010000000Z",
            "701301000000Z",
            "700132000000Z",
            "010229000000Z",
            "700101240000Z",
            "700101006000Z",
            "700101000060Z",
            "70010100000+Z",
            "7001010000-0Z",
            "700100000000Z",
        ] {
            let err = time(UTC_TIME, bad).expect_err(bad);
            assert!(err.contains("not a date"), "{}", err);
        }
        assert!(time(GENERALIZED_TIME, "21000229000000Z").is_err());
        assert!(time(GENERALIZED_TIME, "20000229000000Z").is_ok());
        assert!(time(GENERALIZED_TIME, "20240101000000.5Z").is_err());
        assert!(time(OCTET_STRING, "20240101000000Z").is_err());
    }

    #[test]
    fn days_match_clock_rs() {
        for secs in [0u64, 951825600, 1_700_000_000, 4107542400, 253402300799] {
            let rfc = crate::clock::rfc3339(std::time::Duration::from_secs(secs));
            let g: String = rfc.chars().filter(char::is_ascii_digit).collect::<String>() + "Z";
            assert_eq!(time(GENERALIZED_TIME, &g), Ok(secs), "{}", rfc);
        }
    }

    #[test]
    fn lengths_and_tags() {
        let ok = |b: &[u8]| {
            Reader::new(b)
                .read_any()
                .map(|t| (t.tag, t.value.len(), t.raw.len()))
        };
        assert_eq!(ok(&[0x04, 0x00]), Ok((0x04, 0, 2)));
        assert_eq!(ok(&[0x04, 0x01, 0xff]), Ok((0x04, 1, 3)));
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7; 0x80]);
        assert_eq!(ok(&long), Ok((0x04, 0x80, 0x83)));
        assert_eq!(ok(&[]), Err(DerError::Truncated));
        assert_eq!(ok(&[0x04]), Err(DerError::Truncated));
        assert_eq!(ok(&[0x04, 0x02, 0x00]), Err(DerError::Truncated));
        assert_eq!(ok(&[0x04, 0x82, 0x01]), Err(DerError::Truncated));
        assert_eq!(
            ok(&[0x30, 0x80, 0x00, 0x00]),
            Err(DerError::IndefiniteLength)
        );
        assert_eq!(
            ok(&[0x04, 0x81, 0x05, 0, 0, 0, 0, 0]),
            Err(DerError::NonMinimalLength)
        );
        assert_eq!(
            ok(&[0x04, 0x82, 0x00, 0x80]),
            Err(DerError::NonMinimalLength)
        );
        assert_eq!(
            ok(&[0x04, 0x84, 0xff, 0xff, 0xff, 0xff]),
            Err(DerError::TooLong)
        );
        assert_eq!(ok(&[0x04, 0x85, 1, 0, 0, 0, 0]), Err(DerError::TooLong));
        assert_eq!(
            ok(&[0x04, 0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(DerError::TooLong)
        );
        assert_eq!(ok(&[0x04, 0xff]), Err(DerError::TooLong));
        assert_eq!(ok(&[0x1f, 0x01, 0x00]), Err(DerError::HighTag));
        assert_eq!(
            Reader::new(&[0x02, 0x01, 0x00])
                .read(SEQUENCE)
                .map(|t| t.tag),
            Err(DerError::Unexpected {
                expected: SEQUENCE,
                found: INTEGER
            })
        );
        assert_eq!(
            parse_one(&[0x05, 0x00, 0x00], NULL).map(|t| t.tag),
            Err(DerError::Trailing(1))
        );
    }

    #[test]
    fn writer_round_trips() {
        let mut w = Writer::new();
        w.sequence(|w| {
            for v in [0, 1, 127, 128, 255, 256, 0x7fff_ffff, u64::MAX] {
                w.integer(v);
            }
            w.context(0, |_| {});
            w.set(|w| w.utf8_string("é"));
            w.printable_string("a b");
            w.bit_string(&[1, 2]);
            w.octet_string(&[0; 300]);
        });
        let der = w.into_bytes();
        let seq = parse_one(&der, SEQUENCE).expect("sequence");
        let mut r = seq.reader();
        for v in [0, 1, 127, 128, 255, 256, 0x7fff_ffff, u64::MAX] {
            assert_eq!(small_uint(&r.read(INTEGER).expect("integer")), Ok(v));
        }
        assert_eq!(r.read(context(0)).expect("[0]").raw, &[0xa0, 0x00]);
        assert_eq!(r.read(SET).expect("set").value, &[0x0c, 0x02, 0xc3, 0xa9]);
        assert_eq!(r.read(PRINTABLE_STRING).expect("printable").value, b"a b");
        assert_eq!(
            bit_string_bytes(&r.read(BIT_STRING).expect("bits")),
            Ok(&[1u8, 2][..])
        );
        let os = r.read(OCTET_STRING).expect("octets");
        assert_eq!(
            (os.value.len(), &os.raw[..4]),
            (300, &[0x04, 0x82, 0x01, 0x2c][..])
        );
        assert_eq!(r.finish(), Ok(()));
        let mut w = Writer::new();
        w.integer(128);
        assert_eq!(w.into_bytes(), [0x02, 0x02, 0x00, 0x80]);
    }

    #[test]
    fn integers_and_bit_strings_are_checked() {
        let int = |v: &[u8]| {
            small_uint(&Tlv {
                tag: INTEGER,
                value: v,
                raw: v,
            })
        };
        assert!(int(&[]).is_err());
        assert!(int(&[0x80]).is_err());
        assert!(int(&[0x00, 0x01]).is_err());
        assert!(int(&[1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(int(&[0x00, 0x80]), Ok(128));
        let bits = |v: &[u8]| {
            bit_string_bytes(&Tlv {
                tag: BIT_STRING,
                value: v,
                raw: v,
            })
            .map(<[u8]>::len)
        };
        assert!(bits(&[]).is_err());
        assert!(bits(&[3, 0xf8]).is_err());
        assert_eq!(bits(&[0]), Ok(0));
    }

    #[test]
    fn printable() {
        assert!(is_printable("system:node:n1.example-1"));
        assert!(!is_printable("a_b"));
        assert!(!is_printable("é"));
        assert!(!is_printable("a*b"));
    }
}
