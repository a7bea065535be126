//! Token parsers shared by the command and reply grammars (nom 8, complete input).
//!
//! Every parser works on one whole message and never returns `Incomplete`: framing has
//! already cut the line, so running out of input is a syntax error like any other.

use nom::bytes::complete::take_till;
use nom::error::{Error, ErrorKind};
use nom::{IResult, Parser};

use super::octets::Octets;

/// Where and why a message failed to parse; `at` is an offset into the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected} at offset {at}")]
pub struct Malformed {
    pub at: usize,
    pub expected: &'static str,
}

/// A cursor over one message that turns nom failures into [`Malformed`] with offsets.
pub(crate) struct Cursor<'a> {
    msg: &'a [u8],
    rest: &'a [u8],
}

pub(crate) type Step<T> = Result<T, Malformed>;

impl<'a> Cursor<'a> {
    pub fn new(msg: &'a [u8]) -> Self {
        Cursor { msg, rest: msg }
    }

    pub fn offset(&self) -> usize {
        self.msg.len() - self.rest.len()
    }

    fn fail(&self, expected: &'static str) -> Malformed {
        Malformed {
            at: self.offset(),
            expected,
        }
    }

    /// Runs `p`; on failure the cursor does not move and the error names `expected`.
    pub fn run<T>(
        &mut self,
        expected: &'static str,
        mut p: impl Parser<&'a [u8], Output = T, Error = Error<&'a [u8]>>,
    ) -> Step<T> {
        match p.parse(self.rest) {
            Ok((rest, v)) => {
                self.rest = rest;
                Ok(v)
            }
            Err(_) => Err(self.fail(expected)),
        }
    }

    /// Exactly one `WSP` (SP or HTAB).
    pub fn wsp(&mut self) -> Step<()> {
        self.run("WSP", wsp)
    }

