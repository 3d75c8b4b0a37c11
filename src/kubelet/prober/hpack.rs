//! The part of HPACK (RFC 7541) a gRPC probe needs: encoding a request's header block without
//! indexing or Huffman coding, and decoding the server's answer in full (static and dynamic
//! tables, Huffman strings), bounded and without panics on hostile input.

use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;

/// The dynamic table size a decoder starts with (SETTINGS_HEADER_TABLE_SIZE, left at default).
const TABLE_SIZE: usize = 4096;

/// The decoded header list of one block at most, counted as SETTINGS_MAX_HEADER_LIST_SIZE
/// counts it (name + value + 32 per field). Without it a block could name one large dynamic
/// table entry thousands of times, a byte each: a 64 KiB block decoded to ~250 MiB of copies.
pub const MAX_LIST: usize = 64 * 1024;

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Static table indexes the request uses.
pub const METHOD_POST: usize = 3;
pub const SCHEME_HTTP: usize = 6;
pub const PATH: usize = 4;
pub const AUTHORITY: usize = 1;
pub const CONTENT_TYPE: usize = 31;
pub const USER_AGENT: usize = 58;

/// An integer with an `n`-bit prefix; `flags` are the first byte's high bits.
pub fn encode_int(out: &mut Vec<u8>, n: u8, flags: u8, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut v = value - max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A string literal, not Huffman-coded.
pub fn encode_str(out: &mut Vec<u8>, s: &str) {
    encode_int(out, 7, 0, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A fully indexed field (`:method: POST`).
pub fn indexed(out: &mut Vec<u8>, index: usize) {
    encode_int(out, 7, 0x80, index);
}

/// A literal field without indexing, its name from the static table.
pub fn literal(out: &mut Vec<u8>, name_index: usize, value: &str) {
    encode_int(out, 4, 0, name_index);
    encode_str(out, value);
}

/// A literal field without indexing with a new name.
pub fn literal_new(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    encode_str(out, name);
    encode_str(out, value);
}

/// One connection's decoder: its dynamic table lives as long as the connection.
pub struct Decoder {
    table: VecDeque<(String, String)>,
    size: usize,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: TABLE_SIZE,
        }
    }
}

impl Decoder {
    /// The fields of a header block, in order.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        let mut list = 0;
        let mut r = Reader { b: block, i: 0 };
        let mut push = |out: &mut Vec<(String, String)>, field: (String, String)| {
            list += field.0.len() + field.1.len() + 32;
            if list > MAX_LIST {
                return Err(format!("HPACK header list above {} bytes", MAX_LIST));
            }
            out.push(field);
            Ok(())
        };
        while !r.done() {
            let first = r.peek()?;
            if first & 0x80 != 0 {
                let idx = r.int(7)?;
                push(&mut out, self.get(idx)?)?;
            } else if first & 0xc0 == 0x40 {
                let field = self.field(&mut r, 6)?;
                self.insert(field.clone());
                push(&mut out, field)?;
            } else if first & 0xe0 == 0x20 {
                let size = r.int(5)?;
                if size > TABLE_SIZE {
                    return Err(format!("HPACK table size {} above {}", size, TABLE_SIZE));
                }
                self.max = size;
                self.evict();
            } else {
                // 0000xxxx without indexing, 0001xxxx never indexed: the same to a reader.
                push(&mut out, self.field(&mut r, 4)?)?;
            }
        }
        Ok(out)
    }

    fn field(&self, r: &mut Reader, prefix: u8) -> Result<(String, String), String> {
        let idx = r.int(prefix)?;
        let name = if idx == 0 {
            r.string()?
        } else {
            self.get(idx)?.0
        };
        Ok((name, r.string()?))
    }

    fn get(&self, idx: usize) -> Result<(String, String), String> {
        let entry = match idx {
            1..=61 => STATIC
                .get(idx - 1)
                .map(|(n, v)| (n.to_string(), v.to_string())),
            _ => idx.checked_sub(62).and_then(|i| self.table.get(i)).cloned(),
        };
        entry.ok_or_else(|| format!("HPACK index {} out of range", idx))
    }

    fn insert(&mut self, field: (String, String)) {
        self.size += field.0.len() + field.1.len() + 32;
        self.table.push_front(field);
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn done(&self) -> bool {
        self.i >= self.b.len()
    }

    fn peek(&self) -> Result<u8, String> {
        self.b
            .get(self.i)
            .copied()
            .ok_or_else(|| "HPACK block ends early".to_string())
    }

    fn byte(&mut self) -> Result<u8, String> {
        let b = self.peek()?;
        self.i += 1;
        Ok(b)
    }

    fn int(&mut self, n: u8) -> Result<usize, String> {
        let max = (1usize << n) - 1;
        let mut v = (self.byte()? as usize) & max;
        if v < max {
            return Ok(v);
        }
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            if shift > 21 {
                return Err("HPACK integer too large".into());
            }
            v += ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let huffman = self.peek()? & 0x80 != 0;
        let len = self.int(7)?;
        let end = self
            .i
            .checked_add(len)
            .filter(|e| *e <= self.b.len())
            .ok_or("HPACK string runs past its block")?;
        let raw = &self.b[self.i..end];
        self.i = end;
        let bytes = if huffman {
            huffman_decode(raw)?
        } else {
            raw.to_vec()
        };
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// RFC 7541 Appendix B: the code of each byte value, right-aligned, and its length in bits.
#[rustfmt::skip]
const HUFFMAN_CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7,
    0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec,
    0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3,
    0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb,
    0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa,
    0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
    0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc,
    0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62,
    0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a,
    0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72,
    0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22,
    0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26,
    0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7,
    0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78,
    0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc,
    0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9,
    0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf,
    0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef,
    0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde,
    0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec,
    0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef,
    0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1,
    0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec,
    0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed,
    0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2,
    0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5,
    0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4,
    0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea,
    0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

#[rustfmt::skip]
const HUFFMAN_LENS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/// (length, code) -> byte, built on first use.
fn huffman_table() -> &'static HashMap<(u8, u32), u8> {
    static TABLE: OnceLock<HashMap<(u8, u32), u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..256usize)
            .map(|b| ((HUFFMAN_LENS[b], HUFFMAN_CODES[b]), b as u8))
            .collect()
    })
}

