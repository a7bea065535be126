//! Property tests for the SMX/1.1 codec (RFC 3179 sections 5.1-5.3) and the line framer.
//!
//! - `decode(encode(m)) == m` for arbitrary commands and replies (every variant, every field,
//!   binary octets, u64 extremes, every enum value);
//! - an independent, deliberately lenient encoder (tabs, upper-case words, leading zeros,
//!   bare LF, hex of either case, optional escapes) produces lines that decode to the same
//!   value, so the decoder is not only checked against its own encoder;
//! - encoded lines are single well-formed lines (one LF, at the end, after a CR);
//! - arbitrary bytes never make `Command::decode`, `Reply::decode` or the framer panic, and
//!   whatever decodes re-encodes to something that decodes to the same value;
//! - the framer cuts any byte stream, in any chunking, exactly like a simple model.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::select;
use smx::framing::{Frame, LineFramer};
use smx::proto::{
    Authenticator, Command, CommandError, ExitCode, Id, Negative, Octets, Profile, Quoted, Reply,
    RunId, RunState, Version,
};

// ---------------------------------------------------------------------------------------------
// strategies

/// u64 values with the extremes and small numbers over-represented.
fn u64_any() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => any::<u64>(),
        2 => 0u64..1000,
        1 => select(vec![0, 1, 9, 10, u64::MAX - 1, u64::MAX, u64::from(u32::MAX) + 1]),
    ]
}

fn id() -> impl Strategy<Value = Id> {
    u64_any().prop_map(Id)
}

fn run_id() -> impl Strategy<Value = RunId> {
    u64_any().prop_map(RunId)
}

fn run_state() -> impl Strategy<Value = RunState> {
    select(RunState::ALL.to_vec())
}

fn exit_code() -> impl Strategy<Value = ExitCode> {
    select(ExitCode::ALL.to_vec())
}

fn negative() -> impl Strategy<Value = Negative> {
    select(Negative::ALL.to_vec())
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![
        3 => Just(Version::V1_1),
        1 => (any::<u32>(), any::<u32>()).prop_map(|(major, minor)| Version { major, minor }),
    ]
}

/// Octets a QuotedString can carry, with the ones that need escaping over-represented.
fn quotable_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => 0x20u8..=0x7e,
        1 => select(vec![b'\\', b'"', b'\t', b'\n', b'\r', b' ']),
    ]
}

fn quoted() -> impl Strategy<Value = Quoted> {
    prop::collection::vec(quotable_byte(), 0..48)
        .prop_map(|v| Quoted::new(v).expect("only quotable octets"))
}

fn profile() -> impl Strategy<Value = Profile> {
    "[A-Za-z0-9./:_-]{1,24}".prop_map(|s| s.parse().expect("only ProfileChars"))
}

/// Arbitrary octet strings: empty, text (quoted form), binary (hex form), and some large.
fn octets() -> impl Strategy<Value = Octets> {
    prop_oneof![
        1 => Just(Octets::default()),
        3 => prop::collection::vec(quotable_byte(), 1..64).prop_map(Octets::new),
        3 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Octets::new),
        1 => prop::collection::vec(any::<u8>(), 0..4096).prop_map(Octets::new),
        1 => prop::collection::vec(quotable_byte(), 0..4096).prop_map(Octets::new),
    ]
}

