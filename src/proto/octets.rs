//! Octet strings as SMX carries them: `QuotedString` and `HexString` (RFC 3179 section 5.1).
//!
//! The Script MIB treats arguments, results and error messages as arbitrary octet strings.
//! SMX has two wire forms for them. [`Octets`] keeps the raw bytes and knows both forms, so
//! the form is a property of the encoding, never of the value: `decode(encode(v)) == v`.

use std::fmt;

/// An arbitrary octet string (smRunArgument, smRunResult, an `ErrorMsg`, a 511 text).
///
/// The encoder picks the form: a `QuotedString` when every octet is printable, a tab, a
/// newline or a carriage return (those three are escaped), otherwise a `HexString`. An empty
/// value is always `""` because a `HexString` needs at least one octet.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Octets(Vec<u8>);

impl Octets {
    /// Wraps raw bytes; every byte sequence is a valid octet string.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Octets(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes as UTF-8 text, if they are valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// Keeps at most `max` octets; returns whether anything was cut.
    pub fn truncate(&mut self, max: usize) -> bool {
        let cut = self.0.len() > max;
        self.0.truncate(max);
        cut
    }

    /// True if the value can be written as a `QuotedString` (with escapes).
    pub fn is_quotable(&self) -> bool {
        self.0.iter().all(|&b| quotable(b))
    }

    /// Appends the preferred wire form (`QuotedString` if possible, else `HexString`).
    pub fn encode(&self, out: &mut Vec<u8>) {
        if self.is_quotable() {
            encode_quoted(&self.0, out);
        } else {
            encode_hex(&self.0, out);
        }
    }
}

impl fmt::Debug for Octets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => write!(f, "{s:?}"),
            None => write!(f, "0x{}", hex::encode(&self.0)),
        }
    }
}

/// Shows text as text and anything else as upper-case hex, the way an operator wants to see it.
impl fmt::Display for Octets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => f.write_str(s),
            None => f.write_str(&hex::encode_upper(&self.0)),
        }
    }
}

impl From<&str> for Octets {
    fn from(s: &str) -> Self {
        Octets(s.as_bytes().to_vec())
    }
}

impl From<String> for Octets {
    fn from(s: String) -> Self {
        Octets(s.into_bytes())
    }
}

impl From<&[u8]> for Octets {
    fn from(b: &[u8]) -> Self {
        Octets(b.to_vec())
    }
}

impl From<Vec<u8>> for Octets {
    fn from(b: Vec<u8>) -> Self {
        Octets(b)
    }
}

/// JSON shape used by `--json` and the control API: a string when the octets are UTF-8,
/// otherwise `{"hex": "..."}`, so no byte is ever lost or mangled.
impl serde::Serialize for Octets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self.as_str() {
            Some(text) => s.serialize_str(text),
            None => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("hex", &hex::encode_upper(&self.0))?;
                m.end()
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Octets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Hex { hex: String },
        }
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(Octets(t.into_bytes())),
            Repr::Hex { hex } => hex::decode(&hex)
                .map(Octets)
                .map_err(|e| serde::de::Error::custom(format!("invalid hex: {e}"))),
        }
    }
}

/// Octets a `QuotedString` can carry: VCHAR and WSP literally, CR and LF as escapes.
pub(crate) fn quotable(b: u8) -> bool {
    matches!(b, 0x20..=0x7e | b'\t' | b'\n' | b'\r')
}

/// Writes `"..."`, escaping `\` `"` TAB LF CR. The caller guarantees every byte is quotable.
pub(crate) fn encode_quoted(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = match b {
            b'\\' => b'\\',
            b'"' => b'"',
            b'\t' => b't',
            b'\n' => b'n',
            b'\r' => b'r',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        out.push(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Writes upper-case hex digits, as the RFC's own examples do. `bytes` must not be empty.
pub(crate) fn encode_hex(bytes: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!bytes.is_empty(), "a HexString has at least one octet");
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
}

/// Octets restricted to what a `QuotedString` can carry: the form of a `Script` file name
/// and of a `511` message (RFC 3179 section 5.1), which have no `HexString` alternative.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Quoted(Octets);

/// A script file name (`Script = QuotedString`).
pub type Script = Quoted;

impl Quoted {
    /// Fails if a byte cannot be carried by a `QuotedString` (for example a non-ASCII byte).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, NotQuotable> {
        let o = Octets::new(bytes);
        match o.0.iter().position(|&b| !quotable(b)) {
            None => Ok(Quoted(o)),
            Some(at) => Err(NotQuotable { at, byte: o.0[at] }),
        }
    }

    /// Accepts any bytes, writing each octet a `QuotedString` cannot carry as the text `\xNN`.
    /// Meant for human-readable `511` messages built from untrusted bytes.
    pub fn lossy(bytes: &[u8]) -> Self {
        let mut v = Vec::with_capacity(bytes.len());
        for &b in bytes {
            if quotable(b) {
                v.push(b);
            } else {
                v.extend_from_slice(format!("\\x{b:02X}").as_bytes());
            }
        }
        Quoted(Octets(v))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn as_str(&self) -> Option<&str> {
        self.0.as_str()
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_quoted(self.0.as_bytes(), out);
    }
}

impl fmt::Debug for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Quoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A byte that no `QuotedString` can carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("octet 0x{byte:02X} at offset {at} cannot be carried by a QuotedString")]
pub struct NotQuotable {
    pub at: usize,
    pub byte: u8,
}

/// The `Authenticator` of a `211` reply: a non-empty `HexString` (RFC 3179 section 5.1).
///
/// Its `Debug` output hides the value: it is a secret and must never reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Authenticator(Vec<u8>);

impl Authenticator {
    /// Fails on an empty value, which a `HexString` cannot express.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Option<Self> {
        let b = bytes.into();
        (!b.is_empty()).then_some(Authenticator(b))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_hex(&self.0, out);
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Authenticator(<{} octets>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(o: &Octets) -> String {
        let mut v = Vec::new();
        o.encode(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn picks_quoted_for_text_and_hex_for_binary() {
        assert_eq!(enc(&"".into()), r#""""#);
        assert_eq!(enc(&"a b".into()), r#""a b""#);
        assert_eq!(enc(&"q\"\\\t\r\n".into()), r#""q\"\\\t\r\n""#);
        assert_eq!(enc(&Octets::new(vec![0u8, 0xff])), "00FF");
        assert_eq!(enc(&Octets::new("é".as_bytes())), "C3A9");
    }

    #[test]
    fn script_rejects_unquotable() {
        assert!(Script::new("/var/x y.tcl").is_ok());
        assert_eq!(Script::new(b"a\x01".to_vec()).unwrap_err().at, 1);
        assert_eq!(Quoted::lossy(b"a\x01").as_bytes(), b"a\\x01");
    }

    #[test]
    fn json_is_text_or_hex() {
        let t = Octets::from("hé");
        let b = Octets::new(vec![0xff, 0]);
        assert_eq!(serde_json::to_string(&t).unwrap(), r#""hé""#);
        assert_eq!(serde_json::to_string(&b).unwrap(), r#"{"hex":"FF00"}"#);
        assert_eq!(
            serde_json::from_str::<Octets>(r#"{"hex":"ff00"}"#).unwrap(),
            b
        );
        assert_eq!(serde_json::from_str::<Octets>(r#""hé""#).unwrap(), t);
    }

    #[test]
    fn authenticator_never_prints_its_value() {
        let a = Authenticator::new(vec![0xAB; 4]).unwrap();
        assert!(!format!("{a:?}").contains("AB"));
        assert!(Authenticator::new(Vec::new()).is_none());
    }
}
