//! Line framing for SMX over any byte stream (pipe or TCP).
//!
//! SMX messages are lines of octets, not UTF-8 text, so this is a small byte-level framer
//! rather than a string codec. A line ends at LF; the terminator is kept in the frame so the
//! message decoders can insist on CRLF (or accept a bare LF, see [`crate::proto`]).
//!
//! Memory is bounded: a line longer than the limit is reported once as
//! [`Frame::Overlong`] and its remaining bytes are skipped up to the next LF without being
//! buffered. Bytes left over when the stream ends are handed out as a final, unterminated
//! line, which the decoders reject as "missing CRLF".

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Default longest line: a 65535-octet smRunResult hex-encoded in a `532` takes
/// 131,070 octets plus a few dozen for the header; this leaves room to spare.
pub const DEFAULT_MAX_LINE: usize = 256 * 1024;

/// One framing event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole line, terminator included (an unterminated one only right before EOF).
    Line(Bytes),
    /// A line exceeded the limit; it is being skipped up to its LF.
    Overlong,
}

/// The sans-IO part: finds lines in a buffer that the caller fills.
#[derive(Debug)]
pub struct LineFramer {
    max_line: usize,
    /// How far the buffer was already searched for LF, so no byte is scanned twice.
    scanned: usize,
    discarding: bool,
}

impl LineFramer {
    pub fn new(max_line: usize) -> Self {
        LineFramer {
            max_line: max_line.max(2),
            scanned: 0,
            discarding: false,
        }
    }

    /// Takes the next frame out of `buf`, or `None` if more input is needed.
    pub fn next_frame(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        loop {
            match memchr::memchr(b'\n', &buf[self.scanned..]) {
                Some(pos) => {
                    let end = self.scanned + pos + 1;
                    self.scanned = 0;
                    let line = buf.split_to(end).freeze();
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    if line.len() > self.max_line {
                        return Some(Frame::Overlong);
                    }
                    return Some(Frame::Line(line));
                }
                None if self.discarding => {
                    buf.clear();
                    self.scanned = 0;
                    return None;
                }
                None if buf.len() > self.max_line => {
                    buf.clear();
                    self.scanned = 0;
                    self.discarding = true;
                    return Some(Frame::Overlong);
                }
                None => {
                    self.scanned = buf.len();
                    return None;
                }
            }
        }
    }

    /// At end of input: the unterminated rest, if any (never part of an over-long line).
    pub fn finish(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        self.scanned = 0;
        let discarding = std::mem::take(&mut self.discarding);
        if buf.is_empty() || discarding {
            buf.clear();
            return None;
        }
        Some(Frame::Line(buf.split().freeze()))
    }
}

/// Reads frames from an async byte stream.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    buf: BytesMut,
    framer: LineFramer,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max_line: usize) -> Self {
        LineReader {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            framer: LineFramer::new(max_line),
            eof: false,
        }
    }

    /// The next frame; `Ok(None)` once the stream has ended and everything was handed out.
    ///
    /// Cancel-safe: bytes already read stay buffered if the future is dropped.
    pub async fn next(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(f) = self.framer.next_frame(&mut self.buf) {
                return Ok(Some(f));
            }
            if self.eof {
                return Ok(self.framer.finish(&mut self.buf));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8 * 1024);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                self.eof = true;
            }
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[&[u8]], max: usize) -> Vec<Frame> {
        let mut f = LineFramer::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in input {
            buf.extend_from_slice(chunk);
            while let Some(fr) = f.next_frame(&mut buf) {
                out.push(fr);
            }
        }
        out.extend(f.finish(&mut buf));
        out
    }

    fn line(s: &[u8]) -> Frame {
        Frame::Line(Bytes::copy_from_slice(s))
    }

    #[test]
    fn splits_across_chunks_and_keeps_terminators() {
        let got = frames(&[b"231 1 2\r", b"\n232 3\n", b"538 0 1 1"], 64);
        assert_eq!(
            got,
            vec![line(b"231 1 2\r\n"), line(b"232 3\n"), line(b"538 0 1 1")]
        );
    }

    #[test]
    fn overlong_line_is_reported_once_and_skipped_without_buffering() {
        let mut f = LineFramer::new(8);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"0123456789");
        assert_eq!(f.next_frame(&mut buf), Some(Frame::Overlong));
        assert!(buf.is_empty());
        buf.extend_from_slice(&[b'x'; 1000]);
        assert_eq!(f.next_frame(&mut buf), None);
        assert!(buf.is_empty(), "discarded bytes are not kept");
        buf.extend_from_slice(b"yy\n232 1\r\n");
        assert_eq!(f.next_frame(&mut buf), Some(line(b"232 1\r\n")));
    }

    #[test]
    fn overlong_line_inside_one_chunk() {
        let got = frames(&[b"abcdefghijkl\n232 1\r\n"], 8);
        assert_eq!(got, vec![Frame::Overlong, line(b"232 1\r\n")]);
    }

    #[test]
    fn a_line_of_exactly_max_passes() {
        let got = frames(&[b"1234567\n"], 8);
        assert_eq!(got, vec![line(b"1234567\n")]);
    }

    #[tokio::test]
    async fn reader_over_async_stream() {
        let data: &[u8] = b"211 1 SMX/1.1\r\n231 2 2\r\n";
        let mut r = LineReader::new(data, 1024);
        assert_eq!(r.next().await.unwrap(), Some(line(b"211 1 SMX/1.1\r\n")));
        assert_eq!(r.next().await.unwrap(), Some(line(b"231 2 2\r\n")));
        assert_eq!(r.next().await.unwrap(), None);
    }
}
