//! `Reply::decode` (RFC 3179 section 5.3) on arbitrary bytes: it must not panic, errors must
//! point inside the input, and whatever decodes must re-encode to one CRLF line that decodes
//! to the same reply (and re-encodes to the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smx::proto::Reply;

fuzz_target!(|data: &[u8]| {
    match Reply::decode(data) {
        Ok(reply) => {
            let wire = reply.to_bytes();
            assert!(wire.ends_with(b"\r\n"));
            assert!(!wire[..wire.len() - 2].contains(&b'\n'));
            assert!(!wire[..wire.len() - 2].contains(&b'\r'));
            assert_eq!(&wire[..3], reply.code().to_string().as_bytes());
            let again = Reply::decode(&wire).expect("a re-encoded reply decodes");
            assert_eq!(again, reply);
            assert_eq!(again.to_bytes(), wire);
        }
        Err(m) => assert!(m.at <= data.len()),
    }
});
