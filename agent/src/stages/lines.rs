//! A child's output cut into log lines the way a terminal shows them.
//!
//! `\n` ends a line (`\r`s just before it are dropped: CRLF, and the `\r\r\n` some
//! Windows tools write). A `\r` inside a line
//! returns the carriage, so what came before it was overwritten on a terminal: progress
//! bars (`gpu_burn`, `curl`, `fio`) print hundreds of updates on one line that way, and
//! the log keeps only the last of them, as the screen would. Lines longer than the cap
//! are cut into pieces, so memory stays bounded whatever the child prints.
use std::collections::VecDeque;

/// Splits a byte stream into lines; see the module docs.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// A splitter that cuts lines longer than `max` bytes (at least 1).
    pub fn new(max: usize) -> Self {
        LineSplitter {
            pending: Vec::new(),
            max: max.max(1),
        }
    }

    /// Feeds `bytes`; calls `emit` with each line they complete.
    pub fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(&[u8])) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|&b| b == b'\n') {
            cut(
                visible(&self.pending[start..start + pos]),
                self.max,
                &mut emit,
            );
            start += pos + 1;
        }
        self.pending.drain(..start);
        // A carriage return with text after it: the text before it was overwritten.
        // (Carriage returns at the very end may belong to a line end, so they wait.)
        if let Some(p) = self
            .pending
            .windows(2)
            .rposition(|w| w[0] == b'\r' && w[1] != b'\r')
        {
            self.pending.drain(..=p);
        }
        // Trailing carriage returns mean one: keep one, so a run of them costs nothing.
        while self.pending.ends_with(b"\r\r") {
            self.pending.pop();
        }
        // Cut once the text (a trailing `\r` aside) is over the cap: a line exactly the
        // cap long waits for its `\n`, and ends whole.
        let text = |p: &[u8]| p.len() - usize::from(p.ends_with(b"\r"));
        while text(&self.pending) > self.max {
            emit(&self.pending[..self.max]);
            self.pending.drain(..self.max);
        }
    }

    /// Ends the stream: emits an unterminated last line, if any.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            cut(visible(&self.pending), self.max, &mut emit);
            self.pending.clear();
        }
    }
}

/// Emits `line` in pieces of at most `max` bytes (an empty line once).
fn cut(line: &[u8], max: usize, emit: &mut impl FnMut(&[u8])) {
    if line.is_empty() {
        return emit(line);
    }
    for piece in line.chunks(max) {
        emit(piece);
    }
}

/// What a terminal shows of one line: the text after its last carriage return.
fn visible(mut line: &[u8]) -> &[u8] {
    while let Some(l) = line.strip_suffix(b"\r") {
        line = l;
    }
    match line.iter().rposition(|&b| b == b'\r') {
        Some(p) => &line[p + 1..],
        None => line,
    }
}

/// Largest tail a report part keeps, all lines together: a Part is one frame, and a
/// batch of frames must stay under the coordinator's 1 MiB cap.
pub const MAX_TAIL_BYTES: usize = 64 * 1024;
/// Longest tail line kept whole; longer ones keep their start and a marker.
pub const MAX_TAIL_LINE: usize = 4 * 1024;

