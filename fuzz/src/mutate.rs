//! Byte-level mutations (AFL's havoc stage in small): bit flips, interesting
//! values, inserts, deletes, duplicated and swapped chunks, truncations, splices
//! with another corpus input, huge varints, long runs and dictionary tokens.
use fastrand::Rng;

/// Bytes that make decoders take edge paths: zero, one, sign and varint
/// continuation bits, all ones, COBS and text separators.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x02, 0x7f, 0x80, 0x81, 0xfe, 0xff, b'\n', b'"', b'=', b'.', b'/',
];

/// Applies 1 to 8 stacked mutations to `data`, keeping it at most `max_len` bytes.
/// `other` is another corpus input to splice with; `dict` the target's tokens.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8], dict: &[&[u8]], max_len: usize) {
    let rounds = 1 << rng.usize(0..4);
    for _ in 0..rounds.min(8) {
        one(rng, data, other, dict);
    }
    data.truncate(max_len);
}

/// A position in `0..=len` (an index for inserts).
fn pos(rng: &mut Rng, len: usize) -> usize {
    rng.usize(0..=len)
}

/// A short length, biased to small.
fn short(rng: &mut Rng, max: usize) -> usize {
    let cap = [4, 16, 64, 512][rng.usize(0..4)];
    rng.usize(1..=cap.min(max.max(1)))
}

fn one(rng: &mut Rng, d: &mut Vec<u8>, other: &[u8], dict: &[&[u8]]) {
    if d.is_empty() {
        d.push(rng.u8(..));
        return;
    }
    let len = d.len();
    match rng.u8(0..14) {
        0 => {
            let i = rng.usize(0..len);
            d[i] ^= 1 << rng.u8(0..8);
        }
        1 => {
            let i = rng.usize(0..len);
            d[i] = INTERESTING[rng.usize(0..INTERESTING.len())];
        }
        2 => {
            let i = rng.usize(0..len);
            d[i] = d[i]
                .wrapping_add(rng.u8(1..=8))
                .wrapping_sub(if rng.bool() { 0 } else { 9 });
        }
        3 => {
            let i = rng.usize(0..len);
            d[i] = rng.u8(..);
        }
        4 => {
            let at = pos(rng, len);
            let n = short(rng, 16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
            d.splice(at..at, bytes);
        }
        5 => {
            let at = rng.usize(0..len);
            let n = short(rng, len - at);
            d.drain(at..at + n);
        }
        6 => {
            // Duplicate a chunk somewhere else (repeated fields, records, stages).
            let from = rng.usize(0..len);
            let n = short(rng, len - from);
            let chunk = d[from..from + n].to_vec();
            let at = pos(rng, len);
            d.splice(at..at, chunk);
        }
        7 => d.truncate(rng.usize(0..len)),
        8 => {
            // Splice: a prefix of this input and a suffix of another.
            if !other.is_empty() {
                let cut = rng.usize(0..=len);
                let from = rng.usize(0..other.len());
                d.truncate(cut);
                d.extend_from_slice(&other[from..]);
            }
        }
        9 => {
            // A varint claiming a huge length or value.
            let at = rng.usize(0..len);
            let v: &[u8] = match rng.u8(0..4) {
                0 => &[0xff, 0xff, 0xff, 0xff, 0x0f],
                1 => &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                2 => &[
                    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
                ],
                _ => &[0xfe, 0xff, 0x03],
            };
            let end = (at + v.len()).min(len);
            d.splice(at..end, v.iter().copied());
        }
        10 => {
            // A run of one byte, sometimes long (size limits, deep nesting).
            let at = pos(rng, len);
            let n = if rng.u8(0..16) == 0 {
                rng.usize(256..8192)
            } else {
                short(rng, 64)
            };
            let b = if rng.bool() {
                d[rng.usize(0..len)]
            } else {
                INTERESTING[rng.usize(0..INTERESTING.len())]
            };
            d.splice(at..at, std::iter::repeat_n(b, n));
        }
        11 => {
            // Swap two chunks of equal length.
            let n = short(rng, len / 2);
            if n * 2 <= len {
                let a = rng.usize(0..=len - 2 * n);
                let b = rng.usize(a + n..=len - n);
                let (x, y) = d.split_at_mut(b);
                x[a..a + n].swap_with_slice(&mut y[..n]);
            }
        }
        _ => {
            // A dictionary token, inserted or written over.
            if !dict.is_empty() {
                let t = dict[rng.usize(0..dict.len())];
                let at = pos(rng, len);
                if rng.bool() {
                    d.splice(at..at, t.iter().copied());
                } else {
                    let end = (at + t.len()).min(len);
                    d.splice(at..end, t.iter().copied());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_deterministic_and_bounded() {
        let run = |seed| {
            let mut rng = Rng::with_seed(seed);
            let mut d = b"hello world".to_vec();
            for _ in 0..1000 {
                mutate(&mut rng, &mut d, b"other input", &[b"tok"], 100);
                assert!(d.len() <= 100);
                if d.is_empty() {
                    d = b"x".to_vec();
                }
            }
            d
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
