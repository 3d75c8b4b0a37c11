//! A short fuzz run of every target on the stable toolchain, for CI (docs/FUZZING.md): the
//! committed corpus mutated at random (bit flips, byte changes, insertions of random bytes and
//! of the tokens the parsers care about, deletions, duplications, splices of two inputs,
//! truncations) for a fixed time per target. No coverage guidance — that is what the long
//! cargo-fuzz runs on nightly are for — but every CI run tries new inputs, not only the corpus.
//!
//! `TINYLET_FUZZ_SEED` replays a run (the seed is printed); `TINYLET_FUZZ_MS` sets the time per
//! target (default 1500). A failing input is written to `target/fuzz-smoke-<target>-<seed>` and
//! named in the panic message, ready to become a regression input.

use super::TARGETS;
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that mean something to YAML, JSON, tar headers, HTTP and the numbers in them.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\n",
    b"\n- ",
    b": ",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"---\n",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"18446744073709551616",
    b"9223372036854775807",
    b"\x00",
    b"\xff",
    b"\xc3\x28",
    b"../",
    b"/",
    b"ustar\x0000",
    b"././@LongLink",
    b"\r\n",
    b"\r\n\r\n",
    b"%",
    b"=",
    b"..",
    b"\"items\"",
    b"\"metadata\"",
    b"\"type\"",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(i..i, bytes);
            }
            3 => {
                let i = rng.below(len + 1);
                let t = TOKENS[rng.below(TOKENS.len())];
                input.splice(i..i, t.iter().copied());
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                input.drain(i..i + n);
            }
            5 if len > 0 => {
                // Duplicate a range (repetition: nesting, many entries).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let chunk = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, chunk);
            }
            6 if !other.is_empty() => {
                // Splice: our head, the other input's tail.
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => input.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
        }
        // Keep inputs to the size libFuzzer is given here (-max_len 64 KiB in scripts/fuzz).
        input.truncate(64 << 10);
    }
}

/// The committed inputs of `target`: its corpus and the regressions kept from fixed findings.
pub(super) fn corpus(target: &str) -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let data = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("reading {}: {}", path.display(), e));
            out.push(data);
        }
    }
    out
}

#[test]
fn every_target_survives_a_short_random_mutation_run() {
    let seed = std::env::var("TINYLET_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    let per_target = Duration::from_millis(
        std::env::var("TINYLET_FUZZ_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1500),
    );
    eprintln!(
        "fuzz smoke: seed {} (TINYLET_FUZZ_SEED replays it), {:?} per target",
        seed, per_target
    );
    for (name, target) in TARGETS {
        let mut inputs = corpus(name);
        if inputs.is_empty() {
            inputs.push(Vec::new());
        }
        let mut rng = Rng((seed ^ fnv(name)) | 1);
        let started = Instant::now();
        let mut execs = 0u64;
        while started.elapsed() < per_target {
            let mut input = inputs[rng.below(inputs.len())].clone();
            let other = &inputs[rng.below(inputs.len())];
            mutate(&mut rng, &mut input, other);
            let result = std::panic::catch_unwind(|| target(&input));
            if let Err(panic) = result {
                let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target")
                    .join(format!("fuzz-smoke-{}-{}", name, seed));
                let _ = std::fs::write(&file, &input);
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!(
                    "fuzz target {} failed after {} inputs (seed {}): {}; the input is in {}",
                    name,
                    execs,
                    seed,
                    why,
                    file.display()
                );
            }
            execs += 1;
        }
        eprintln!(
            "fuzz smoke: {}: {} inputs in {:?}",
            name,
            execs,
            started.elapsed()
        );
        assert!(execs > 0, "no input reached {}", name);
    }
}

/// FNV-1a of a target's name: each target gets its own stream from one seed.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