fn authenticator() -> impl Strategy<Value = Authenticator> {
    prop::collection::vec(any::<u8>(), 1..40)
        .prop_map(|v| Authenticator::new(v).expect("not empty"))
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        id().prop_map(|id| Command::Hello { id }),
        (id(), run_id(), quoted(), profile(), octets()).prop_map(
            |(id, run, script, profile, argument)| Command::Start {
                id,
                run,
                script,
                profile,
                argument,
            }
        ),
        (id(), run_id()).prop_map(|(id, run)| Command::Suspend { id, run }),
        (id(), run_id()).prop_map(|(id, run)| Command::Resume { id, run }),
        (id(), run_id()).prop_map(|(id, run)| Command::Abort { id, run }),
        (id(), run_id()).prop_map(|(id, run)| Command::Status { id, run }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (id(), version(), prop::option::of(authenticator()))
            .prop_map(|(id, version, auth)| Reply::Hello { id, version, auth }),
        (id(), run_state()).prop_map(|(id, state)| Reply::Status { id, state }),
        id().prop_map(|id| Reply::Aborted { id }),
        (id(), negative()).prop_map(|(id, code)| Reply::Negative { id, code }),
        quoted().prop_map(|text| Reply::Message { text }),
        (run_id(), run_state()).prop_map(|(run, state)| Reply::StateChange { run, state }),
        (run_id(), run_state(), octets()).prop_map(|(run, state, result)| Reply::Result {
            run,
            state,
            result
        }),
        (run_id(), run_state(), octets()).prop_map(|(run, state, result)| Reply::ResultEvent {
            run,
            state,
            result
        }),
        (run_id(), octets()).prop_map(|(run, result)| Reply::Completed { run, result }),
        (run_id(), exit_code(), octets()).prop_map(|(run, exit, error)| Reply::Failed {
            run,
            exit,
            error
        }),
        (run_id(), run_state(), octets()).prop_map(|(run, state, error)| Reply::Error {
            run,
            state,
            error
        }),
        (run_id(), run_state(), octets()).prop_map(|(run, state, error)| Reply::ErrorEvent {
            run,
            state,
            error
        }),
        (run_id(), exit_code()).prop_map(|(run, exit)| Reply::Terminated { run, exit }),
    ]
}

// ---------------------------------------------------------------------------------------------
// an independent lenient encoder (the decoder must accept every choice it makes)

/// Random choices for one lenient line, drawn once per case and consumed in order.
#[derive(Debug, Clone)]
struct Style {
    bits: Vec<u8>,
    pos: usize,
}

impl Style {
    fn next(&mut self) -> u8 {
        let b = self.bits[self.pos % self.bits.len()];
        self.pos += 1;
        b
    }

    fn flip(&mut self) -> bool {
        self.next() & 1 == 1
    }

    /// SP or HTAB (RFC 3179 section 5: WSP).
    fn wsp(&mut self, out: &mut Vec<u8>) {
        out.push(if self.flip() { b'\t' } else { b' ' });
    }

    /// A literal word in random letter case (RFC 2234 section 2.3).
    fn word(&mut self, w: &str, out: &mut Vec<u8>) {
        for c in w.bytes() {
            out.push(if self.flip() {
                c.to_ascii_uppercase()
            } else {
                c
            });
        }
    }

    /// `1*DIGIT` with 0-3 leading zeros.
    fn digits(&mut self, n: u64, out: &mut Vec<u8>) {
        for _ in 0..self.next() % 4 {
            out.push(b'0');
        }
        out.extend_from_slice(n.to_string().as_bytes());
    }

    /// Hex digits in random case.
    fn hex(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        for &b in bytes {
            for nib in [b >> 4, b & 15] {
                let c = b"0123456789abcdef"[usize::from(nib)];
                out.push(if self.flip() {
                    c.to_ascii_uppercase()
                } else {
                    c
                });
            }
        }
    }

    /// A QuotedString that decodes to `bytes` (all quotable), using a literal HTAB or `\t`,
    /// and the "unknown escape" rule of section 5.1 for some plain characters.
    fn quoted(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        out.push(b'"');
        for &b in bytes {
            match b {
                b'\\' | b'"' => out.extend_from_slice(&[b'\\', b]),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' if self.flip() => out.push(b'\t'),
                b'\t' => out.extend_from_slice(b"\\t"),
                // `\x` for any x other than t, n, r stands for x
                b if !matches!(b, b't' | b'n' | b'r') && self.next().is_multiple_of(4) => {
                    out.extend_from_slice(&[b'\\', b]);
                }
                b => out.push(b),
            }
        }
        out.push(b'"');
    }

