//! Formatting helpers shared by the views (text tables, HTML, JUnit XML, ticket
//! display): durations, dates, and the one markup escape.

/// The markup [`escape`] writes for: the two differ only in how they spell an
/// apostrophe and treat control characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markup {
    /// HTML element content and quoted attribute values: control and bidi characters
    /// (which could reorder what a page shows) become visible escapes, as on the
    /// terminal ([`crate::visible`]); line ends stay.
    Html,
    /// XML 1.0: the control characters it cannot carry are dropped; tab and line
    /// ends stay.
    Xml,
}

/// Escapes `&`, `<`, `>`, `"` and `'` for `markup`, and its control characters as
/// [`Markup`] says.
pub fn escape(s: &str, markup: Markup) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match (c, markup) {
            ('&', _) => out.push_str("&amp;"),
            ('<', _) => out.push_str("&lt;"),
            ('>', _) => out.push_str("&gt;"),
            ('"', _) => out.push_str("&quot;"),
            ('\'', Markup::Html) => out.push_str("&#39;"),
            ('\'', Markup::Xml) => out.push_str("&apos;"),
            ('\n', _) | ('\t' | '\r', Markup::Xml) => out.push(c),
            (c, Markup::Html) if crate::visible::is_unsafe(c) => {
                out.push_str(&crate::visible::visible(c.encode_utf8(&mut [0; 4])));
            }
            (c, Markup::Xml) if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            (c, _) => out.push(c),
        }
    }
    out
}

/// A duration for people: `850ms`, `12.3s`, `4m05s`, `2h03m`.
pub fn fmt_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn fmt_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_escape_two_dialects() {
        let s = "a&b<c>\"d'e\tf\ng\x1b\u{202e}";
        assert_eq!(
            escape(s, Markup::Html),
            format!(
                "a&amp;b&lt;c&gt;&quot;d&#39;e{}f\ng{}{}",
                crate::visible::visible("\t"),
                crate::visible::visible("\x1b"),
                crate::visible::visible("\u{202e}")
            )
        );
        assert_eq!(
            escape(s, Markup::Xml),
            "a&amp;b&lt;c&gt;&quot;d&apos;e\tf\ng\u{202e}"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(fmt_unix(1_709_210_096), "2024-02-29 12:34:56 UTC");
        assert_eq!(fmt_ms(850), "850ms");
        assert_eq!(fmt_ms(12_345), "12.3s");
        assert_eq!(fmt_ms(245_000), "4m05s");
        assert_eq!(fmt_ms(7_380_000), "2h03m");
    }
}