    /// The bytes up to the next WSP, CR or LF (possibly empty).
    pub fn token(&mut self) -> &'a [u8] {
        // take_till on complete input cannot fail.
        let (rest, t) = take_till::<_, _, Error<&[u8]>>(is_delim)
            .parse(self.rest)
            .unwrap_or((self.rest, &[][..]));
        self.rest = rest;
        t
    }

    /// A token checked by `check`; the error points at the token's start.
    pub fn token_as<T>(
        &mut self,
        expected: &'static str,
        check: impl Fn(&'a [u8]) -> Option<T>,
    ) -> Step<T> {
        let at = self.offset();
        let t = self.token();
        check(t).ok_or(Malformed { at, expected })
    }

    /// `WSP` followed by a checked token.
    pub fn field<T>(
        &mut self,
        expected: &'static str,
        check: impl Fn(&'a [u8]) -> Option<T>,
    ) -> Step<T> {
        let at = self.offset();
        self.wsp().map_err(|_| Malformed { at, expected })?;
        self.token_as(expected, check)
    }

    /// `WSP` followed by a `QuotedString` that ends the field.
    pub fn quoted_field(&mut self, expected: &'static str) -> Step<Vec<u8>> {
        let at = self.offset();
        self.wsp().map_err(|_| Malformed { at, expected })?;
        let v = self.run(expected, quoted_string)?;
        self.field_end(expected)?;
        Ok(v)
    }

    /// `WSP` followed by `HexString / QuotedString` that ends the field.
    pub fn value_field(&mut self, expected: &'static str) -> Step<Octets> {
        let at = self.offset();
        self.wsp().map_err(|_| Malformed { at, expected })?;
        let v = self.run(expected, value)?;
        self.field_end(expected)?;
        Ok(v)
    }

    /// A field ends at WSP, CR, LF or the end of input, as the token fields do: `"a"x` or
    /// `ABZZ` is a bad field (so `start` blames the right parameter, section 6.1.2 item 1),
    /// not a good field followed by junk.
    fn field_end(&self, expected: &'static str) -> Step<()> {
        match self.rest.first() {
            Some(&b) if !is_delim(b) => Err(self.fail(expected)),
            _ => Ok(()),
        }
    }

    /// The message terminator and nothing after it. Accepts CRLF and, leniently, a bare LF.
    pub fn end(&mut self) -> Step<()> {
        match self.rest {
            b"\r\n" | b"\n" => {
                self.rest = &[];
                Ok(())
            }
            _ => Err(self.fail("CRLF")),
        }
    }

    /// True if the next bytes are the terminator.
    pub fn at_end(&self) -> bool {
        matches!(self.rest, b"\r\n" | b"\n")
    }
}

fn is_delim(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn fail<T>(i: &[u8], kind: ErrorKind) -> IResult<&[u8], T> {
    Err(nom::Err::Error(Error::new(i, kind)))
}

/// `WSP = SP / HTAB`, exactly one.
pub(crate) fn wsp(i: &[u8]) -> IResult<&[u8], ()> {
    match i.split_first() {
        Some((&b, rest)) if is_wsp(b) => Ok((rest, ())),
        _ => fail(i, ErrorKind::Space),
    }
}

/// `QuotedString = DQUOTE *(VCHAR / WSP) DQUOTE` with the backslash escapes of section 5.1.
/// An escape other than `\\ \t \n \r \"` drops the backslash and keeps the next character,
/// which must itself be VCHAR or WSP.
pub(crate) fn quoted_string(i: &[u8]) -> IResult<&[u8], Vec<u8>> {
    let Some((&b'"', body)) = i.split_first() else {
        return fail(i, ErrorKind::Char);
    };
    // The value is never longer than the rest of the line, so this never reallocates.
    let mut out = Vec::with_capacity(body.len());
    let mut pos = 0;
    loop {
        // Copy the run of plain characters (SP and VCHAR but `"` and `\`) in one go.
        let run = swar::plain_run(&body[pos..]);
        out.extend_from_slice(&body[pos..pos + run]);
        pos += run;
        match body.get(pos) {
            Some(b'"') => return Ok((&body[pos + 1..], out)),
            Some(b'\\') => {
                let Some(&c) = body.get(pos + 1) else {
                    return fail(&body[pos..], ErrorKind::Escaped);
                };
                out.push(match c {
                    b't' => b'\t',
                    b'n' => b'\n',
                    b'r' => b'\r',
                    c if (0x21..=0x7e).contains(&c) || is_wsp(c) => c,
                    _ => return fail(&body[pos..], ErrorKind::Escaped),
                });
                pos += 2;
            }
            // HTAB is WSP, allowed literally
            Some(b'\t') => {
                out.push(b'\t');
                pos += 1;
            }
            _ => return fail(&body[pos..], ErrorKind::Char),
        }
    }
}

/// The length of the field at the start of `i`: up to the next WSP, CR or LF.
fn field_len(i: &[u8]) -> usize {
    let end = memchr::memchr3(b' ', b'\r', b'\n', i).unwrap_or(i.len());
    memchr::memchr(b'\t', &i[..end]).unwrap_or(end)
}

/// `HexString = 1*(HEXDIG HEXDIG)`; digits of either case. The whole field (up to WSP, CR or
/// LF) must be hex digits, an even number of them; results of up to 64 KiB come as hex, so
/// this is the hot loop of a host reading results, decoded with SIMD.
pub(crate) fn hex_string(i: &[u8]) -> IResult<&[u8], Vec<u8>> {
    // A value is the last field of every message that has one, so first try the whole rest
    // of the line: one SIMD pass instead of a scan for the delimiter and then a decode.
    let line = i
        .strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    if let Some(digits) = line.filter(|d| !d.is_empty() && d.len().is_multiple_of(2)) {
        let mut out = vec![0u8; digits.len() / 2];
        if faster_hex::hex_decode(digits, &mut out).is_ok() {
            return Ok((&i[digits.len()..], out));
        }
    }
    let len = field_len(i);
    let digits = &i[..len];
    if digits.is_empty() || !len.is_multiple_of(2) {
        return fail(i, ErrorKind::HexDigit);
    }
    let mut out = vec![0u8; len / 2];
    match faster_hex::hex_decode(digits, &mut out) {
        Ok(_) => Ok((&i[len..], out)),
        Err(_) => fail(i, ErrorKind::HexDigit),
    }
}

/// Branch-free checks on eight octets in a `u64` ("SIMD within a register").
mod swar {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;

    /// The high bit of each octet that lies in `lo..=hi`. Every octet must be below 0x80, so
    /// that no addition carries into the next octet.
    fn in_range(x: u64, lo: u8, hi: u8) -> u64 {
        let ge_lo = x.wrapping_add(ONES * u64::from(0x80 - lo));
        let gt_hi = x.wrapping_add(ONES * u64::from(0x7f - hi));
        ge_lo & !gt_hi & HIGH
    }

    /// The high bit of each octet that is zero.
    fn zero_octets(x: u64) -> u64 {
        !((((x & !HIGH) + !HIGH) | x) & HIGH) & HIGH
    }

    /// The high bit of each octet that is not a plain `QuotedString` character: not SP or
    /// VCHAR, or `"`, or `\`.
    fn special(x: u64) -> u64 {
        let printable = in_range(x & !HIGH, 0x20, 0x7e) & !x;
        (!printable & HIGH)
            | zero_octets(x ^ (ONES * u64::from(b'"')))
            | zero_octets(x ^ (ONES * u64::from(b'\\')))
    }

    /// The length of the leading run of SP and VCHAR other than `"` and `\`.
    pub(super) fn plain_run(s: &[u8]) -> usize {
        let mut chunks = s.chunks_exact(8);
        let mut pos = 0;
        for chunk in &mut chunks {
            let m = special(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
            if m != 0 {
                return pos + (m.trailing_zeros() / 8) as usize;
            }
            pos += 8;
        }
        let plain = |&b: &u8| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\';
        pos + chunks.remainder().iter().take_while(|b| plain(b)).count()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn plain_run_matches_scalar_for_every_octet_in_every_position() {
            for pos in 0..8 {
                for b in 0..=255u8 {
                    let mut chunk = *b"0aF93cDe";
                    chunk[pos] = b;
                    let plain = chunk
                        .iter()
                        .take_while(|&&c| (0x20..=0x7e).contains(&c) && c != b'"' && c != b'\\')
                        .count();
                    assert_eq!(plain_run(&chunk), plain, "{chunk:?}");
                    // and in the scalar tail
                    assert_eq!(plain_run(&chunk[..7]), plain.min(7), "{chunk:?}");
                }
            }
        }
    }
}

/// `HexString / QuotedString`, the form of `Argument`, `Result` and `ErrorMsg`.
pub(crate) fn value(i: &[u8]) -> IResult<&[u8], Octets> {
    if i.first() == Some(&b'"') {
        quoted_string(i).map(|(r, v)| (r, Octets::new(v)))
    } else {
        hex_string(i).map(|(r, v)| (r, Octets::new(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_escapes() {
        assert_eq!(
            quoted_string(br#""a\tb\nc\rd\"e\\f""#).unwrap().1,
            b"a\tb\nc\rd\"e\\f"
        );
        // Unknown escapes drop the backslash (section 5.1).
        assert_eq!(quoted_string(br#""\a\q\ ""#).unwrap().1, b"aq ");
        // A literal tab is WSP and allowed unescaped.
        assert_eq!(quoted_string(b"\"a\tb\"").unwrap().1, b"a\tb");
        assert!(quoted_string(b"\"a\x01\"").is_err());
        assert!(quoted_string(b"\"a\x7f\"").is_err());
        assert!(quoted_string(b"\"abc").is_err());
        assert!(quoted_string(b"\"abc\\").is_err());
        assert!(quoted_string(b"\"abc\\\"").is_err());
        assert!(quoted_string(b"abc\"").is_err());
        assert!(quoted_string(b"\"\\\x01\"").is_err());
    }

    #[test]
    fn hex_matches_scalar_for_every_octet_in_every_position() {
        // Every octet in every position of a 32-digit field, as the last field (the SIMD
        // fast path) and followed by another field (the delimiter scan).
        for pos in 0..32 {
            for b in 0..=255u8 {
                let mut digits = *b"0123456789abcdefABCDEF0011223344";
                digits[pos] = b;
                let want = hex::decode(digits).ok();
                for tail in [&b"\r\n"[..], b"\n", b" x\r\n"] {
                    let line = [&digits[..], tail].concat();
                    let got = hex_string(&line).ok();
                    let expect = match (&want, b) {
                        // A delimiter ends the field early: the prefix is a shorter field.
                        (_, b' ' | b'\t' | b'\r' | b'\n') => {
                            hex::decode(&digits[..pos]).ok().filter(|v| !v.is_empty())
                        }
                        (w, _) => w.clone(),
                    };
                    assert_eq!(
                        got.map(|(_, v)| v),
                        expect,
                        "{:?}",
                        String::from_utf8_lossy(&line)
                    );
                }
            }
        }
    }

    #[test]
    fn hex_needs_pairs() {
        assert_eq!(hex_string(b"0aF0").unwrap().1, vec![0x0a, 0xf0]);
        assert!(hex_string(b"").is_err());
        assert!(hex_string(b"abc").is_err());
        assert!(hex_string(b"zz").is_err());
    }
}