    /// `HexString / QuotedString`: hex whenever possible and chosen, quoted when possible.
    fn value(&mut self, v: &Octets, out: &mut Vec<u8>) {
        if !v.is_empty() && (!v.is_quotable() || self.flip()) {
            self.hex(v.as_bytes(), out);
        } else {
            self.quoted(v.as_bytes(), out);
        }
    }

    /// CRLF or a bare LF.
    fn end(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(if self.flip() { b"\r\n" } else { b"\n" });
    }
}

fn style() -> impl Strategy<Value = Style> {
    prop::collection::vec(any::<u8>(), 1..64).prop_map(|bits| Style { bits, pos: 0 })
}

fn lenient_command(c: &Command, s: &mut Style) -> Vec<u8> {
    let mut out = Vec::new();
    s.word(c.word(), &mut out);
    s.wsp(&mut out);
    s.digits(c.id().get(), &mut out);
    if let Some(run) = c.run() {
        s.wsp(&mut out);
        s.digits(run.get(), &mut out);
    }
    if let Command::Start {
        script,
        profile,
        argument,
        ..
    } = c
    {
        s.wsp(&mut out);
        s.quoted(script.as_bytes(), &mut out);
        s.wsp(&mut out);
        out.extend_from_slice(profile.as_str().as_bytes());
        s.wsp(&mut out);
        s.value(argument, &mut out);
    }
    s.end(&mut out);
    out
}

fn lenient_reply(r: &Reply, s: &mut Style) -> Vec<u8> {
    let mut out = format!("{}", r.code()).into_bytes();
    s.wsp(&mut out);
    match r.id() {
        Some(id) => s.digits(id.get(), &mut out),
        None => out.push(b'0'), // Zero is exactly one "0"
    }
    if let Some(run) = r.run() {
        s.wsp(&mut out);
        s.digits(run.get(), &mut out);
    }
    // a RunState or ExitCode digit after its WSP
    fn digit(s: &mut Style, out: &mut Vec<u8>, d: u8) {
        s.wsp(out);
        out.push(b'0' + d);
    }
    match r {
        Reply::Hello { version, auth, .. } => {
            s.wsp(&mut out);
            s.word("SMX", &mut out);
            out.extend_from_slice(format!("/{}.{}", version.major, version.minor).as_bytes());
            if let Some(a) = auth {
                s.wsp(&mut out);
                s.hex(a.as_bytes(), &mut out);
            }
        }
        Reply::Status { state, .. } | Reply::StateChange { state, .. } => {
            digit(s, &mut out, state.number());
        }
        Reply::Aborted { .. } | Reply::Negative { .. } => {}
        Reply::Message { text } => {
            s.wsp(&mut out);
            s.quoted(text.as_bytes(), &mut out);
        }
        Reply::Result {
            state, result: v, ..
        }
        | Reply::ResultEvent {
            state, result: v, ..
        }
        | Reply::Error {
            state, error: v, ..
        }
        | Reply::ErrorEvent {
            state, error: v, ..
        } => {
            digit(s, &mut out, state.number());
            s.wsp(&mut out);
            s.value(v, &mut out);
        }
        Reply::Completed { result, .. } => {
            s.wsp(&mut out);
            s.value(result, &mut out);
        }
        Reply::Failed { exit, error, .. } => {
            digit(s, &mut out, exit.number());
            s.wsp(&mut out);
            s.value(error, &mut out);
        }
        Reply::Terminated { exit, .. } => digit(s, &mut out, exit.number()),
    }
    s.end(&mut out);
    out
}

/// RFC 3179 section 5: an encoded message is one line: CRLF at the end and no other CR or LF.
fn assert_one_line(wire: &[u8]) {
    assert!(wire.ends_with(b"\r\n"), "{}", wire.escape_ascii());
    let body = &wire[..wire.len() - 2];
    assert!(
        !body.contains(&b'\n') && !body.contains(&b'\r'),
        "{}",
        wire.escape_ascii()
    );
}

// ---------------------------------------------------------------------------------------------
// garbage that looks a bit like SMX, to get past the first token more often than random bytes

