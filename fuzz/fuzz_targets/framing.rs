//! `LineFramer` on an arbitrary byte stream in arbitrary chunks: it must not panic, must keep
//! its buffer bounded, and must cut exactly like the obvious model (every LF-terminated piece
//! and a non-empty unterminated tail is a line, or `Overlong` if longer than the limit).
//! Every line is also fed to both decoders.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use smx::framing::{Frame, LineFramer};
use smx::proto::{Command, Reply};

fuzz_target!(|data: &[u8]| {
    let [max, c1, c2, input @ ..] = data else {
        return;
    };
    let max = usize::from(*max) + 2;
    let chunk_sizes = [usize::from(*c1 % 64) + 1, usize::from(*c2) + 1];

    let mut framer = LineFramer::new(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = input;
    let mut sizes = chunk_sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(f) = framer.next_frame(&mut buf) {
            frames.push(f);
        }
        assert!(buf.len() <= max + n);
    }
    frames.extend(framer.finish(&mut buf));
    assert!(buf.is_empty());

    let model: Vec<Frame> = input
        .split_inclusive(|&b| b == b'\n')
        .map(|piece| {
            if piece.len() > max {
                Frame::Overlong
            } else {
                Frame::Line(Bytes::copy_from_slice(piece))
            }
        })
        .collect();
    assert_eq!(frames, model);

    for f in &frames {
        if let Frame::Line(line) = f {
            let _ = Command::decode(line);
            let _ = Reply::decode(line);
        }
    }
});
