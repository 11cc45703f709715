//! Text from agents, plans and files made safe to print: control characters shown as
//! escapes instead of reaching the operator's terminal.
//!
//! Test output, hostnames, stage details and plan names come from machines under test
//! and from files; written raw they could move the cursor, clear the screen, set the
//! window title (OSC), or reorder what is shown (bidi overrides). Every printer of the
//! command line passes such text through [`visible`]; `--raw` options print the exact
//! bytes instead.
use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as it is: C0 controls except tab, DEL, C1
/// controls (U+0080–U+009F), the line and paragraph separators, and the bidi
/// embedding, override, isolate and mark characters.
pub fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with every [`is_unsafe`] character written as an escape: `\n`, `\r`, `\x1b`
/// (other ASCII controls and DEL), `\u{9b}` (everything else). Tabs and printable text
/// pass unchanged; text without such characters is not copied.
pub fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if is_unsafe(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`visible`] unless `raw`, then `s` itself (for `--raw`).
pub fn shown(s: &str, raw: bool) -> Cow<'_, str> {
    if raw { Cow::Borrowed(s) } else { visible(s) }
}

/// JSON text (as serde_json writes it) with the characters JSON leaves raw but a
/// terminal would act on (C1 controls, DEL, bidi and separator characters) written as
/// `\uXXXX` escapes: the same JSON value, safe to print.
pub fn json_safe(json: String) -> String {
    // serde_json escapes every C0 control inside strings, so a raw newline is layout;
    // the characters caught here are legal unescaped inside strings only.
    let unsafe_in_json = |c: char| c != '\n' && is_unsafe(c);
    if !json.chars().any(unsafe_in_json) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if unsafe_in_json(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_shown_as_escapes() {
        assert_eq!(visible("plain text\tok"), "plain text\tok");
        assert!(matches!(visible("plain"), Cow::Borrowed(_)));
        assert_eq!(
            visible("\x1b]0;pwned\x07\x1b[2J\r\n\u{9b}x\u{7f}"),
            "\\x1b]0;pwned\\x07\\x1b[2J\\r\\n\\u{9b}x\\x7f"
        );
        assert_eq!(visible("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(visible("naïve ✓ 日本"), "naïve ✓ 日本");
        assert_eq!(shown("\x1b", true), "\x1b");
    }

    #[test]
    fn json_stays_the_same_value() {
        let v = serde_json::json!({ "t": "a\u{9b}b\u{202e}c\x1b\u{7f}" });
        let text = json_safe(serde_json::to_string_pretty(&v).unwrap());
        assert!(!text.chars().any(|c| c != '\n' && is_unsafe(c)), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }
}