fn smx_ish_line() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        select(vec![
            &b"hello"[..],
            b"start",
            b"suspend",
            b"resume",
            b"abort",
            b"status",
            b"HELLO",
            b"211",
            b"231",
            b"232",
            b"401",
            b"434",
            b"511",
            b"531",
            b"532",
            b"533",
            b"534",
            b"535",
            b"536",
            b"537",
            b"538",
            b"299",
            b"0",
            b"1",
            b"7",
            b"42",
            b"18446744073709551615",
            b"18446744073709551616",
            b"SMX/1.1",
            b"SMX/",
            b"\"",
            b"\"\"",
            b"\"a b\"",
            b"\\",
            b"\\\"",
            b"\\t",
            b"00FF",
            b"0aF",
            b"untrusted",
            b" ",
            b"\t",
            b"\r",
            b"\n",
            b"\r\n",
        ])
        .prop_map(|t| t.to_vec()),
        prop::collection::vec(any::<u8>(), 0..4),
    ];
    prop::collection::vec(token, 0..12).prop_map(|ts| ts.concat())
}

/// A decoded command or reply must survive re-encoding; a failure points inside the input.
fn check_decoders_on(line: &[u8]) {
    match Command::decode(line) {
        Ok(c) => {
            let wire = c.to_bytes();
            assert_one_line(&wire);
            assert_eq!(Command::decode(&wire), Ok(c));
        }
        Err(CommandError::Unrecognized(m)) => assert!(m.at <= line.len()),
        Err(CommandError::UnknownCommand { .. }) => {}
        Err(CommandError::Rejected { why, code, .. }) => {
            assert!(why.at <= line.len());
            assert!(matches!(code.code(), 401 | 421 | 431 | 432 | 433));
        }
    }
    match Reply::decode(line) {
        Ok(r) => {
            let wire = r.to_bytes();
            assert_one_line(&wire);
            assert_eq!(Reply::decode(&wire), Ok(r));
        }
        Err(m) => assert!(m.at <= line.len()),
    }
}

// ---------------------------------------------------------------------------------------------
// framer model

/// What `LineFramer` must produce: each LF-terminated piece (and a non-empty unterminated
/// tail) as a line, or `Overlong` if it is longer than `max`.
fn framer_model(input: &[u8], max: usize) -> Vec<Frame> {
    input
        .split_inclusive(|&b| b == b'\n')
        .map(|piece| {
            if piece.len() > max {
                Frame::Overlong
            } else {
                Frame::Line(Bytes::copy_from_slice(piece))
            }
        })
        .collect()
}

fn run_framer(input: &[u8], max: usize, chunk_sizes: &[usize]) -> Vec<Frame> {
    let mut framer = LineFramer::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = chunk_sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().expect("non-empty")).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(f) = framer.next_frame(&mut buf) {
            out.push(f);
        }
        // memory stays bounded: the partial line never exceeds the limit by a whole chunk
        assert!(buf.len() <= max + n, "buffered {} > {max} + {n}", buf.len());
    }
    out.extend(framer.finish(&mut buf));
    assert!(buf.is_empty());
    out
}

fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            6 => any::<u8>(),
            2 => Just(b'\n'),
            1 => Just(b'\r'),
        ],
        0..400,
    )
}

// ---------------------------------------------------------------------------------------------
// properties

