//! One module per decoder of untrusted bytes.
pub mod ack;
pub mod batch;
pub mod bundle;
pub mod http;
pub mod plan;
pub mod ticket;

/// The class of an error: the first words of its message, leaving out numbers,
/// hex ids, quoted names and what follows them or a colon, so that the values inside a
/// message do not make every input a new class.
pub fn class(prefix: &str, err: &dyn std::fmt::Display) -> u64 {
    let msg = err.to_string();
    let words: Vec<&str> = msg
        .split_whitespace()
        .take_while(|w| !w.contains([':', '"', '`', '\'']))
        .filter(|w| !w.contains(|c: char| c.is_ascii_digit()))
        .map(|w| w.trim_matches(|c: char| c.is_ascii_punctuation()))
        .filter(|w| !(w.len() >= 8 && w.chars().all(|c| c.is_ascii_hexdigit())))
        .take(6)
        .collect();
    crate::stable_hash((prefix, words))
}

/// Whether this input (by its bytes) takes the structure-aware path: signed again
/// with the trusted key. One in `n`, fixed per input so a saved input replays.
pub fn pick(data: &[u8], n: u64) -> bool {
    crate::stable_hash(data).is_multiple_of(n)
}
