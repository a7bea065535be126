//! Token parsers shared by the command and reply grammars (nom 8, complete input).
//!
//! Every parser works on one whole message and never returns `Incomplete`: framing has
//! already cut the line, so running out of input is a syntax error like any other.

use nom::bytes::complete::{take_till, take_while1};
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

    /// `WSP` followed by a `QuotedString`.
    pub fn quoted_field(&mut self, expected: &'static str) -> Step<Vec<u8>> {
        let at = self.offset();
        self.wsp().map_err(|_| Malformed { at, expected })?;
        self.run(expected, quoted_string)
    }

    /// `WSP` followed by `HexString / QuotedString`.
    pub fn value_field(&mut self, expected: &'static str) -> Step<Octets> {
        let at = self.offset();
        self.wsp().map_err(|_| Malformed { at, expected })?;
        self.run(expected, value)
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
    let mut out = Vec::with_capacity(body.len().min(64));
    let mut pos = 0;
    loop {
        // Copy the run of plain characters up to the next quote or backslash in one go.
        let run = memchr::memchr2(b'"', b'\\', &body[pos..]).unwrap_or(body.len() - pos);
        let plain = &body[pos..pos + run];
        if let Some(bad) = plain
            .iter()
            .position(|&b| !(0x21..=0x7e).contains(&b) && !is_wsp(b))
        {
            return fail(&body[pos + bad..], ErrorKind::Char);
        }
        out.extend_from_slice(plain);
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
            _ => return fail(&body[pos..], ErrorKind::Char),
        }
    }
}

/// `HexString = 1*(HEXDIG HEXDIG)`; digits of either case.
pub(crate) fn hex_string(i: &[u8]) -> IResult<&[u8], Vec<u8>> {
    let (rest, digits) = take_while1(|b: u8| b.is_ascii_hexdigit()).parse(i)?;
    if digits.len() % 2 != 0 {
        return fail(i, ErrorKind::HexDigit);
    }
    let mut out = vec![0u8; digits.len() / 2];
    match hex::decode_to_slice(digits, &mut out) {
        Ok(()) => Ok((rest, out)),
        Err(_) => fail(i, ErrorKind::HexDigit),
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
    fn hex_needs_pairs() {
        assert_eq!(hex_string(b"0aF0").unwrap().1, vec![0x0a, 0xf0]);
        assert!(hex_string(b"").is_err());
        assert!(hex_string(b"abc").is_err());
        assert!(hex_string(b"zz").is_err());
    }
}