/// The last lines of `lines` that fit in `max_total` bytes, each line longer than
/// `max_line` cut (at a character boundary) with a `… [cut N bytes]` marker.
pub fn cap_tail(lines: Vec<String>, max_total: usize, max_line: usize) -> Vec<String> {
    let mut kept = VecDeque::new();
    let mut total = 0;
    for mut line in lines.into_iter().rev() {
        if line.len() > max_line {
            let mut end = max_line;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            let cut = line.len() - end;
            line.truncate(end);
            line.push_str(&format!("… [cut {cut} bytes]"));
        }
        if total + line.len() > max_total {
            break;
        }
        total += line.len();
        kept.push_front(line);
    }
    kept.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_are_capped_to_the_last_lines_with_long_ones_cut() {
        // 200 lines of 16 KiB (what a container cell may keep) is 3.2 MB: too big.
        let lines: Vec<String> = (0..200)
            .map(|i| format!("{i:03}{}", "é".repeat(8 * 1024)))
            .collect();
        let t = cap_tail(lines, MAX_TAIL_BYTES, MAX_TAIL_LINE);
        let total: usize = t.iter().map(String::len).sum();
        assert!(total <= MAX_TAIL_BYTES, "{total}");
        assert!(t.len() >= 10, "{}", t.len());
        assert!(t.last().unwrap().starts_with("199"));
        assert!(
            t[0].ends_with(&format!("[cut {} bytes]", 3 + 16 * 1024 - 4096 + 1)),
            "{}",
            &t[0][4000..]
        );
        let short = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            cap_tail(short.clone(), MAX_TAIL_BYTES, MAX_TAIL_LINE),
            short
        );
        assert_eq!(cap_tail(short, 1, 10), ["b"]);
    }

    /// Feeds `chunks` one after another; returns the lines as strings.
    fn split(max: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, |l| out.push(String::from_utf8_lossy(l).into_owned()));
        }
        s.finish(|l| out.push(String::from_utf8_lossy(l).into_owned()));
        out
    }

    #[test]
    fn newlines_and_crlf_end_lines() {
        assert_eq!(split(100, &[b"a\nb\r\nc"]), ["a", "b", "c"]);
        assert_eq!(split(100, &[b"a\n\nb\n"]), ["a", "", "b"]);
        // A CRLF split across reads is still one line end.
        assert_eq!(split(100, &[b"x\r", b"\ny\n"]), ["x", "y"]);
        // So is the \r\r\n some Windows tools write, whole or split.
        assert_eq!(split(100, &[b"a\r\r\nb\r\r\n"]), ["a", "b"]);
        assert_eq!(split(100, &[b"a\r", b"\r", b"\nb\r\r", b"\n"]), ["a", "b"]);
        assert!(split(100, &[b""]).is_empty());
    }

    #[test]
    fn a_carriage_return_keeps_what_the_terminal_shows() {
        assert_eq!(split(100, &[b"10%\r50%\r100%\n"]), ["100%"]);
        assert_eq!(split(100, &[b"10%\r50%\r100%\r\nnext\n"]), ["100%", "next"]);
        // Across reads, with the updates dropped as they come.
        assert_eq!(split(100, &[b"\r1%", b"\r2%", b"\r3%", b"\n"]), ["3%"]);
        assert_eq!(split(100, &[b"\rdone\n"]), ["done"]);
        // An unterminated progress line at the end: its last state.
        assert_eq!(split(100, &[b"a\rb\rc"]), ["c"]);
    }

    #[test]
    fn progress_without_newlines_stays_small() {
        // 100k updates on one line never pile up: only the current one is held.
        let mut s = LineSplitter::new(64);
        let mut lines = 0;
        for i in 0..100_000 {
            s.push(format!("\r{i} done").as_bytes(), |_| lines += 1);
            assert!(s.pending.len() < 64, "{}", s.pending.len());
        }
        assert_eq!(lines, 0);
        let mut last = String::new();
        s.finish(|l| last = String::from_utf8_lossy(l).into_owned());
        assert_eq!(last, "99999 done");
    }

    #[test]
    fn long_lines_are_cut_at_the_cap() {
        let long = vec![b'x'; 10];
        assert_eq!(split(4, &[&long, b"\n"]), ["xxxx", "xxxx", "xx"]);
        // Also when the newline comes in the same read, or never.
        assert_eq!(split(4, &[b"xxxxxxxxxx\n"]), ["xxxx", "xxxx", "xx"]);
        assert_eq!(split(4, &[b"xxxxxxxxxx"]), ["xxxx", "xxxx", "xx"]);
        assert_eq!(split(4, &[b"xxxx\r\rxxxxxxx\r\n"]), ["xxxx", "xxx"]);
    }

    #[test]
    fn a_line_exactly_the_cap_long_ends_whole() {
        // Its newline in the next read: no empty line after it.
        assert_eq!(split(4, &[b"xxxx", b"\n"]), ["xxxx"]);
        assert_eq!(split(4, &[b"xxx\r", b"\n"]), ["xxx"]);
        assert_eq!(
            split(4, &[b"xxxx", b"\r\r", b"\r", b"\ny\n"]),
            ["xxxx", "y"]
        );
        // A run of carriage returns is held as one.
        let mut s = LineSplitter::new(4);
        s.push(&[b'\r'; 1000], |_| panic!("no line"));
        assert_eq!(s.pending, b"\r");
    }
}
