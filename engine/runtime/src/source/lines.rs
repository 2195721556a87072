//! Splitting a receiver's byte stream into lines of bounded size.
//!
//! Bytes are split at `\n` first and decoded only afterwards, so a
//! multi-byte character that arrives in two reads is whole by the time it is
//! decoded. A line never holds more than its limit (plus one byte) in
//! memory: the rest of a longer line is counted and discarded up to its
//! `\n`.

/// One line as read: its bytes (at most the limit) and its real length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawLine {
    pub bytes: Vec<u8>,
    /// The line's length in bytes (without its line ending), even when
    /// longer than what `bytes` kept.
    pub len: u64,
}

impl RawLine {
    /// True when the line was longer than the limit (`bytes` is cut).
    pub fn is_long(&self, max: usize) -> bool {
        self.len > max as u64
    }
}

/// Splits pieces of a byte stream into lines at `\n` (a `\r` right before
/// it is part of the line ending).
pub(super) struct LineSplitter {
    max: usize,
    /// The current line's first bytes: at most `max + 1`, so a `\r` before
    /// the `\n` never makes a line of exactly `max` bytes look long.
    buf: Vec<u8>,
    /// Bytes of the current line seen so far (kept or not).
    seen: u64,
    /// The last byte seen of the current line was `\r`.
    ends_cr: bool,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter { max, buf: Vec::new(), seen: 0, ends_cr: false }
    }

    /// Splits `data` (any piece of the stream), appending finished lines to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<RawLine>) {
        while let Some(i) = data.iter().position(|b| *b == b'\n') {
            self.take(&data[..i]);
            out.push(self.end_line(true));
            data = &data[i + 1..];
        }
        self.take(data);
    }

    /// At the end of the stream: a non-empty partial line is a line.
    pub fn finish(&mut self) -> Option<RawLine> {
        (self.seen > 0).then(|| self.end_line(false))
    }

    /// Bytes of the current line buffered so far.
    pub fn partial_len(&self) -> u64 {
        self.seen
    }

    fn take(&mut self, piece: &[u8]) {
        let Some(last) = piece.last() else { return };
        self.seen += piece.len() as u64;
        self.ends_cr = *last == b'\r';
        let room = (self.max + 1).saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&piece[..piece.len().min(room)]);
    }

    fn end_line(&mut self, newline: bool) -> RawLine {
        let mut bytes = std::mem::take(&mut self.buf);
        let mut len = std::mem::take(&mut self.seen);
        if newline && std::mem::take(&mut self.ends_cr) {
            // `\r\n`: the `\r` is the line ending's (if kept, it is the last byte kept).
            if bytes.len() as u64 == len {
                bytes.pop();
            }
            len -= 1;
        }
        self.ends_cr = false;
        if len > self.max as u64 {
            bytes.truncate(utf8_cut(&bytes, self.max));
        }
        RawLine { bytes, len }
    }
}

/// Where to cut `bytes` to at most `max` bytes without splitting a UTF-8
/// character (invalid bytes are cut anywhere).
pub(super) fn utf8_cut(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    // The start of the character that holds byte `max`, at most 3 bytes back.
    for i in (max.saturating_sub(3)..max).rev() {
        let b = bytes[i];
        if b & 0xC0 != 0x80 {
            let width = match b {
                0xF0..=0xF7 => 4,
                0xE0..=0xEF => 3,
                0xC0..=0xDF => 2,
                _ => 1,
            };
            return if i + width > max { i } else { max };
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, pieces: &[&[u8]]) -> (Vec<RawLine>, Option<RawLine>) {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for p in pieces {
            s.feed(p, &mut out);
        }
        let last = s.finish();
        (out, last)
    }

    fn line(b: &[u8]) -> RawLine {
        RawLine { bytes: b.to_vec(), len: b.len() as u64 }
    }

    #[test]
    fn splits_at_newlines_across_pieces() {
        let (out, last) = split(100, &[b"ab\nh\xC3", b"\xA9\n\ncd\r", b"\nlast"]);
        assert_eq!(out, vec![line(b"ab"), line("hé".as_bytes()), line(b""), line(b"cd")]);
        assert_eq!(last, Some(line(b"last")));
        assert_eq!(split(100, &[b"a\n"]).1, None);
    }

    #[test]
    fn only_one_cr_belongs_to_the_line_ending() {
        let (out, last) = split(100, &[b"a\r\r\n\r\n", b"b\r"]);
        assert_eq!(out, vec![line(b"a\r"), line(b"")]);
        assert_eq!(last, Some(line(b"b\r")), "a bare \\r at the end of the stream is not a line ending");
    }

    #[test]
    fn long_lines_are_bounded_and_cut_at_a_character() {
        // Exactly the limit, with \r\n: not long.
        let (out, _) = split(3, &[b"abc\r\n"]);
        assert_eq!(out, vec![line(b"abc")]);
        let mut s = LineSplitter::new(4);
        let mut out = Vec::new();
        s.feed("abcé".as_bytes(), &mut out);
        for _ in 0..1000 {
            s.feed(&[b'x'; 1000], &mut out);
            assert!(s.buf.len() <= 5);
        }
        s.feed(b"\r\nok\n", &mut out);
        assert_eq!(out, vec![RawLine { bytes: b"abc".to_vec(), len: 1_000_005 }, line(b"ok")]);
        assert!(out[0].is_long(4) && !out[1].is_long(4));
    }

    #[test]
    fn utf8_cut_never_splits_a_character() {
        let s = "a€b".as_bytes(); // € is 3 bytes
        assert_eq!(utf8_cut(s, 1), 1);
        assert_eq!(utf8_cut(s, 2), 1);
        assert_eq!(utf8_cut(s, 3), 1);
        assert_eq!(utf8_cut(s, 4), 4);
        assert_eq!(utf8_cut(&[0x80, 0x80, 0x80, 0x80, 0x80], 4), 4);
        assert_eq!(utf8_cut(b"abc", 5), 3);
    }
}