/// Decodes a Huffman string; the padding must be at most 7 one bits (the EOS prefix).
pub fn huffman_decode(input: &[u8]) -> Result<Vec<u8>, String> {
    let table = huffman_table();
    let mut out = Vec::with_capacity(input.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0u8);
    for byte in input {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            if let Some(b) = table.get(&(len, code)) {
                out.push(*b);
                code = 0;
                len = 0;
            } else if len >= 30 {
                return Err("invalid Huffman code (or EOS) in an HPACK string".into());
            }
        }
    }
    if len > 7 || code != (1u32 << len) - 1 {
        return Err("invalid Huffman padding in an HPACK string".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn integers_as_in_rfc_7541_c1() {
        let mut out = Vec::new();
        encode_int(&mut out, 5, 0, 10);
        assert_eq!(out, [0x0a]);
        out.clear();
        encode_int(&mut out, 5, 0, 1337);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        let mut r = Reader { b: &out, i: 0 };
        assert_eq!(r.int(5).unwrap(), 1337);
        // An endless continuation is refused, not looped on or overflowed.
        let evil = [0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(Reader { b: &evil, i: 0 }.int(5).is_err());
    }

    #[test]
    fn huffman_strings_as_in_rfc_7541_c4() {
        let cases = [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
        ];
        for (h, want) in cases {
            assert_eq!(huffman_decode(&hex(h)).unwrap(), want.as_bytes());
        }
        assert!(huffman_decode(&[0x00]).is_err(), "zero padding");
        assert!(huffman_decode(&[0xff, 0xff, 0xff, 0xff]).is_err(), "EOS");
    }

    #[test]
    fn response_blocks_with_the_dynamic_table_as_in_rfc_7541_c6() {
        let mut d = Decoder {
            max: 256,
            ..Default::default()
        };
        let first = d
            .decode(&hex(
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
                 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            ))
            .unwrap();
        assert_eq!(first[0], (":status".into(), "302".into()));
        assert_eq!(
            first[3],
            ("location".into(), "https://www.example.com".into())
        );
        let second = d.decode(&hex("4883 640e ff c1 c0 bf")).unwrap();
        assert_eq!(second[0], (":status".into(), "307".into()));
        assert_eq!(
            second[3],
            ("location".into(), "https://www.example.com".into())
        );
        assert_eq!(d.table.len(), 4);
    }

    #[test]
    fn hostile_blocks_are_errors() {
        let mut d = Decoder::default();
        for block in [
            vec![0x80],             // index 0
            vec![0xbf, 0x7f],       // index far past the tables
            vec![0x40, 0x85, 0x61], // string longer than the block
            vec![0x3f, 0xe1, 0x7f], // table size above the limit
            vec![0x00],             // ends early
        ] {
            assert!(d.decode(&block).is_err(), "{:x?}", block);
        }
    }

    #[test]
    fn a_block_repeating_a_large_entry_is_refused() {
        // One 4000-byte entry in the dynamic table, then named a byte at a time: 16 copies fit
        // under MAX_LIST, a block of 64 KiB would have been ~250 MiB.
        let mut block = vec![0x40];
        encode_str(&mut block, "x");
        encode_str(&mut block, &"v".repeat(4000));
        block.extend_from_slice(&[0xbe; 15]);
        assert_eq!(Decoder::default().decode(&block).unwrap().len(), 16);
        block.extend_from_slice(&[0xbe; 2]);
        let e = Decoder::default().decode(&block).unwrap_err();
        assert!(e.contains("header list above"), "{}", e);
    }
}
