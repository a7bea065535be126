//! Byte-order-aware cursors over one PDU: the only code that touches raw octets.
//!
//! The [`Reader`] never reads past the end its header's `h.payload_length` gives, and checks
//! every length against the octets actually there before it allocates anything, so the
//! largest allocation decoding makes is bounded by the input's own size.

use super::error::{EncodeError, Malformed};
use super::header::ByteOrder;

pub(crate) type Step<T> = Result<T, Malformed>;

pub(crate) struct Reader<'a> {
    /// The whole PDU, so offsets in errors count from its first octet.
    pdu: &'a [u8],
    pos: usize,
    order: ByteOrder,
}

impl<'a> Reader<'a> {
    /// A reader over `pdu[start..]`; the caller has cut `pdu` at the payload's end.
    pub fn new(pdu: &'a [u8], start: usize, order: ByteOrder) -> Self {
        Reader {
            pdu,
            pos: start.min(pdu.len()),
            order,
        }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn order(&self) -> ByteOrder {
        self.order
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.pdu.len()
    }

    pub fn fail_at(at: usize, expected: &'static str) -> Malformed {
        Malformed { at, expected }
    }

    /// The next `n` octets, or an error at the current offset naming `expected`.
    pub fn take(&mut self, n: usize, expected: &'static str) -> Step<&'a [u8]> {
        let rest = &self.pdu[self.pos..];
        if n > rest.len() {
            return Err(Self::fail_at(self.pos, expected));
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn array<const N: usize>(&mut self, expected: &'static str) -> Step<[u8; N]> {
        let rest = &self.pdu[self.pos..];
        let Some(a) = rest.first_chunk::<N>() else {
            return Err(Self::fail_at(self.pos, expected));
        };
        self.pos += N;
        Ok(*a)
    }

    /// Four octets taken as they are (a field of single-octet values).
    pub fn quad(&mut self, expected: &'static str) -> Step<[u8; 4]> {
        self.array(expected)
    }

    /// Two 16-bit values sharing one 4-octet word, first the one transmitted first.
    pub fn u16_pair(&mut self, expected: &'static str) -> Step<(u16, u16)> {
        let [a, b, c, d] = self.array(expected)?;
        Ok(match self.order {
            ByteOrder::BigEndian => (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])),
            ByteOrder::LittleEndian => (u16::from_le_bytes([a, b]), u16::from_le_bytes([c, d])),
        })
    }

    pub fn u32(&mut self, expected: &'static str) -> Step<u32> {
        let b = self.array(expected)?;
        Ok(self.order.u32(b))
    }

    pub fn u64(&mut self, expected: &'static str) -> Step<u64> {
        let b = self.array(expected)?;
        Ok(match self.order {
            ByteOrder::BigEndian => u64::from_be_bytes(b),
            ByteOrder::LittleEndian => u64::from_le_bytes(b),
        })
    }

    /// An Octet String (section 5.3): a 4-octet length, the octets, zero to three octets of
    /// padding to the next 4-octet boundary. Padding must be present; its value is ignored.
    pub fn octet_string(&mut self, expected: &'static str) -> Step<Vec<u8>> {
        let at = self.pos;
        let len = self.u32(expected)?;
        let len = usize::try_from(len).map_err(|_| Self::fail_at(at, expected))?;
        let padded = len
            .checked_next_multiple_of(4)
            .ok_or(Self::fail_at(at, expected))?;
        let rest = &self.pdu[self.pos..];
        if padded > rest.len() {
            return Err(Self::fail_at(at, expected));
        }
        self.pos += padded;
        Ok(rest[..len].to_vec())
    }

    /// Fails unless the whole payload was consumed.
    pub fn finish(&self) -> Step<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(Self::fail_at(self.pos, "end of payload"))
        }
    }
}

pub(crate) struct Writer {
    buf: Vec<u8>,
    order: ByteOrder,
}

impl Writer {
    pub fn new(order: ByteOrder) -> Self {
        Writer {
            buf: Vec::with_capacity(64),
            order,
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    pub fn u16_pair(&mut self, a: u16, b: u16) {
        match self.order {
            ByteOrder::BigEndian => {
                self.bytes(&a.to_be_bytes());
                self.bytes(&b.to_be_bytes());
            }
            ByteOrder::LittleEndian => {
                self.bytes(&a.to_le_bytes());
                self.bytes(&b.to_le_bytes());
            }
        }
    }

    pub fn u32(&mut self, v: u32) {
        match self.order {
            ByteOrder::BigEndian => self.bytes(&v.to_be_bytes()),
            ByteOrder::LittleEndian => self.bytes(&v.to_le_bytes()),
        }
    }

    pub fn u64(&mut self, v: u64) {
        match self.order {
            ByteOrder::BigEndian => self.bytes(&v.to_be_bytes()),
            ByteOrder::LittleEndian => self.bytes(&v.to_le_bytes()),
        }
    }

    /// Writes `v` at `at`, over four octets written before.
    pub fn patch_u32(&mut self, at: usize, v: u32) {
        let b = match self.order {
            ByteOrder::BigEndian => v.to_be_bytes(),
            ByteOrder::LittleEndian => v.to_le_bytes(),
        };
        if let Some(dst) = self.buf.get_mut(at..at + 4) {
            dst.copy_from_slice(&b);
        }
    }

    /// An Octet String with zero padding (section 5.3), even as the last item of a PDU.
    pub fn octet_string(&mut self, s: &[u8]) -> Result<(), EncodeError> {
        let len =
            u32::try_from(s.len()).map_err(|_| EncodeError::PayloadTooLong { octets: s.len() })?;
        self.u32(len);
        self.bytes(s);
        let pad = (4 - s.len() % 4) % 4;
        self.bytes(&[0; 3][..pad]);
        Ok(())
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}
