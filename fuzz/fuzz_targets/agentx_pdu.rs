//! `Pdu::decode` (RFC 2741 sections 5 and 6) on arbitrary bytes: it must not panic, errors
//! must point inside the input (payload errors only under a whole, aligned header), and
//! whatever decodes must re-encode to a PDU that decodes to the same value and re-encodes
//! to the same bytes. The first octet picks the byte order of a second encoding, which
//! must decode to the same PDU but for that order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smx::agentx::{ByteOrder, DecodeError, Pdu};

fuzz_target!(|data: &[u8]| {
    let [order, input @ ..] = data else {
        return;
    };
    match Pdu::decode(input) {
        Ok(pdu) => {
            let wire = pdu.to_bytes().expect("a decoded PDU re-encodes");
            assert_eq!(wire.len() % 4, 0);
            let again = Pdu::decode(&wire).expect("a re-encoded PDU decodes");
            assert_eq!(again, pdu);
            assert_eq!(again.to_bytes().unwrap(), wire);

            let mut other = pdu.clone();
            other.byte_order = if order & 1 == 0 {
                ByteOrder::BigEndian
            } else {
                ByteOrder::LittleEndian
            };
            let flipped = Pdu::decode(&other.to_bytes().unwrap()).expect("either order decodes");
            assert_eq!(flipped, other);
        }
        Err(DecodeError::Header(m)) => assert!(m.at <= input.len()),
        Err(DecodeError::Payload { header, why }) => {
            assert!(input.len() >= 20 && why.at <= input.len());
            assert_eq!(header.payload_length % 4, 0);
        }
    }
});
