//! Text for a terminal: names, arguments, results and errors come from scripts, runtimes
//! and other users, and a control character among them (an ESC starting a sequence that
//! retitles or clears the window, a CR that overwrites a line) must never reach an
//! operator's terminal raw. [`Escape`] writes every control character but newline and tab
//! as an escape (`\x1b`, `\r`, `\u{9b}`); `--json` output stays exact and does not use it.

use std::io::{self, Write};

/// A writer that escapes control characters (C0 but `\n` and `\t`, DEL, C1).
pub struct Escape<W: Write> {
    inner: W,
    /// The start of a UTF-8 sequence whose end has not been written yet.
    carry: Vec<u8>,
}

impl<W: Write> Escape<W> {
    pub fn new(inner: W) -> Self {
        Escape {
            inner,
            carry: Vec::new(),
        }
    }
}

/// `s` with its control characters escaped.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && (c as u32) < 0x80 => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

impl<W: Write> Write for Escape<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(buf);
        // Keep an incomplete sequence at the end for the next write.
        let complete = match std::str::from_utf8(&data) {
            Ok(_) => data.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => data.len(),
        };
        self.carry = data.split_off(complete);
        self.inner
            .write_all(text(&String::from_utf8_lossy(&data)).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.carry.is_empty() {
            let rest = std::mem::take(&mut self.carry);
            self.inner
                .write_all(text(&String::from_utf8_lossy(&rest)).as_bytes())?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Drop for Escape<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_pass_raw() {
        assert_eq!(
            text("a\x1b]0;T\x07b\r\n\tc\u{9b}2J\u{7f}é"),
            "a\\x1b]0;T\\x07b\\r\n\tc\\u{9b}2J\\x7fé"
        );
        // Written in pieces that split a UTF-8 sequence (C1 is two octets).
        let mut out = Vec::new();
        {
            let mut w = Escape::new(&mut out);
            let bytes = "x\u{9b}y".as_bytes();
            w.write_all(&bytes[..2]).unwrap();
            w.write_all(&bytes[2..]).unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "x\\u{9b}y");
    }
}
