//! Object Identifiers (RFC 2741 section 5.1) and SearchRanges (section 5.2).
//!
//! An [`Oid`] is always held in full; the `prefix` compression of the encoding ("internet.x"
//! for 1.3.6.1.x) is applied by the encoder and undone by the decoder, so callers never see
//! it and two encodings of one OID decode to equal values.

use std::fmt;
use std::str::FromStr;

use super::error::Malformed;
use super::wire::{Reader, Step, Writer};

/// The most sub-identifiers an OID may have: SMIv2's limit (RFC 2578 section 3.5) and the
/// range RFC 2741 section 5.1 gives `n_subid`.
pub const MAX_SUBIDS: usize = 128;

/// 1.3.6.1 ("internet"), the implicit start of a prefixed OID.
const INTERNET: [u32; 4] = [1, 3, 6, 1];

/// An OBJECT IDENTIFIER of at most [`MAX_SUBIDS`] sub-identifiers; the empty one is the
/// "null" OID of section 5.1 (an unbounded SearchRange end, an anonymous Open id).
///
/// Ordered lexicographically by sub-identifier, which is SNMP's order for GetNext.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Oid(Vec<u32>);

/// An OID longer than [`MAX_SUBIDS`], or text that is not a dotted OID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidError {
    #[error("OID of {0} sub-identifiers; AgentX and SMIv2 allow at most 128")]
    TooLong(usize),
    #[error("not a dotted OBJECT IDENTIFIER such as 1.3.6.1.2.1.64")]
    Syntax,
}

impl Oid {
    pub fn new(subids: impl Into<Vec<u32>>) -> Result<Oid, OidError> {
        let v = subids.into();
        if v.len() > MAX_SUBIDS {
            return Err(OidError::TooLong(v.len()));
        }
        Ok(Oid(v))
    }

    /// The null OID.
    pub fn null() -> Oid {
        Oid(Vec::new())
    }

    pub fn subids(&self) -> &[u32] {
        &self.0
    }

    pub fn is_null(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `self` lies in the subtree named by `prefix` (or equals it).
    pub fn starts_with(&self, prefix: &Oid) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// Decodes one Object Identifier and returns it with its `include` octet.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Step<(Oid, u8)> {
        let at = r.pos();
        let [n_subid, prefix, include, _reserved] = r.quad("an Object Identifier header")?;
        if usize::from(n_subid) > MAX_SUBIDS {
            return Err(Malformed {
                at,
                expected: "n_subid 0-128",
            });
        }
        let implicit = if prefix == 0 { 0 } else { INTERNET.len() + 1 };
        let total = usize::from(n_subid) + implicit;
        if total > MAX_SUBIDS {
            return Err(Malformed {
                at,
                expected: "an OID of at most 128 sub-identifiers with its prefix",
            });
        }
        let raw = r.take(4 * usize::from(n_subid), "n_subid sub-identifiers")?;
        let mut v = Vec::with_capacity(total);
        if prefix != 0 {
            v.extend_from_slice(&INTERNET);
            v.push(u32::from(prefix));
        }
        let order = r.order();
        v.extend(
            raw.chunks_exact(4)
                .map(|c| order.u32([c[0], c[1], c[2], c[3]])),
        );
        Ok((Oid(v), include))
    }

    /// Encodes the OID, with `prefix` whenever it is 1.3.6.1.x.y... with x in 1-255.
    pub(crate) fn encode(&self, w: &mut Writer, include: bool) {
        let compressed = match self.0.split_at_checked(INTERNET.len()) {
            Some((head, [x, rest @ ..])) if head == INTERNET && !rest.is_empty() => {
                u8::try_from(*x).ok().filter(|&p| p != 0).map(|p| (p, rest))
            }
            _ => None,
        };
        let (prefix, rest) = compressed.unwrap_or((0, &self.0[..]));
        // Fits: MAX_SUBIDS is 128, checked by every constructor.
        let n_subid = u8::try_from(rest.len()).unwrap_or(u8::MAX);
        w.bytes(&[n_subid, prefix, u8::from(include), 0]);
        for &s in rest {
            w.u32(s);
        }
    }
}

impl TryFrom<&[u32]> for Oid {
    type Error = OidError;
    fn try_from(s: &[u32]) -> Result<Oid, OidError> {
        Oid::new(s)
    }
}

impl FromStr for Oid {
    type Err = OidError;
    /// Dotted decimal, with or without a leading dot; "" is the null OID.
    fn from_str(s: &str) -> Result<Oid, OidError> {
        let s = s.strip_prefix('.').unwrap_or(s);
        if s.is_empty() {
            return Ok(Oid::null());
        }
        let v = s
            .split('.')
            .map(|p| {
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    p.parse::<u32>().map_err(|_| OidError::Syntax)
                } else {
                    Err(OidError::Syntax)
                }
            })
            .collect::<Result<Vec<u32>, _>>()?;
        Oid::new(v)
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Oid({self})")
    }
}

/// A SearchRange (section 5.2): the names a Get, GetNext or GetBulk asks about.
///
/// `start` is included in the range when `include` is set; `end` is never included, and
/// the null OID as `end` means "no upper bound".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchRange {
    pub start: Oid,
    pub end: Oid,
    pub include: bool,
}

impl SearchRange {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Step<SearchRange> {
        let at = r.pos();
        let (start, include) = Oid::decode(r)?;
        let include = match include {
            0 => false,
            1 => true,
            _ => {
                return Err(Malformed {
                    at: at + 2,
                    expected: "include 0 or 1",
                });
            }
        };
        // The end's include octet "is always 0"; like reserved octets it is not checked.
        let (end, _) = Oid::decode(r)?;
        Ok(SearchRange {
            start,
            end,
            include,
        })
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        self.start.encode(w, self.include);
        self.end.encode(w, false);
    }

    /// A SearchRangeList: SearchRanges up to the end of the payload.
    pub(crate) fn decode_list(r: &mut Reader<'_>) -> Step<Vec<SearchRange>> {
        let mut v = Vec::new();
        while !r.is_empty() {
            v.push(SearchRange::decode(r)?);
        }
        Ok(v)
    }
}
