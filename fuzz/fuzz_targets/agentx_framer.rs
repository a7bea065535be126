//! The AgentX `Framer` on an arbitrary byte stream in arbitrary chunks: it must not panic,
//! must keep the buffer below one header plus the cap plus one chunk, must cut exactly like
//! the obvious model (header, then `h.payload_length` octets; a misaligned or over-cap
//! length is reported and its payload skipped; a partial PDU at the end is `Truncated`),
//! and every PDU it hands out is fed to the decoder.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use smx::agentx::{FrameError, Framer, Pdu};

fn model(input: &[u8], max: u32) -> Vec<Result<Vec<u8>, FrameError>> {
    let mut out = Vec::new();
    let mut rest = input;
    loop {
        if rest.len() < 20 {
            if !rest.is_empty() {
                out.push(Err(FrameError::Truncated {
                    buffered: rest.len(),
                }));
            }
            return out;
        }
        let l = [rest[16], rest[17], rest[18], rest[19]];
        let len = if rest[2] & 0x10 != 0 {
            u32::from_be_bytes(l)
        } else {
            u32::from_le_bytes(l)
        };
        let total = 20 + len as usize;
        if len % 4 != 0 || len > max {
            out.push(Err(if len % 4 != 0 {
                FrameError::Misaligned {
                    payload_length: len,
                }
            } else {
                FrameError::TooLong {
                    payload_length: len,
                    max,
                }
            }));
            if total >= rest.len() {
                return out;
            }
            rest = &rest[total..];
            continue;
        }
        if rest.len() < total {
            out.push(Err(FrameError::Truncated {
                buffered: rest.len(),
            }));
            return out;
        }
        out.push(Ok(rest[..total].to_vec()));
        rest = &rest[total..];
    }
}

fuzz_target!(|data: &[u8]| {
    let [max, c1, c2, input @ ..] = data else {
        return;
    };
    let max = u32::from(*max) * 4 + u32::from(*max & 1);
    let sizes = [usize::from(*c1 % 64) + 1, usize::from(*c2) + 1];

    let mut framer = Framer::new(max);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut rest = input;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match framer.next_frame(&mut buf) {
                Ok(Some(f)) => got.push(Ok(f.to_vec())),
                Ok(None) => break,
                Err(e) => got.push(Err(e)),
            }
        }
        assert!(buf.len() < 20 + max as usize + n);
    }
    if let Err(e) = framer.finish(&mut buf) {
        got.push(Err(e));
    }
    assert!(buf.is_empty());
    assert_eq!(got, model(input, max));

    for frame in got.iter().flatten() {
        let _ = Pdu::decode(frame);
    }
});