proptest! {
    /// RFC 3179 section 5.2: every command survives encode then decode.
    #[test]
    fn command_round_trip(c in command()) {
        let wire = c.to_bytes();
        assert_one_line(&wire);
        prop_assert_eq!(Command::decode(&wire), Ok(c.clone()));
        // encode appends and is deterministic
        let mut twice = Vec::new();
        c.encode(&mut twice);
        c.encode(&mut twice);
        prop_assert_eq!(twice, [wire.clone(), wire].concat());
    }

    /// RFC 3179 section 5.3: every reply survives encode then decode.
    #[test]
    fn reply_round_trip(r in reply()) {
        let wire = r.to_bytes();
        assert_one_line(&wire);
        prop_assert_eq!(Reply::decode(&wire), Ok(r.clone()));
        let mut twice = Vec::new();
        r.encode(&mut twice);
        r.encode(&mut twice);
        prop_assert_eq!(twice, [wire.clone(), wire].concat());
    }

    /// RFC 3179 sections 5.1-5.2 with the lenient input conventions: an independently written
    /// line (tabs, any letter case, leading zeros, LF, hex of any case, optional escapes)
    /// decodes to the command it was written from.
    #[test]
    fn command_lenient_forms_decode(c in command(), mut s in style()) {
        let wire = lenient_command(&c, &mut s);
        prop_assert_eq!(Command::decode(&wire), Ok(c), "{}", wire.escape_ascii());
    }

    /// RFC 3179 sections 5.1 and 5.3, as above for replies.
    #[test]
    fn reply_lenient_forms_decode(r in reply(), mut s in style()) {
        let wire = lenient_reply(&r, &mut s);
        prop_assert_eq!(Reply::decode(&wire), Ok(r), "{}", wire.escape_ascii());
    }

    /// RFC 3179 section 5.1: the octet-string encoding round-trips through every field that
    /// carries one, and picks hex exactly for values a QuotedString cannot carry.
    #[test]
    fn octets_form_choice(v in octets()) {
        let mut wire = Vec::new();
        v.encode(&mut wire);
        let quoted = wire.first() == Some(&b'"');
        prop_assert_eq!(quoted, v.is_quotable());
        if !quoted {
            prop_assert_eq!(wire.len(), 2 * v.len());
            prop_assert!(wire.iter().all(|b| b"0123456789ABCDEF".contains(b)));
        }
    }

    /// Arbitrary bytes never panic either decoder.
    #[test]
    fn decoders_never_panic_on_bytes(line in prop::collection::vec(any::<u8>(), 0..300)) {
        check_decoders_on(&line);
        let mut with_crlf = line;
        with_crlf.extend_from_slice(b"\r\n");
        check_decoders_on(&with_crlf);
    }

    /// SMX-looking garbage never panics either decoder.
    #[test]
    fn decoders_never_panic_on_smx_ish_lines(line in smx_ish_line()) {
        check_decoders_on(&line);
    }

    /// A valid line with one byte changed, removed or inserted never panics.
    #[test]
    fn decoders_never_panic_on_mutated_lines(
        m in prop_oneof![command().prop_map(|c| c.to_bytes()), reply().prop_map(|r| r.to_bytes())],
        at in any::<prop::sample::Index>(),
        b in any::<u8>(),
        op in 0u8..3,
    ) {
        let mut line = m;
        let i = at.index(line.len());
        match op {
            0 => line[i] = b,
            1 => { line.remove(i); }
            _ => line.insert(i, b),
        }
        check_decoders_on(&line);
    }

    /// The framer never panics, keeps memory bounded, and matches the model for any input,
    /// limit and chunking (RFC 3179 section 8: messages are lines on a byte stream).
    #[test]
    fn framer_matches_model(
        input in stream_bytes(),
        max in 2usize..80,
        chunks in prop::collection::vec(1usize..50, 1..8),
    ) {
        prop_assert_eq!(run_framer(&input, max, &chunks), framer_model(&input, max));
    }

    /// Encoded messages, concatenated into one stream and cut anywhere, come back out of the
    /// framer one by one and decode to the same messages.
    #[test]
    fn framed_stream_of_replies_round_trips(
        replies in prop::collection::vec(reply(), 1..8),
        chunks in prop::collection::vec(1usize..200, 1..8),
    ) {
        let stream: Vec<u8> = replies.iter().flat_map(|r| r.to_bytes()).collect();
        let frames = run_framer(&stream, smx::framing::DEFAULT_MAX_LINE, &chunks);
        prop_assert_eq!(frames.len(), replies.len());
        for (f, r) in frames.iter().zip(&replies) {
            let Frame::Line(line) = f else { panic!("unexpected {f:?}") };
            prop_assert_eq!(&Reply::decode(line), &Ok(r.clone()));
        }
    }
}
