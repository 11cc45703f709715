//! A child's output cut into log lines the way a terminal shows them.
//!
//! `\n` ends a line (`\r`s just before it are dropped: CRLF, and the `\r\r\n` some
//! Windows tools write). A `\r` inside a line
//! returns the carriage, so what came before it was overwritten on a terminal: progress
//! bars (`gpu_burn`, `curl`, `fio`) print hundreds of updates on one line that way, and
//! the log keeps only the last of them, as the screen would. Lines longer than the cap
//! are cut into pieces, so memory stays bounded whatever the child prints.

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
            emit(visible(&self.pending[start..start + pos]));
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
        while self.pending.len() >= self.max {
            emit(visible(&self.pending[..self.max]));
            self.pending.drain(..self.max);
        }
    }

    /// Ends the stream: emits an unterminated last line, if any.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            emit(visible(&self.pending));
            self.pending.clear();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
