//! `Command::decode` (RFC 3179 sections 5.2 and 6.1) on arbitrary bytes: it must not panic,
//! errors must point inside the input and carry a reply code section 6.1 allows, and whatever
//! decodes must re-encode to one CRLF line that decodes to the same command (and re-encodes
//! to the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use smx::proto::{Command, CommandError};

fuzz_target!(|data: &[u8]| {
    match Command::decode(data) {
        Ok(cmd) => {
            let wire = cmd.to_bytes();
            assert!(wire.ends_with(b"\r\n"));
            assert!(!wire[..wire.len() - 2].contains(&b'\n'));
            assert!(!wire[..wire.len() - 2].contains(&b'\r'));
            let again = Command::decode(&wire).expect("a re-encoded command decodes");
            assert_eq!(again, cmd);
            assert_eq!(again.to_bytes(), wire);
        }
        Err(CommandError::Unrecognized(m)) => assert!(m.at <= data.len()),
        Err(CommandError::UnknownCommand { .. }) => {}
        Err(CommandError::Rejected { code, why, .. }) => {
            assert!(why.at <= data.len());
            assert!(matches!(code.code(), 401 | 421 | 431 | 432 | 433));
        }
    }
});
