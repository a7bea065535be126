//! Table-driven tests of the SMX/1.1 codec against RFC 3179.
//!
//! - section 5.1: every token rule (Zero, ProfileChars, QuotedString, HexString, Id, Script,
//!   RunId, Profile, RunState, ExitCode, Authenticator, Version, Argument, Result, ErrorMsg);
//! - section 5.2: the six commands, decoded and encoded byte for byte;
//! - section 5.3: all 18 reply codes, decoded (valid and invalid) and encoded byte for byte;
//! - section 6.1: which reply a runtime owes for a bad command (discard, 402, the 6.1.2 order
//!   431/421/432/433, 431 for a bad RunId of 6.1.3-6.1.6, 401 for everything else);
//! - section 7: the example message flow, both directions, through the framer;
//! - section 8: line framing over a byte stream (CRLF split across reads, over-long lines).
//!
//! Input conventions under test are those of `smx::proto`'s module doc: CRLF or bare LF,
//! case-insensitive literal words, exactly one WSP (space or tab), hex of either case.

use bytes::{Bytes, BytesMut};
use smx::framing::{DEFAULT_MAX_LINE, Frame, LineFramer, LineReader};
use smx::proto::{
    Authenticator, Command, CommandError, ExitCode, Id, Malformed, Negative, Octets, Profile,
    Quoted, Reply, RunId, RunState, Script, Version,
};

// ---------------------------------------------------------------------------------------------
// helpers

/// `s` followed by CRLF.
fn crlf(s: &[u8]) -> Vec<u8> {
    let mut v = s.to_vec();
    v.extend_from_slice(b"\r\n");
    v
}

/// Printable form of a line for assertion messages.
fn show(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

fn q(s: &str) -> Quoted {
    Quoted::new(s).expect("test script names are quotable")
}

fn prof(s: &str) -> Profile {
    s.parse().expect("test profiles are valid")
}

fn oct(b: &[u8]) -> Octets {
    Octets::new(b)
}

fn auth(b: &[u8]) -> Authenticator {
    Authenticator::new(b).expect("test authenticators are not empty")
}

fn mal(at: usize, expected: &'static str) -> Malformed {
    Malformed { at, expected }
}

fn start(id: u64, run: u64, script: &str, profile: &str, argument: &[u8]) -> Command {
    Command::Start {
        id: Id(id),
        run: RunId(run),
        script: q(script),
        profile: prof(profile),
        argument: oct(argument),
    }
}

fn neg(id: u64, code: Negative) -> Reply {
    Reply::Negative { id: Id(id), code }
}

// ---------------------------------------------------------------------------------------------
// 5.1 Common Definitions: the token types on their own

/// RFC 3179 section 5.1: `Id = 1*DIGIT` and `RunId = 1*DIGIT`, as u64 without wrapping.
#[test]
fn s5_1_id_and_runid_are_1_star_digit_in_u64() {
    let cases: &[(&[u8], Option<u64>)] = &[
        (b"0", Some(0)),
        (b"1", Some(1)),
        (b"42", Some(42)),
        (b"007", Some(7)),
        (b"0000000000000000000000000000001", Some(1)),
        (b"18446744073709551615", Some(u64::MAX)),
        (b"018446744073709551615", Some(u64::MAX)),
        (b"18446744073709551616", None), // u64::MAX + 1: rejected, not wrapped to 0
        (b"18446744073709551625", None),
        (b"99999999999999999999", None),
        (b"184467440737095516150", None),
        (b"", None),
        (b"-1", None),
        (b"+1", None),
        (b" 1", None),
        (b"1 ", None),
        (b"1\r", None),
        (b"1a", None),
        (b"a1", None),
        (b"0x1", None),
        (b"1.0", None),
        ("\u{0661}".as_bytes(), None), // ARABIC-INDIC DIGIT ONE is not DIGIT
    ];
    for &(input, want) in cases {
        assert_eq!(Id::parse(input), want.map(Id), "Id {}", show(input));
        assert_eq!(
            RunId::parse(input),
            want.map(RunId),
            "RunId {}",
            show(input)
        );
        if let Ok(s) = std::str::from_utf8(input) {
            assert_eq!(s.parse::<Id>().ok(), want.map(Id), "Id::from_str {s:?}");
            assert_eq!(
                s.parse::<RunId>().ok(),
                want.map(RunId),
                "RunId::from_str {s:?}"
            );
        }
    }
    assert_eq!(Id(u64::MAX).to_string(), "18446744073709551615");
    assert_eq!(RunId(0).to_string(), "0");
}

/// RFC 3179 section 5.1: `ProfileChars = DIGIT / ALPHA / %x2D-2F / %x3A / %x5F`, checked for
/// every octet against an independent transcription of the rule.
#[test]
fn s5_1_profile_chars_exhaustive() {
    for b in 0u8..=255 {
        let rule = b.is_ascii_digit()
            || b.is_ascii_uppercase()
            || b.is_ascii_lowercase()
            || (0x2d..=0x2f).contains(&b)
            || b == 0x3a
            || b == 0x5f;
        assert_eq!(Profile::is_profile_char(b), rule, "octet {b:#04x}");
        assert_eq!(Profile::parse(&[b]).is_some(), rule, "octet {b:#04x}");
        // inside a longer name too
        assert_eq!(
            Profile::parse(&[b'a', b, b'z']).is_some(),
            rule,
            "octet {b:#04x}"
        );
    }
}

/// RFC 3179 section 5.1: `Profile = 1*ProfileChars`.
#[test]
fn s5_1_profile_names() {
    let cases: &[(&[u8], bool)] = &[
        (b"untrusted", true),
        (b"trusted", true),
        (b"a", true),
        (b"0", true),
        (b"a-Z.0/9:_", true),
        (b"/usr/lib/profile:v1.2_x-y", true),
        (b"", false),
        (b"a b", false),
        (b"a\tb", false),
        (b"\"trusted\"", false),
        (b"bad!", false),
        (b"a,b", false),
        (b"a\\b", false),
        (b"caf\xc3\xa9", false),
    ];
    for &(input, ok) in cases {
        let got = Profile::parse(input);
        assert_eq!(got.is_some(), ok, "{}", show(input));
        if let Some(p) = got {
            assert_eq!(p.as_str().as_bytes(), input);
            assert_eq!(p.to_string().as_bytes(), input);
        }
    }
}

/// RFC 3179 section 5.1: `RunState = "1" .. "7"` with the smRunState names.
#[test]
fn s5_1_run_state_digits() {
    let want = [
        (b'1', RunState::Initializing, "initializing"),
        (b'2', RunState::Executing, "executing"),
        (b'3', RunState::Suspending, "suspending"),
        (b'4', RunState::Suspended, "suspended"),
        (b'5', RunState::Resuming, "resuming"),
        (b'6', RunState::Aborting, "aborting"),
        (b'7', RunState::Terminated, "terminated"),
    ];
    assert_eq!(RunState::ALL.len(), want.len());
    for (i, &(digit, state, name)) in want.iter().enumerate() {
        assert_eq!(RunState::ALL[i], state);
        assert_eq!(RunState::parse(&[digit]), Some(state));
        assert_eq!(state.number(), digit - b'0');
        assert_eq!(state.mib_name(), name);
        assert_eq!(RunState::from_mib_name(name), Some(state));
    }
    for bad in [&b"0"[..], b"8", b"9", b"", b"01", b"11", b"2 ", b"x", b"-1"] {
        assert_eq!(RunState::parse(bad), None, "{}", show(bad));
    }
}

/// RFC 3179 section 5.1: `ExitCode = "1" .. "9"` with the smRunExitCode names.
#[test]
fn s5_1_exit_code_digits() {
    let want = [
        (b'1', ExitCode::NoError, "noError"),
        (b'2', ExitCode::Halted, "halted"),
        (b'3', ExitCode::LifeTimeExceeded, "lifeTimeExceeded"),
        (b'4', ExitCode::NoResourcesLeft, "noResourcesLeft"),
        (b'5', ExitCode::LanguageError, "languageError"),
        (b'6', ExitCode::RuntimeError, "runtimeError"),
        (b'7', ExitCode::InvalidArgument, "invalidArgument"),
        (b'8', ExitCode::SecurityViolation, "securityViolation"),
        (b'9', ExitCode::GenericError, "genericError"),
    ];
    assert_eq!(ExitCode::ALL.len(), want.len());
    for (i, &(digit, exit, name)) in want.iter().enumerate() {
        assert_eq!(ExitCode::ALL[i], exit);
        assert_eq!(ExitCode::parse(&[digit]), Some(exit));
        assert_eq!(exit.number(), digit - b'0');
        assert_eq!(exit.mib_name(), name);
        assert_eq!(ExitCode::from_mib_name(name), Some(exit));
    }
    for bad in [&b"0"[..], b"10", b"", b"01", b"1 ", b"a"] {
        assert_eq!(ExitCode::parse(bad), None, "{}", show(bad));
    }
}

/// RFC 3179 section 5.1: `Version = "SMX/1.1"`; the literal is case-insensitive (RFC 2234
/// section 2.3), and other `SMX/x.y` versions parse so the host can name what it rejects.
#[test]
fn s5_1_version() {
    type Case<'a> = (&'a [u8], Option<(u32, u32)>);
    let cases: &[Case] = &[
        (b"SMX/1.1", Some((1, 1))),
        (b"smx/1.1", Some((1, 1))),
        (b"sMx/1.1", Some((1, 1))),
        (b"SMX/1.0", Some((1, 0))),
        (b"SMX/2.10", Some((2, 10))),
        (b"SMX/4294967295.0", Some((u32::MAX, 0))),
        (b"SMX/4294967296.0", None),
        (b"SMX/1", None),
        (b"SMX/1.", None),
        (b"SMX/.1", None),
        (b"SMX/1.1.1", None),
        (b"SMX/a.b", None),
        (b"SMX/-1.1", None),
        (b"SMX1.1", None),
        (b"SMX 1.1", None),
        (b"SNMP/1.1", None),
        (b"SM/1.1", None),
        (b"", None),
        (b" SMX/1.1", None),
    ];
    for &(input, want) in cases {
        let want = want.map(|(major, minor)| Version { major, minor });
        assert_eq!(Version::parse(input), want, "{}", show(input));
    }
    assert_eq!(Version::V1_1.to_string(), "SMX/1.1");
}

/// RFC 3179 section 5.1: a `QuotedString` carries only VCHAR and WSP literally; with the
/// escapes `\t \n \r` a `Quoted` value can also hold HTAB, LF and CR. Nothing else.
#[test]
fn s5_1_quoted_string_octet_set() {
    for b in 0u8..=255 {
        let ok = (0x20..=0x7e).contains(&b) || b == b'\t' || b == b'\n' || b == b'\r';
        match Quoted::new(vec![b'x', b]) {
            Ok(v) => {
                assert!(ok, "octet {b:#04x} accepted");
                assert_eq!(v.as_bytes(), &[b'x', b]);
            }
            Err(e) => {
                assert!(!ok, "octet {b:#04x} rejected");
                assert_eq!((e.at, e.byte), (1, b));
            }
        }
        assert_eq!(Octets::new(vec![b]).is_quotable(), ok, "octet {b:#04x}");
    }
}

/// RFC 3179 section 5.1: `Authenticator = HexString`, and a HexString has at least one octet.
#[test]
fn s5_1_authenticator_is_non_empty() {
    assert!(Authenticator::new(Vec::new()).is_none());
    assert_eq!(auth(&[0]).as_bytes(), &[0]);
}

// ---------------------------------------------------------------------------------------------
// 5.1 QuotedString / HexString / Argument / Result / ErrorMsg on the wire

/// RFC 3179 section 5.1: valid QuotedStrings and the octets they stand for. Each is checked
/// as a 511 text (QuotedString), a start Script (QuotedString), a start Argument and a 532
/// Result (HexString / QuotedString).
const QUOTED_OK: &[(&[u8], &[u8])] = &[
    (br#""""#, b""),
    (br#""waiting for response""#, b"waiting for response"),
    (br#"" leading and trailing ""#, b" leading and trailing "),
    (b"\"a\tb\"", b"a\tb"), // a literal HTAB is WSP
    (br#""\\""#, b"\\"),
    (br#""\t""#, b"\t"),
    (br#""\n""#, b"\n"),
    (br#""\r""#, b"\r"),
    (br#""\"""#, b"\""),
    (br#""a\\b\tc\nd\re\"f""#, b"a\\b\tc\nd\re\"f"),
    (br#""\\\\""#, b"\\\\"),
    (br#""\\n""#, b"\\n"), // escaped backslash, then a plain n
    // "In all other cases not listed above, the backslash is dropped"
    (br#""\a""#, b"a"),
    (br#""\q\z\/\'""#, b"qz/'"),
    (br#""\x41""#, b"x41"),
    (br#""\ ""#, b" "),
    (b"\"\\\t\"", b"\t"),     // backslash + literal HTAB
    (br#""\T\N\R""#, b"TNR"), // escapes are case-sensitive: these are unknown escapes
];

/// The printable ASCII range, all VCHAR but `"` and `\`, is carried literally.
fn all_vchar_body() -> Vec<u8> {
    (0x21u8..=0x7e)
        .filter(|&b| b != b'"' && b != b'\\')
        .collect()
}

fn quoted_ok_cases() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v: Vec<(Vec<u8>, Vec<u8>)> = QUOTED_OK
        .iter()
        .map(|&(w, o)| (w.to_vec(), o.to_vec()))
        .collect();
    let body = all_vchar_body();
    let mut wire = vec![b'"'];
    wire.extend_from_slice(&body);
    wire.push(b'"');
    v.push((wire, body));
    v
}

/// RFC 3179 section 5.1: byte sequences that are not a QuotedString.
const QUOTED_BAD: &[&[u8]] = &[
    b"\"abc",           // unterminated
    b"\"abc\\\"",       // the only quote is escaped
    b"\"abc\\",         // backslash at the end
    b"\"a\x01\"",       // control character
    b"\"a\x00\"",       // NUL
    b"\"a\x7f\"",       // DEL
    b"\"a\x80\"",       // non-ASCII
    b"\"caf\xc3\xa9\"", // UTF-8 is not VCHAR
    b"\"a\rb\"",        // literal CR inside
    b"\"a\nb\"",        // literal LF inside (framing would cut here anyway)
    b"\"\\\x01\"",      // escape of a control character
    b"\"\\\xff\"",      // escape of a non-ASCII octet
    b"abc\"",           // no opening quote
    b"'abc'",           // single quotes are not DQUOTE
    b"\"a\"b\"",        // junk right after the closing quote
    b"\"\"\"\"",        // two strings glued together
];

/// RFC 3179 section 5.1: valid HexStrings and their octets (either case on input).
const HEX_OK: &[(&[u8], &[u8])] = &[
    (b"00", &[0x00]),
    (b"ff", &[0xff]),
    (b"FF", &[0xff]),
    (b"fF", &[0xff]),
    (
        b"0AF0BAED6F877FBC",
        &[0x0a, 0xf0, 0xba, 0xed, 0x6f, 0x87, 0x7f, 0xbc],
    ),
    (
        b"0af0baed6f877fbc",
        &[0x0a, 0xf0, 0xba, 0xed, 0x6f, 0x87, 0x7f, 0xbc],
    ),
    (
        b"0123456789abcdefABCDEF",
        &[
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xab, 0xcd, 0xef,
        ],
    ),
    (b"48656C6C6F", b"Hello"), // a printable value may come as hex too
];

/// RFC 3179 section 5.1: `HexString = 1*(HEXDIG HEXDIG)` rejects these.
const HEX_BAD: &[&[u8]] = &[
    b"0",    // odd length
    b"ABC",  // odd length
    b"GG",   // not HEXDIG
    b"0g",   // not HEXDIG
    b"0x00", // no prefix allowed
    b"AB-CD",
    b"ABZZ", // a good pair followed by junk in the same field
    b"AB\"\"",
    b"\xc3\xa9",
];

/// RFC 3179 section 5.1: long HexStrings and QuotedStrings (long enough for any word-at-a-time
/// fast path) with one bad octet at every position are rejected; without it they decode.
#[test]
fn s5_1_long_values_with_one_bad_octet_anywhere() {
    let bad_in_hex: &[u8] = b"gG/:@`\x00 \"\\\r\n\x7f\x80\xc6\xff";
    let octets: Vec<u8> = (0..24u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    for (hex, case) in [
        (hex_upper(&octets), "upper"),
        (hex_upper(&octets).to_ascii_lowercase(), "lower"),
    ] {
        let good = crlf(&[b"532 0 1 2 ".as_slice(), &hex].concat());
        assert_eq!(
            Reply::decode(&good),
            Ok(Reply::Result {
                run: RunId(1),
                state: RunState::Executing,
                result: oct(&octets),
            }),
            "{case}"
        );
        for pos in 0..hex.len() {
            for &b in bad_in_hex {
                let mut h = hex.clone();
                h[pos] = b;
                let line = crlf(&[b"532 0 1 2 ".as_slice(), &h].concat());
                assert!(Reply::decode(&line).is_err(), "{}", show(&line));
                let line = crlf(&[b"start 1 2 \"s\" p ".as_slice(), &h].concat());
                // SP, CR or LF after an even number of digits ends a good Argument: what
                // follows is then a stray field or junk after it (section 6.1: 401)
                let code = if matches!(b, b' ' | b'\r' | b'\n') && pos > 0 && pos % 2 == 0 {
                    Negative::Syntax
                } else {
                    Negative::IllegalArgument
                };
                assert_eq!(
                    Command::decode(&line).map_err(|e| e.reply()),
                    Err(Some(neg(1, code))),
                    "{}",
                    show(&line)
                );
            }
        }
    }
    let text: Vec<u8> = (0..40u8).map(|i| b'A' + i % 26).collect();
    let bad_in_quoted: &[u8] = b"\x00\x01\x1f\r\n\x7f\x80\xff";
    for pos in 0..text.len() {
        for &b in bad_in_quoted {
            let mut t = text.clone();
            t[pos] = b;
            let line = crlf(&[b"511 0 \"".as_slice(), &t, b"\""].concat());
            assert_eq!(
                Reply::decode(&line),
                Err(mal(6, "QuotedString")),
                "{}",
                show(&line)
            );
        }
        // a quote or backslash anywhere changes the meaning
        let mut t = text.clone();
        t[pos] = b'\\';
        let line = crlf(&[b"511 0 \"".as_slice(), &t, b"\""].concat());
        let mut want = text.clone();
        want.remove(pos); // the unknown escape drops the backslash
        let want = if pos + 1 < text.len() {
            Ok(Reply::Message {
                text: Quoted::new(want).unwrap(),
            })
        } else {
            Err(mal(6, "QuotedString")) // it escapes the closing quote
        };
        assert_eq!(Reply::decode(&line), want, "{}", show(&line));
        let mut t = text.clone();
        t[pos] = b'"';
        let line = crlf(&[b"511 0 \"".as_slice(), &t, b"\""].concat());
        assert!(Reply::decode(&line).is_err(), "{}", show(&line));
        // a literal HTAB anywhere is fine
        let mut t = text.clone();
        t[pos] = b'\t';
        let line = crlf(&[b"511 0 \"".as_slice(), &t, b"\""].concat());
        assert_eq!(
            Reply::decode(&line),
            Ok(Reply::Message {
                text: Quoted::new(t).unwrap()
            })
        );
    }
}

fn hex_upper(b: &[u8]) -> Vec<u8> {
    b.iter()
        .flat_map(|x| format!("{x:02X}").into_bytes())
        .collect()
}

/// RFC 3179 sections 5.1 and 5.3: `511 0 QuotedString` accepts exactly the QuotedStrings.
#[test]
fn s5_1_quoted_string_in_511() {
    for (wire, octets) in quoted_ok_cases() {
        let line = crlf(&[b"511 0 ".as_slice(), &wire].concat());
        let want = Reply::Message {
            text: Quoted::new(octets.clone()).unwrap(),
        };
        assert_eq!(Reply::decode(&line), Ok(want), "{}", show(&line));
    }
    for &bad in QUOTED_BAD {
        let line = crlf(&[b"511 0 ".as_slice(), bad].concat());
        assert_eq!(
            Reply::decode(&line).map_err(|m| m.expected),
            Err("QuotedString"),
            "{}",
            show(&line)
        );
    }
    // a 511 text has no HexString alternative
    assert_eq!(
        Reply::decode(b"511 0 48656C6C6F\r\n"),
        Err(mal(6, "QuotedString"))
    );
}

/// RFC 3179 sections 5.1 and 5.2: `Script = QuotedString`; a bad one is a 421 (6.1.2 b).
#[test]
fn s5_1_quoted_string_as_script() {
    for (wire, octets) in quoted_ok_cases() {
        let line = crlf(&[b"start 3 42 ".as_slice(), &wire, b" untrusted \"\""].concat());
        let want = Command::Start {
            id: Id(3),
            run: RunId(42),
            script: Script::new(octets.clone()).unwrap(),
            profile: prof("untrusted"),
            argument: Octets::default(),
        };
        assert_eq!(Command::decode(&line), Ok(want), "{}", show(&line));
    }
    for &bad in QUOTED_BAD {
        let line = crlf(&[b"start 3 42 ".as_slice(), bad, b" untrusted \"\""].concat());
        let got = Command::decode(&line).map_err(|e| e.reply());
        assert_eq!(
            got,
            Err(Some(neg(3, Negative::IllegalScript))),
            "{}",
            show(&line)
        );
    }
    // the hex form is not a Script
    let line = b"start 3 42 2F746D70 untrusted \"\"\r\n";
    assert_eq!(
        Command::decode(line),
        Err(CommandError::Rejected {
            id: Id(3),
            code: Negative::IllegalScript,
            why: mal(11, "Script"),
        })
    );
}

/// RFC 3179 sections 5.1 and 5.2: `Argument = HexString / QuotedString`; a bad one is a 433.
#[test]
fn s5_1_argument_both_forms() {
    let mut ok: Vec<(Vec<u8>, Vec<u8>)> = quoted_ok_cases();
    ok.extend(HEX_OK.iter().map(|&(w, o)| (w.to_vec(), o.to_vec())));
    for (wire, octets) in ok {
        let line = crlf(&[b"start 3 42 \"/s\" p ".as_slice(), &wire].concat());
        assert_eq!(
            Command::decode(&line),
            Ok(start(3, 42, "/s", "p", &octets)),
            "{}",
            show(&line)
        );
    }
    for &bad in QUOTED_BAD.iter().chain(HEX_BAD) {
        let line = crlf(&[b"start 3 42 \"/s\" p ".as_slice(), bad].concat());
        let got = Command::decode(&line).map_err(|e| e.reply());
        assert_eq!(
            got,
            Err(Some(neg(3, Negative::IllegalArgument))),
            "{}",
            show(&line)
        );
    }
}

/// RFC 3179 sections 5.1 and 5.3: `Result` and `ErrorMsg = HexString / QuotedString` in every
/// reply that carries one (532, 533, 534, 535, 536, 537).
#[test]
fn s5_1_result_and_error_msg_both_forms() {
    let mut ok: Vec<(Vec<u8>, Vec<u8>)> = quoted_ok_cases();
    ok.extend(HEX_OK.iter().map(|&(w, o)| (w.to_vec(), o.to_vec())));
    let prefixes: [&[u8]; 6] = [
        b"532 0 44 2 ",
        b"533 0 44 2 ",
        b"534 0 44 ",
        b"535 0 44 6 ",
        b"536 0 44 2 ",
        b"537 0 44 2 ",
    ];
    for prefix in prefixes {
        for (wire, octets) in &ok {
            let line = crlf(&[prefix, wire.as_slice()].concat());
            let v = oct(octets);
            let (run, state, exit) = (RunId(44), RunState::Executing, ExitCode::RuntimeError);
            let want = match &prefix[..3] {
                b"532" => Reply::Result {
                    run,
                    state,
                    result: v,
                },
                b"533" => Reply::ResultEvent {
                    run,
                    state,
                    result: v,
                },
                b"534" => Reply::Completed { run, result: v },
                b"535" => Reply::Failed {
                    run,
                    exit,
                    error: v,
                },
                b"536" => Reply::Error {
                    run,
                    state,
                    error: v,
                },
                _ => Reply::ErrorEvent {
                    run,
                    state,
                    error: v,
                },
            };
            assert_eq!(Reply::decode(&line), Ok(want), "{}", show(&line));
        }
        for &bad in QUOTED_BAD.iter().chain(HEX_BAD) {
            let line = crlf(&[prefix, bad].concat());
            let want = if matches!(&prefix[..3], b"532" | b"533" | b"534") {
                "Result"
            } else {
                "ErrorMsg"
            };
            assert_eq!(
                Reply::decode(&line).map_err(|m| m.expected),
                Err(want),
                "{}",
                show(&line)
            );
        }
    }
}

/// RFC 3179 section 5.1: the encoder writes a QuotedString when every octet is VCHAR, WSP,
/// CR or LF (escaping `\ " HTAB LF CR`), otherwise an upper-case HexString; empty is `""`.
#[test]
fn s5_1_octets_encoding_form() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"", br#""""#),
        (b"hello world", br#""hello world""#),
        (b"a\\b", br#""a\\b""#),
        (b"say \"hi\"", br#""say \"hi\"""#),
        (b"\t\n\r", br#""\t\n\r""#),
        (b"line1\r\nline2", br#""line1\r\nline2""#),
        (b" ", br#"" ""#),
        (
            b"~!#$%&'()*+,-./:;<=>?@[]^_`{|}",
            br#""~!#$%&'()*+,-./:;<=>?@[]^_`{|}""#,
        ),
        (b"\x00", b"00"),
        (b"a\x00", b"6100"),
        (b"\x7f", b"7F"),
        (b"\x1b[0m", b"1B5B306D"),
        (b"\xff\xfe", b"FFFE"),
        ("é".as_bytes(), b"C3A9"),
        (b"\x0a\xf0\xba\xed", b"0AF0BAED"),
    ];
    for &(octets, wire) in cases {
        let mut out = Vec::new();
        oct(octets).encode(&mut out);
        assert_eq!(show(&out), show(wire), "{}", show(octets));
        // and it comes back as the same octets
        let line = crlf(&[b"532 0 1 2 ".as_slice(), wire].concat());
        assert_eq!(
            Reply::decode(&line),
            Ok(Reply::Result {
                run: RunId(1),
                state: RunState::Executing,
                result: oct(octets),
            })
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5.2 Commands

/// RFC 3179 section 5.2: canonical command lines, decoded and re-encoded byte for byte.
#[test]
fn s5_2_commands_decode_and_encode_exactly() {
    let cases: Vec<(&[u8], Command)> = vec![
        (b"hello 1", Command::Hello { id: Id(1) }),
        (b"hello 0", Command::Hello { id: Id(0) }),
        (
            b"hello 18446744073709551615",
            Command::Hello { id: Id(u64::MAX) },
        ),
        (
            br#"start 2 42 "/var/snmp/scripts/foo.jar" untrusted """#,
            start(2, 42, "/var/snmp/scripts/foo.jar", "untrusted", b""),
        ),
        (
            br#"start 5 44 "/var/snmp/scripts/bar.jar" trusted "www.ietf.org""#,
            start(
                5,
                44,
                "/var/snmp/scripts/bar.jar",
                "trusted",
                b"www.ietf.org",
            ),
        ),
        (
            br#"start 18446744073709551615 18446744073709551615 "/a b/\"c\"\\d" a-Z.0/9:_ "x\ty""#,
            start(u64::MAX, u64::MAX, "/a b/\"c\"\\d", "a-Z.0/9:_", b"x\ty"),
        ),
        (
            br#"start 7 8 "" p 00FF7F80"#,
            start(7, 8, "", "p", &[0x00, 0xff, 0x7f, 0x80]),
        ),
        (
            br#"start 7 8 "s" p "multi\r\nline""#,
            start(7, 8, "s", "p", b"multi\r\nline"),
        ),
        (
            b"suspend 581 42",
            Command::Suspend {
                id: Id(581),
                run: RunId(42),
            },
        ),
        (
            b"resume 582 42",
            Command::Resume {
                id: Id(582),
                run: RunId(42),
            },
        ),
        (
            b"abort 611 42",
            Command::Abort {
                id: Id(611),
                run: RunId(42),
            },
        ),
        (
            b"status 18 0",
            Command::Status {
                id: Id(18),
                run: RunId(0),
            },
        ),
        (
            b"status 18446744073709551615 18446744073709551615",
            Command::Status {
                id: Id(u64::MAX),
                run: RunId(u64::MAX),
            },
        ),
    ];
    for (wire, cmd) in cases {
        let line = crlf(wire);
        assert_eq!(Command::decode(&line).as_ref(), Ok(&cmd), "{}", show(&line));
        assert_eq!(show(&cmd.to_bytes()), show(&line));
        let mut appended = b"prefix".to_vec();
        cmd.encode(&mut appended);
        assert_eq!(
            show(&appended),
            show(&[b"prefix".as_slice(), &line].concat())
        );
    }
}

/// RFC 3179 section 5.2 and the input conventions of `smx::proto`: lenient but valid forms
/// decode, and the encoder writes them back in canonical form.
#[test]
fn s5_2_commands_accept_non_canonical_forms() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"hello 1\n", b"hello 1\r\n"),   // bare LF
        (b"HELLO 1\r\n", b"hello 1\r\n"), // literal words are case-insensitive
        (b"HeLLo 1\r\n", b"hello 1\r\n"),
        (b"hello\t1\r\n", b"hello 1\r\n"),  // HTAB is WSP
        (b"hello 007\r\n", b"hello 7\r\n"), // leading zeros
        (b"hello 00000000000000000000\r\n", b"hello 0\r\n"),
        (b"SUSPEND\t0042\t00042\n", b"suspend 42 42\r\n"),
        (b"Resume 1 2\n", b"resume 1 2\r\n"),
        (b"ABORT 1 2\r\n", b"abort 1 2\r\n"),
        (b"sTaTuS 1 2\r\n", b"status 1 2\r\n"),
        (
            b"START\t01\t042\t\"s\"\tp\t0a0B\n",
            b"start 1 42 \"s\" p 0A0B\r\n",
        ),
        (
            b"start 1 42 \"a\tb\\q\" p \"\\x\"\r\n",
            b"start 1 42 \"a\\tbq\" p \"x\"\r\n",
        ),
        (
            b"start 1 42 \"s\" p 68656c6c6f\r\n", // printable hex comes back quoted
            b"start 1 42 \"s\" p \"hello\"\r\n",
        ),
    ];
    for &(input, canonical) in cases {
        let cmd = Command::decode(input).unwrap_or_else(|e| panic!("{}: {e}", show(input)));
        assert_eq!(show(&cmd.to_bytes()), show(canonical), "{}", show(input));
        assert_eq!(Command::decode(canonical), Ok(cmd));
    }
}

/// RFC 3179 section 5.2: command accessors.
#[test]
fn s5_2_command_accessors() {
    let all = [
        (Command::Hello { id: Id(1) }, "hello", None),
        (start(2, 3, "s", "p", b""), "start", Some(RunId(3))),
        (
            Command::Suspend {
                id: Id(2),
                run: RunId(4),
            },
            "suspend",
            Some(RunId(4)),
        ),
        (
            Command::Resume {
                id: Id(2),
                run: RunId(5),
            },
            "resume",
            Some(RunId(5)),
        ),
        (
            Command::Abort {
                id: Id(2),
                run: RunId(6),
            },
            "abort",
            Some(RunId(6)),
        ),
        (
            Command::Status {
                id: Id(2),
                run: RunId(7),
            },
            "status",
            Some(RunId(7)),
        ),
    ];
    for (cmd, word, run) in all {
        assert_eq!(cmd.word(), word);
        assert_eq!(cmd.run(), run);
        assert_eq!(cmd.id(), if word == "hello" { Id(1) } else { Id(2) });
        assert!(smx::proto::COMMAND_WORDS.contains(&word));
    }
    assert_eq!(
        smx::proto::COMMAND_WORDS,
        ["hello", "start", "suspend", "resume", "abort", "status"]
    );
}

// ---------------------------------------------------------------------------------------------
// 6.1 How a runtime answers a command it cannot decode

/// The outcome section 6.1 prescribes for a command line.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// "not able to extract both the command string and the transaction identifier":
    /// the message is discarded.
    Discard(usize, &'static str),
    /// Unknown command word: `402 Id`.
    Unknown(u64),
    /// A syntax error answered with this code.
    Reject(u64, u16, usize, &'static str),
}

fn check_command_errors(cases: &[(&[u8], Want)]) {
    let mut failures = Vec::new();
    for &(input, want) in cases {
        let got = Command::decode(input);
        let (want_err, want_reply): (CommandError, Option<Vec<u8>>) = match want {
            Want::Discard(at, expected) => (CommandError::Unrecognized(mal(at, expected)), None),
            Want::Unknown(id) => (
                CommandError::UnknownCommand { id: Id(id) },
                Some(format!("402 {id}\r\n").into_bytes()),
            ),
            Want::Reject(id, code, at, expected) => (
                CommandError::Rejected {
                    id: Id(id),
                    code: Negative::from_code(code).expect("a 4yz code"),
                    why: mal(at, expected),
                },
                Some(format!("{code} {id}\r\n").into_bytes()),
            ),
        };
        if got != Err(want_err.clone()) {
            failures.push(format!("{}: got {got:?}, want {want_err:?}", show(input)));
        }
        let reply = want_err.reply().map(|r| r.to_bytes());
        assert_eq!(
            reply.as_deref().map(show),
            want_reply.as_deref().map(show),
            "{}",
            show(input)
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// RFC 3179 section 6.1: no command word and Id, so the message is discarded.
#[test]
fn s6_1_discard_without_command_word_and_id() {
    use Want::Discard;
    check_command_errors(&[
        (b"", Discard(0, "command word")),
        (b"\r\n", Discard(0, "command word")),
        (b"\n", Discard(0, "command word")),
        (b" hello 1\r\n", Discard(0, "command word")),
        (b"\thello 1\r\n", Discard(0, "command word")),
        (b"hello\r\n", Discard(5, "WSP")),
        (b"hello", Discard(5, "WSP")),
        (b"hello\t\r\n", Discard(6, "Id")),
        (b"hello \r\n", Discard(6, "Id")),
        (b"hello  1\r\n", Discard(6, "Id")), // double WSP
        (b"hello \t1\r\n", Discard(6, "Id")),
        (b"hello x\r\n", Discard(6, "Id")),
        (b"hello 1x\r\n", Discard(6, "Id")),
        (b"hello -1\r\n", Discard(6, "Id")),
        (b"hello +1\r\n", Discard(6, "Id")),
        (b"hello 0x10\r\n", Discard(6, "Id")),
        (b"hello 1\x00\r\n", Discard(6, "Id")), // the Id runs up to WSP, CR or LF
        (b"hello 18446744073709551616\r\n", Discard(6, "Id")), // u64::MAX + 1
        (
            b"start 99999999999999999999 1 \"s\" p \"\"\r\n",
            Discard(6, "Id"),
        ),
        (b"hel\rlo 1\r\n", Discard(3, "WSP")), // CR in the middle of the word
        (b"foo\r\n", Discard(3, "WSP")),       // unknown word without an Id is still discarded
        (b"foo bar\r\n", Discard(4, "Id")),
    ]);
}

/// RFC 3179 section 6.1: command word and Id found, but the word is none of the six: `402`.
#[test]
fn s6_1_unknown_command_word_is_402() {
    use Want::Unknown;
    check_command_errors(&[
        (b"foo 1\r\n", Unknown(1)),
        (b"helo 17 x y z\r\n", Unknown(17)),
        (b"hello2 5\r\n", Unknown(5)),
        (b"compile 9 \"x\"\r\n", Unknown(9)),
        (b"shutdown 18446744073709551615\r\n", Unknown(u64::MAX)),
        (b"quit 4", Unknown(4)), // even without CRLF: word and Id were extracted
        (b"hel\x00lo 3\r\n", Unknown(3)),
        (b"hell\xc3\xb6 3\r\n", Unknown(3)),
        (b"\"hello\" 3\r\n", Unknown(3)),
        (b"Start- 3 1 \"s\" p \"\"\r\n", Unknown(3)),
        (b"211 1 SMX/1.1\r\n", Unknown(1)), // a reply sent the wrong way
    ]);
}

/// RFC 3179 section 6.1.2 item 1: the four start checks a-d (RunId 431, Script 421, Profile
/// 432, Argument 433) in that order, so the first bad parameter decides the reply.
#[test]
fn s6_1_2_start_checks_in_order() {
    use Want::Reject;
    check_command_errors(&[
        // (a) RunId
        (b"start 1 x \"s\" p \"\"\r\n", Reject(1, 431, 8, "RunId")),
        (b"start 1 42x \"s\" p \"\"\r\n", Reject(1, 431, 8, "RunId")),
        (b"start 1 -42 \"s\" p \"\"\r\n", Reject(1, 431, 8, "RunId")),
        (
            b"start 1 18446744073709551616 \"s\" p \"\"\r\n",
            Reject(1, 431, 8, "RunId"),
        ),
        (b"start 1  42 \"s\" p \"\"\r\n", Reject(1, 431, 8, "RunId")),
        (b"start 1\r\n", Reject(1, 431, 7, "RunId")),
        (b"start 1 \r\n", Reject(1, 431, 8, "RunId")),
        // a bad RunId wins over a bad Profile, and over everything else
        (b"start 1 x \"s\" bad! \"\"\r\n", Reject(1, 431, 8, "RunId")),
        (b"start 1 x s bad! \"open\r\n", Reject(1, 431, 8, "RunId")),
        // (b) Script
        (b"start 2 42 s p \"\"\r\n", Reject(2, 421, 11, "Script")),
        (b"start 2 42 \"s p \"\"\r\n", Reject(2, 421, 17, "Script")),
        (b"start 2 42 \"s\r\n", Reject(2, 421, 11, "Script")),
        (
            b"start 2 42 \"a\x01\" p \"\"\r\n",
            Reject(2, 421, 11, "Script"),
        ),
        (
            b"start 2 42 \"caf\xc3\xa9\" p \"\"\r\n",
            Reject(2, 421, 11, "Script"),
        ),
        (
            b"start 2 42 \"s\"x p \"\"\r\n",
            Reject(2, 421, 14, "Script"),
        ),
        (
            b"start 2 42  \"s\" p \"\"\r\n",
            Reject(2, 421, 11, "Script"),
        ),
        (b"start 2 42\r\n", Reject(2, 421, 10, "Script")),
        // a bad Script wins over a bad Profile and a bad Argument
        (b"start 2 42 s bad! zz\r\n", Reject(2, 421, 11, "Script")),
        (
            b"start 2 42 \"s\"x bad! \"\"\r\n",
            Reject(2, 421, 14, "Script"),
        ),
        // (c) Profile
        (
            b"start 3 42 \"s\" bad! \"\"\r\n",
            Reject(3, 432, 15, "Profile"),
        ),
        (
            b"start 3 42 \"s\" \"p\" \"\"\r\n",
            Reject(3, 432, 15, "Profile"),
        ),
        (
            b"start 3 42 \"s\" p\"x \"\"\r\n",
            Reject(3, 432, 15, "Profile"),
        ),
        (
            b"start 3 42 \"s\" caf\xc3\xa9 \"\"\r\n",
            Reject(3, 432, 15, "Profile"),
        ),
        (
            b"start 3 42 \"s\"  p \"\"\r\n",
            Reject(3, 432, 15, "Profile"),
        ),
        (b"start 3 42 \"s\"\r\n", Reject(3, 432, 14, "Profile")),
        // a bad Profile wins over a bad Argument
        (
            b"start 3 42 \"s\" bad! \"open\r\n",
            Reject(3, 432, 15, "Profile"),
        ),
        // (d) Argument
        (b"start 4 42 \"s\" p\r\n", Reject(4, 433, 16, "Argument")),
        (b"start 4 42 \"s\" p \r\n", Reject(4, 433, 17, "Argument")),
        (
            b"start 4 42 \"s\" p  \"\"\r\n",
            Reject(4, 433, 17, "Argument"),
        ),
        (
            b"start 4 42 \"s\" p ABC\r\n",
            Reject(4, 433, 17, "Argument"),
        ),
        (b"start 4 42 \"s\" p ZZ\r\n", Reject(4, 433, 17, "Argument")),
        (
            // A HexString field is judged whole: the error points at its start.
            b"start 4 42 \"s\" p ABZZ\r\n",
            Reject(4, 433, 17, "Argument"),
        ),
        (
            b"start 4 42 \"s\" p 0x41\r\n",
            Reject(4, 433, 17, "Argument"),
        ),
        (
            b"start 4 42 \"s\" p \"open\r\n",
            Reject(4, 433, 17, "Argument"),
        ),
        (
            b"start 4 42 \"s\" p \"a\rb\"\r\n",
            Reject(4, 433, 17, "Argument"),
        ),
        (
            b"start 4 42 \"s\" p \"\"x\r\n",
            Reject(4, 433, 19, "Argument"),
        ),
        (
            b"start 4 42 \"s\" p plain\r\n",
            Reject(4, 433, 17, "Argument"),
        ),
        // every field fine, then something else wrong: the generic 401
        (
            b"start 5 42 \"s\" p \"\" \"\"\r\n",
            Reject(5, 401, 19, "CRLF"),
        ),
        (b"start 5 42 \"s\" p \"\" \r\n", Reject(5, 401, 19, "CRLF")),
        (b"start 5 42 \"s\" p \"\"", Reject(5, 401, 19, "CRLF")),
        (b"start 5 42 \"s\" p \"\"\r", Reject(5, 401, 19, "CRLF")),
        (b"start 5 42 \"s\" p 00\r\r\n", Reject(5, 401, 19, "CRLF")),
    ]);
}

/// RFC 3179 sections 6.1.3-6.1.6 item 1: a syntax error in the RunId of suspend, resume,
/// abort and status is a 431; any other syntax error is a 401.
#[test]
fn s6_1_3_to_6_1_6_bad_run_id_is_431() {
    use Want::Reject;
    for word in ["suspend", "resume", "abort", "status", "SUSPEND", "Status"] {
        let n = word.len();
        let cases: Vec<(Vec<u8>, Want)> = vec![
            (format!("{word} 9 x\r\n"), Reject(9, 431, n + 3, "RunId")),
            (format!("{word} 9 42x\r\n"), Reject(9, 431, n + 3, "RunId")),
            (format!("{word} 9 -5\r\n"), Reject(9, 431, n + 3, "RunId")),
            (
                format!("{word} 9 \"42\"\r\n"),
                Reject(9, 431, n + 3, "RunId"),
            ),
            (
                format!("{word} 9 18446744073709551616\r\n"),
                Reject(9, 431, n + 3, "RunId"),
            ),
            (format!("{word} 9  42\r\n"), Reject(9, 431, n + 3, "RunId")),
            (format!("{word} 9\r\n"), Reject(9, 431, n + 2, "RunId")),
            (format!("{word} 9 \r\n"), Reject(9, 431, n + 3, "RunId")),
            (format!("{word} 9 42 43\r\n"), Reject(9, 401, n + 5, "CRLF")),
            (format!("{word} 9 42 \r\n"), Reject(9, 401, n + 5, "CRLF")),
            (format!("{word} 9 42"), Reject(9, 401, n + 5, "CRLF")),
            (format!("{word} 9 42\r"), Reject(9, 401, n + 5, "CRLF")),
            (format!("{word} 9 42\r\r\n"), Reject(9, 401, n + 5, "CRLF")),
            (format!("{word} 9 42\n\n"), Reject(9, 401, n + 5, "CRLF")),
            (format!("{word} 9 42\n\r\n"), Reject(9, 401, n + 5, "CRLF")),
            (
                format!("{word} 9 42\r\n{word} 10 42\r\n"),
                Reject(9, 401, n + 5, "CRLF"),
            ),
            (format!("{word} 9 42\rx\n"), Reject(9, 401, n + 5, "CRLF")),
        ]
        .into_iter()
        .map(|(s, w)| (s.into_bytes(), w))
        .collect();
        let cases: Vec<(&[u8], Want)> = cases.iter().map(|(s, w)| (s.as_slice(), *w)).collect();
        check_command_errors(&cases);
    }
}

/// RFC 3179 section 6.1 ("any syntax error which is not explicitly mentioned"): `401`.
#[test]
fn s6_1_other_syntax_errors_are_401() {
    use Want::Reject;
    check_command_errors(&[
        (b"hello 1 2\r\n", Reject(1, 401, 7, "CRLF")), // trailing field
        (b"hello 1 \r\n", Reject(1, 401, 7, "CRLF")),  // trailing WSP
        (b"hello 1\t\r\n", Reject(1, 401, 7, "CRLF")),
        (b"hello 1", Reject(1, 401, 7, "CRLF")), // missing CRLF
        (b"hello 1\r", Reject(1, 401, 7, "CRLF")), // CR without LF
        (b"hello 1\rx\n", Reject(1, 401, 7, "CRLF")), // CR in the middle
        (b"hello 1\r\r\n", Reject(1, 401, 7, "CRLF")),
        (b"hello 1\r\n\r\n", Reject(1, 401, 7, "CRLF")),
        (b"hello 1\n\n", Reject(1, 401, 7, "CRLF")),
        (b"hello 1 SMX/1.1\r\n", Reject(1, 401, 7, "CRLF")),
    ]);
}

/// RFC 3179 section 6.1: `CommandError::reply` builds exactly the reply to send.
#[test]
fn s6_1_command_error_reply_values() {
    assert_eq!(
        CommandError::Unrecognized(mal(0, "command word")).reply(),
        None
    );
    assert_eq!(
        CommandError::UnknownCommand { id: Id(7) }.reply(),
        Some(neg(7, Negative::UnknownCommand))
    );
    for code in Negative::ALL {
        let e = CommandError::Rejected {
            id: Id(u64::MAX),
            code,
            why: mal(3, "x"),
        };
        assert_eq!(e.reply(), Some(neg(u64::MAX, code)));
    }
}

// ---------------------------------------------------------------------------------------------
// 5.3 Replies

/// RFC 3179 section 5.3: canonical lines of all 18 reply codes, decoded and re-encoded byte
/// for byte.
#[test]
fn s5_3_replies_decode_and_encode_exactly() {
    use RunState as S;
    let (r44, r_max) = (RunId(44), RunId(u64::MAX));
    let cases: Vec<(&[u8], Reply)> = vec![
        // 211 without and with Authenticator
        (
            b"211 1 SMX/1.1",
            Reply::Hello {
                id: Id(1),
                version: Version::V1_1,
                auth: None,
            },
        ),
        (
            b"211 1 SMX/1.1 0AF0BAED6F877FBC",
            Reply::Hello {
                id: Id(1),
                version: Version::V1_1,
                auth: Some(auth(&[0x0a, 0xf0, 0xba, 0xed, 0x6f, 0x87, 0x7f, 0xbc])),
            },
        ),
        (
            b"211 18446744073709551615 SMX/1.1 00",
            Reply::Hello {
                id: Id(u64::MAX),
                version: Version::V1_1,
                auth: Some(auth(&[0])),
            },
        ),
        (
            b"211 0 SMX/2.0",
            Reply::Hello {
                id: Id(0),
                version: Version { major: 2, minor: 0 },
                auth: None,
            },
        ),
        // 231 for every RunState
        (
            b"231 2 1",
            Reply::Status {
                id: Id(2),
                state: S::Initializing,
            },
        ),
        (
            b"231 2 2",
            Reply::Status {
                id: Id(2),
                state: S::Executing,
            },
        ),
        (
            b"231 2 3",
            Reply::Status {
                id: Id(2),
                state: S::Suspending,
            },
        ),
        (
            b"231 2 4",
            Reply::Status {
                id: Id(2),
                state: S::Suspended,
            },
        ),
        (
            b"231 2 5",
            Reply::Status {
                id: Id(2),
                state: S::Resuming,
            },
        ),
        (
            b"231 2 6",
            Reply::Status {
                id: Id(2),
                state: S::Aborting,
            },
        ),
        (
            b"231 2 7",
            Reply::Status {
                id: Id(2),
                state: S::Terminated,
            },
        ),
        (
            b"231 18446744073709551615 2",
            Reply::Status {
                id: Id(u64::MAX),
                state: S::Executing,
            },
        ),
        // 232
        (b"232 611", Reply::Aborted { id: Id(611) }),
        (b"232 0", Reply::Aborted { id: Id(0) }),
        // 4yz
        (b"401 3", neg(3, Negative::Syntax)),
        (b"402 3", neg(3, Negative::UnknownCommand)),
        (b"421 3", neg(3, Negative::IllegalScript)),
        (b"431 3", neg(3, Negative::IllegalRunId)),
        (b"432 12", neg(12, Negative::IllegalProfile)),
        (b"433 3", neg(3, Negative::IllegalArgument)),
        (
            b"434 18446744073709551615",
            neg(u64::MAX, Negative::CannotChange),
        ),
        // 511
        (b"511 0 \"\"", Reply::Message { text: q("") }),
        (
            b"511 0 \"runtime \\\"tcl\\\" ready\\r\\n\\t\\\\\"",
            Reply::Message {
                text: q("runtime \"tcl\" ready\r\n\t\\"),
            },
        ),
        // 531
        (
            b"531 0 44 7",
            Reply::StateChange {
                run: r44,
                state: S::Terminated,
            },
        ),
        (
            b"531 0 18446744073709551615 1",
            Reply::StateChange {
                run: r_max,
                state: S::Initializing,
            },
        ),
        // 532 / 533 with quoted, hex and empty results
        (
            b"532 0 44 2 \"waiting for response\"",
            Reply::Result {
                run: r44,
                state: S::Executing,
                result: oct(b"waiting for response"),
            },
        ),
        (
            b"532 0 44 4 00FF10",
            Reply::Result {
                run: r44,
                state: S::Suspended,
                result: oct(&[0, 0xff, 0x10]),
            },
        ),
        (
            b"532 0 44 7 \"\"",
            Reply::Result {
                run: r44,
                state: S::Terminated,
                result: oct(b""),
            },
        ),
        (
            b"533 0 44 2 \"event\"",
            Reply::ResultEvent {
                run: r44,
                state: S::Executing,
                result: oct(b"event"),
            },
        ),
        (
            b"533 0 18446744073709551615 3 C3A9",
            Reply::ResultEvent {
                run: r_max,
                state: S::Suspending,
                result: oct("é".as_bytes()),
            },
        ),
        // 534 / 535, deprecated but still decoded and encoded
        (
            b"534 0 44 \"done\"",
            Reply::Completed {
                run: r44,
                result: oct(b"done"),
            },
        ),
        (
            b"534 0 44 00",
            Reply::Completed {
                run: r44,
                result: oct(&[0]),
            },
        ),
        (
            b"535 0 44 6 \"boom\"",
            Reply::Failed {
                run: r44,
                exit: ExitCode::RuntimeError,
                error: oct(b"boom"),
            },
        ),
        (
            b"535 0 44 9 FF",
            Reply::Failed {
                run: r44,
                exit: ExitCode::GenericError,
                error: oct(&[0xff]),
            },
        ),
        // 536 / 537
        (
            b"536 0 44 2 \"division by zero\"",
            Reply::Error {
                run: r44,
                state: S::Executing,
                error: oct(b"division by zero"),
            },
        ),
        (
            b"536 0 44 6 \"\"",
            Reply::Error {
                run: r44,
                state: S::Aborting,
                error: oct(b""),
            },
        ),
        (
            b"537 0 44 2 \"disk full\"",
            Reply::ErrorEvent {
                run: r44,
                state: S::Executing,
                error: oct(b"disk full"),
            },
        ),
        (
            b"537 0 44 5 0102",
            Reply::ErrorEvent {
                run: r44,
                state: S::Resuming,
                error: oct(&[1, 2]),
            },
        ),
        // 538 for every ExitCode
        (
            b"538 0 44 1",
            Reply::Terminated {
                run: r44,
                exit: ExitCode::NoError,
            },
        ),
        (
            b"538 0 44 2",
            Reply::Terminated {
                run: r44,
                exit: ExitCode::Halted,
            },
        ),
        (
            b"538 0 44 3",
            Reply::Terminated {
                run: r44,
                exit: ExitCode::LifeTimeExceeded,
            },
        ),
        (
            b"538 0 44 4",
            Reply::Terminated {
                run: r44,
                exit: ExitCode::NoResourcesLeft,
            },
        ),
        (
            b"538 0 44 5",
            Reply::Terminated {
                run: r44,
                exit: ExitCode::LanguageError,
            },
        ),
        (
            b"538 0 44 6",
            Reply::Terminated {
                run: r44,
                exit: ExitCode::RuntimeError,
            },
        ),
        (
            b"538 0 44 7",
            Reply::Terminated {
                run: r44,
                exit: ExitCode::InvalidArgument,
            },
        ),
        (
            b"538 0 44 8",
            Reply::Terminated {
                run: r44,
                exit: ExitCode::SecurityViolation,
            },
        ),
        (
            b"538 0 44 9",
            Reply::Terminated {
                run: r44,
                exit: ExitCode::GenericError,
            },
        ),
        (
            b"538 0 18446744073709551615 1",
            Reply::Terminated {
                run: r_max,
                exit: ExitCode::NoError,
            },
        ),
    ];
    let mut codes: Vec<u16> = Vec::new();
    for (wire, reply) in cases {
        let line = crlf(wire);
        assert_eq!(Reply::decode(&line).as_ref(), Ok(&reply), "{}", show(&line));
        assert_eq!(show(&reply.to_bytes()), show(&line));
        let mut appended = b">".to_vec();
        reply.encode(&mut appended);
        assert_eq!(show(&appended), show(&[b">".as_slice(), &line].concat()));
        let code: u16 = std::str::from_utf8(&wire[..3]).unwrap().parse().unwrap();
        assert_eq!(reply.code(), code);
        codes.push(code);
    }
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(
        codes,
        [
            211, 231, 232, 401, 402, 421, 431, 432, 433, 434, 511, 531, 532, 533, 534, 535, 536,
            537, 538
        ],
        "every reply code of section 5.3 is covered"
    );
}

/// RFC 3179 section 5.3 and the input conventions of `smx::proto`: lenient but valid reply
/// lines, and the canonical form they are written back as.
#[test]
fn s5_3_replies_accept_non_canonical_forms() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"231 2 2\n", b"231 2 2\r\n"),
        (b"231\t2\t2\r\n", b"231 2 2\r\n"),
        (b"231 002 2\r\n", b"231 2 2\r\n"),
        (
            b"211 578 smx/1.1 0af0baed6f877fbc\r\n",
            b"211 578 SMX/1.1 0AF0BAED6F877FBC\r\n",
        ),
        (b"211 1 SMX/01.01\r\n", b"211 1 SMX/1.1\r\n"),
        (b"211\t1\tSMX/1.1\tabCD\n", b"211 1 SMX/1.1 ABCD\r\n"),
        (b"531\t0\t044\t7\n", b"531 0 44 7\r\n"),
        (b"532 0 44 2 48656c6c6f\r\n", b"532 0 44 2 \"Hello\"\r\n"),
        (b"532 0 44 2 \"a\tb\\z\"\r\n", b"532 0 44 2 \"a\\tbz\"\r\n"),
        (b"536 0 44 2 ff\r\n", b"536 0 44 2 FF\r\n"),
        (b"511 0 \"\\h\\i\"\n", b"511 0 \"hi\"\r\n"),
        (b"538\t0\t1\t1\r\n", b"538 0 1 1\r\n"),
        (b"434 0000\r\n", b"434 0\r\n"),
    ];
    for &(input, canonical) in cases {
        let r = Reply::decode(input).unwrap_or_else(|e| panic!("{}: {e}", show(input)));
        assert_eq!(show(&r.to_bytes()), show(canonical), "{}", show(input));
        assert_eq!(Reply::decode(canonical), Ok(r));
    }
}

/// RFC 3179 section 5.3: invalid reply lines, with where and why they fail.
#[test]
fn s5_3_invalid_replies() {
    let cases: &[(&[u8], usize, &str)] = &[
        // 211
        (b"211 1\r\n", 5, "Version"),
        (b"211 1 SNMP/1.1\r\n", 6, "Version"),
        (b"211 1 SMX/1.1 0AF\r\n", 14, "Authenticator"), // odd hex length
        (b"211 1 SMX/1.1 XYZW\r\n", 14, "Authenticator"),
        (b"211 1 SMX/1.1 \r\n", 14, "Authenticator"),
        (b"211 1 SMX/1.1 \"00\"\r\n", 14, "Authenticator"), // no quoted form
        (b"211 1 SMX/1.1 00 00\r\n", 16, "CRLF"),
        (b"211 1 SMX/1.1  00\r\n", 14, "Authenticator"),
        (b"211 x SMX/1.1\r\n", 4, "Id"),
        (b"211 18446744073709551616 SMX/1.1\r\n", 4, "Id"),
        // 231
        (b"231 1 0\r\n", 6, "RunState"),
        (b"231 1 8\r\n", 6, "RunState"),
        (b"231 1 9\r\n", 6, "RunState"),
        (b"231 1 22\r\n", 6, "RunState"),
        (b"231 1 02\r\n", 6, "RunState"),
        (b"231 1\r\n", 5, "RunState"),
        (b"231 1 2 3\r\n", 7, "CRLF"),
        (b"231 -1 2\r\n", 4, "Id"),
        // 232
        (b"232\r\n", 3, "Id"),
        (b"232 1 2\r\n", 5, "CRLF"),
        (b"232 x\r\n", 4, "Id"),
        // 4yz
        (b"401\r\n", 3, "Id"),
        (b"402 \r\n", 4, "Id"),
        (b"434 1 x\r\n", 5, "CRLF"),
        (b"431 1x\r\n", 4, "Id"),
        // 5yz: the Id must be exactly "0"
        (b"511 1 \"x\"\r\n", 4, "Id 0 of a notification"),
        (b"511 00 \"x\"\r\n", 4, "Id 0 of a notification"),
        (b"531 1 44 2\r\n", 4, "Id 0 of a notification"),
        (b"532 7 44 2 \"x\"\r\n", 4, "Id 0 of a notification"),
        (b"537 00 44 2 \"x\"\r\n", 4, "Id 0 of a notification"),
        (b"538 1 44 1\r\n", 4, "Id 0 of a notification"),
        (
            b"538 18446744073709551616 44 1\r\n",
            4,
            "Id 0 of a notification",
        ),
        (b"538 44 1\r\n", 4, "Id 0 of a notification"), // the Zero forgotten
        // 511
        (b"511 0 hello\r\n", 6, "QuotedString"),
        (b"511 0 \"a\" \"b\"\r\n", 9, "CRLF"),
        (b"511 0\r\n", 5, "QuotedString"),
        // 531
        (b"531 0 44 8\r\n", 9, "RunState"),
        (b"531 0 44 0\r\n", 9, "RunState"),
        (b"531 0 44\r\n", 8, "RunState"),
        (b"531 0 x 2\r\n", 6, "RunId"),
        (b"531 0 18446744073709551616 2\r\n", 6, "RunId"),
        // 532 / 533
        (b"532 0 44 2\r\n", 10, "Result"),
        (b"532 0 44 8 \"x\"\r\n", 9, "RunState"),
        (b"532 0 44 2 ABC\r\n", 11, "Result"),
        (b"532 0 44 2 \"x\r\n", 11, "Result"),
        (b"532 0 44 2 \"x\" y\r\n", 14, "CRLF"),
        (b"533 0 44 9 \"\"\r\n", 9, "RunState"),
        (b"533 0 44 \"x\"\r\n", 9, "RunState"),
        // 534: no RunState
        (b"534 0 44 2 \"x\"\r\n", 9, "Result"),
        (b"534 0 44\r\n", 8, "Result"),
        // 535
        (b"535 0 44 0 \"x\"\r\n", 9, "ExitCode"),
        (b"535 0 44 10 \"x\"\r\n", 9, "ExitCode"),
        (b"535 0 44 1\r\n", 10, "ErrorMsg"),
        // 536 / 537
        (b"536 0 44 2\r\n", 10, "ErrorMsg"),
        (b"536 0 44 2 \"\x01\"\r\n", 11, "ErrorMsg"),
        (b"537 0 44 7 zz\r\n", 11, "ErrorMsg"),
        // 538
        (b"538 0 44 0\r\n", 9, "ExitCode"),
        (b"538 0 44 10\r\n", 9, "ExitCode"),
        (b"538 0 44 a\r\n", 9, "ExitCode"),
        (b"538 0 44 1 \"x\"\r\n", 10, "CRLF"),
        (b"538 0 44\r\n", 8, "ExitCode"),
        // terminators and WSP
        (b"231 1 2", 7, "CRLF"),
        (b"231 1 2\r", 7, "CRLF"),
        (b"231 1 2\r\r\n", 7, "CRLF"),
        (b"231 1 2 \r\n", 7, "CRLF"),
        (b"231 1 2\n\r\n", 7, "CRLF"),
        (b"231 1\r2\r\n", 5, "RunState"), // CR in the middle
        (b"231  1 2\r\n", 4, "Id"),       // double WSP
        (b"231 1  2\r\n", 6, "RunState"),
        (b"232 1\r\n232 2\r\n", 5, "CRLF"), // two messages in one
        (b"538 0 44 1", 10, "CRLF"),
        (b"211 1 SMX/1.1", 13, "Authenticator"), // no terminator after the optional field
    ];
    let mut failures = Vec::new();
    for &(input, at, expected) in cases {
        let got = Reply::decode(input);
        if got != Err(mal(at, expected)) {
            failures.push(format!(
                "{}: got {got:?}, want {at} {expected:?}",
                show(input)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// RFC 3179 section 5.3: codes outside the 18 of SMX/1.1 (including the unused classes 1yz
/// and 3yz) and things that are not three digits.
#[test]
fn s5_3_unknown_reply_codes() {
    // every three-digit code but the 18 of section 5.3, with an Id of 0 so that the 5yz
    // rule "Id is Zero" is met and only the code is wrong
    let defined = [
        211, 231, 232, 401, 402, 421, 431, 432, 433, 434, 511, 531, 532, 533, 534, 535, 536, 537,
        538,
    ];
    let mut undefined = 0;
    for code in (0u16..1000).filter(|c| !defined.contains(c)) {
        for tail in ["", " 1", " 1 2", " \"x\"", " 1 1 \"x\""] {
            let line = format!("{code:03} 0{tail}\r\n");
            assert_eq!(
                Reply::decode(line.as_bytes()),
                Err(mal(0, "a reply code defined by SMX/1.1")),
                "{line:?}"
            );
        }
        undefined += 1;
    }
    assert_eq!(undefined, 1000 - 19);
    let not_a_code: &[&[u8]] = &[
        b"",
        b"\r\n",
        b"2111 1",
        b"21 1",
        b"21a 1",
        b"+21 1",
        b" 211 1 SMX/1.1",
        b"\t231 1 2",
        b"abc 1",
        "\u{ff12}\u{ff13}\u{ff11} 1 2".as_bytes(),
    ];
    for &wire in not_a_code {
        let line = crlf(wire);
        assert_eq!(
            Reply::decode(&line),
            Err(mal(0, "three-digit reply code")),
            "{}",
            show(&line)
        );
    }
}

/// RFC 3179 section 5.3: encoding of every reply variant, built from values (the 5yz Id is
/// always written as `0`; octet strings take their preferred form).
#[test]
fn s5_3_encode_exact_bytes() {
    let cases: Vec<(Reply, &[u8])> = vec![
        (
            Reply::Hello {
                id: Id(578),
                version: Version::V1_1,
                auth: None,
            },
            b"211 578 SMX/1.1\r\n",
        ),
        (
            Reply::Hello {
                id: Id(578),
                version: Version::V1_1,
                auth: Some(auth(&[0x0a, 0xf0, 0xba, 0xed, 0x6f, 0x87, 0x7f, 0xbc])),
            },
            b"211 578 SMX/1.1 0AF0BAED6F877FBC\r\n",
        ),
        (
            Reply::Hello {
                id: Id(1),
                version: Version {
                    major: 10,
                    minor: 20,
                },
                auth: Some(auth(&[0xff; 3])),
            },
            b"211 1 SMX/10.20 FFFFFF\r\n",
        ),
        (
            Reply::Status {
                id: Id(19),
                state: RunState::Executing,
            },
            b"231 19 2\r\n",
        ),
        (Reply::Aborted { id: Id(611) }, b"232 611\r\n"),
        (neg(1, Negative::Syntax), b"401 1\r\n"),
        (neg(2, Negative::UnknownCommand), b"402 2\r\n"),
        (neg(3, Negative::IllegalScript), b"421 3\r\n"),
        (neg(4, Negative::IllegalRunId), b"431 4\r\n"),
        (neg(5, Negative::IllegalProfile), b"432 5\r\n"),
        (neg(6, Negative::IllegalArgument), b"433 6\r\n"),
        (neg(7, Negative::CannotChange), b"434 7\r\n"),
        (
            Reply::Message {
                text: q("a \"b\"\\"),
            },
            b"511 0 \"a \\\"b\\\"\\\\\"\r\n",
        ),
        (
            Reply::Message {
                text: Quoted::lossy(b"bad \xff byte"),
            },
            b"511 0 \"bad \\\\xFF byte\"\r\n",
        ),
        (
            Reply::StateChange {
                run: RunId(u64::MAX),
                state: RunState::Suspended,
            },
            b"531 0 18446744073709551615 4\r\n",
        ),
        (
            Reply::Result {
                run: RunId(44),
                state: RunState::Terminated,
                result: oct(b"test completed"),
            },
            b"532 0 44 7 \"test completed\"\r\n",
        ),
        (
            Reply::ResultEvent {
                run: RunId(1),
                state: RunState::Executing,
                result: oct(&[0, 1, 0xfe]),
            },
            b"533 0 1 2 0001FE\r\n",
        ),
        (
            Reply::Completed {
                run: RunId(1),
                result: oct(b""),
            },
            b"534 0 1 \"\"\r\n",
        ),
        (
            Reply::Failed {
                run: RunId(1),
                exit: ExitCode::SecurityViolation,
                error: oct(b"denied\n"),
            },
            b"535 0 1 8 \"denied\\n\"\r\n",
        ),
        (
            Reply::Error {
                run: RunId(1),
                state: RunState::Executing,
                error: oct(b"\x00"),
            },
            b"536 0 1 2 00\r\n",
        ),
        (
            Reply::ErrorEvent {
                run: RunId(1),
                state: RunState::Aborting,
                error: oct(b"x\ty"),
            },
            b"537 0 1 6 \"x\\ty\"\r\n",
        ),
        (
            Reply::Terminated {
                run: RunId(1),
                exit: ExitCode::LifeTimeExceeded,
            },
            b"538 0 1 3\r\n",
        ),
    ];
    for (reply, wire) in cases {
        assert_eq!(show(&reply.to_bytes()), show(wire), "{reply:?}");
        assert_eq!(Reply::decode(wire), Ok(reply));
    }
}

/// RFC 3179 section 5.3: reply accessors and the Negative code table.
#[test]
fn s5_3_reply_accessors() {
    let codes: Vec<u16> = Negative::ALL.iter().map(|n| n.code()).collect();
    assert_eq!(codes, [401, 402, 421, 431, 432, 433, 434]);
    for n in Negative::ALL {
        assert_eq!(Negative::from_code(n.code()), Some(n));
    }
    for c in [0, 400, 403, 430, 435, 211, 531] {
        assert_eq!(Negative::from_code(c), None);
    }
    assert_eq!(
        Negative::IllegalProfile.to_string(),
        "432 (unknown or illegal Profile)"
    );
    let st = Reply::Status {
        id: Id(5),
        state: RunState::Executing,
    };
    assert_eq!((st.id(), st.run()), (Some(Id(5)), None));
    let tm = Reply::Terminated {
        run: RunId(9),
        exit: ExitCode::NoError,
    };
    assert_eq!((tm.id(), tm.run(), tm.code()), (None, Some(RunId(9)), 538));
    let msg = Reply::Message { text: q("x") };
    assert_eq!((msg.id(), msg.run(), msg.code()), (None, None, 511));
}

/// RFC 3179 section 5.3 (and `smx::proto::MAX_RESULT_OCTETS`): the largest smRunResult,
/// hex-encoded in a 532, round-trips and fits the default line limit of the framer.
#[test]
fn s5_3_largest_result_round_trips() {
    let octets: Vec<u8> = (0..smx::proto::MAX_RESULT_OCTETS)
        .map(|i| (i * 7 + 3) as u8)
        .collect();
    let r = Reply::Result {
        run: RunId(u64::MAX),
        state: RunState::Executing,
        result: oct(&octets),
    };
    let wire = r.to_bytes();
    assert_eq!(
        wire.len(),
        "532 0 18446744073709551615 2 ".len() + 2 * 65535 + 2
    );
    assert!(wire.len() <= DEFAULT_MAX_LINE);
    assert_eq!(Reply::decode(&wire), Ok(r));
}

// ---------------------------------------------------------------------------------------------
// 7 Example SMX Message Flow

/// `>` from the SNMP agent (a command), `<` from the runtime system (a reply).
fn section7_flow() -> Vec<(char, &'static [u8], Result<Command, Reply>)> {
    use RunState::Executing as Exe;
    vec![
        ('>', b"hello 1", Ok(Command::Hello { id: Id(1) })),
        (
            '<',
            b"211 1 SMX/1.1 0AF0BAED6F877FBC",
            Err(Reply::Hello {
                id: Id(1),
                version: Version::V1_1,
                auth: Some(auth(&[0x0a, 0xf0, 0xba, 0xed, 0x6f, 0x87, 0x7f, 0xbc])),
            }),
        ),
        (
            '>',
            br#"start 2 42 "/var/snmp/scripts/foo.jar" untrusted """#,
            Ok(start(2, 42, "/var/snmp/scripts/foo.jar", "untrusted", b"")),
        ),
        (
            '>',
            br#"start 5 44 "/var/snmp/scripts/bar.jar" trusted "www.ietf.org""#,
            Ok(start(
                5,
                44,
                "/var/snmp/scripts/bar.jar",
                "trusted",
                b"www.ietf.org",
            )),
        ),
        (
            '<',
            b"231 2 2",
            Err(Reply::Status {
                id: Id(2),
                state: Exe,
            }),
        ),
        (
            '>',
            br#"start 12 48 "/var/snmp/scripts/foo.jar" funny """#,
            Ok(start(12, 48, "/var/snmp/scripts/foo.jar", "funny", b"")),
        ),
        (
            '<',
            b"231 5 2",
            Err(Reply::Status {
                id: Id(5),
                state: Exe,
            }),
        ),
        (
            '<',
            br#"532 0 44 2 "waiting for response""#,
            Err(Reply::Result {
                run: RunId(44),
                state: Exe,
                result: oct(b"waiting for response"),
            }),
        ),
        (
            '>',
            b"status 18 42",
            Ok(Command::Status {
                id: Id(18),
                run: RunId(42),
            }),
        ),
        (
            '>',
            b"status 19 44",
            Ok(Command::Status {
                id: Id(19),
                run: RunId(44),
            }),
        ),
        ('<', b"432 12", Err(neg(12, Negative::IllegalProfile))),
        (
            '<',
            b"231 19 2",
            Err(Reply::Status {
                id: Id(19),
                state: Exe,
            }),
        ),
        (
            '<',
            b"231 18 2",
            Err(Reply::Status {
                id: Id(18),
                state: Exe,
            }),
        ),
        ('>', b"hello 578", Ok(Command::Hello { id: Id(578) })),
        (
            '<',
            b"211 578 SMX/1.1 0AF0BAED6F877FBC",
            Err(Reply::Hello {
                id: Id(578),
                version: Version::V1_1,
                auth: Some(auth(&[0x0a, 0xf0, 0xba, 0xed, 0x6f, 0x87, 0x7f, 0xbc])),
            }),
        ),
        (
            '>',
            b"suspend 581 42",
            Ok(Command::Suspend {
                id: Id(581),
                run: RunId(42),
            }),
        ),
        (
            '<',
            b"231 581 4",
            Err(Reply::Status {
                id: Id(581),
                state: RunState::Suspended,
            }),
        ),
        (
            '<',
            br#"532 0 44 7 "test completed""#,
            Err(Reply::Result {
                run: RunId(44),
                state: RunState::Terminated,
                result: oct(b"test completed"),
            }),
        ),
        (
            '<',
            b"538 0 44 1",
            Err(Reply::Terminated {
                run: RunId(44),
                exit: ExitCode::NoError,
            }),
        ),
        (
            '>',
            b"abort 611 42",
            Ok(Command::Abort {
                id: Id(611),
                run: RunId(42),
            }),
        ),
        ('<', b"232 611", Err(Reply::Aborted { id: Id(611) })),
    ]
}

/// RFC 3179 section 7: every line of the example flow decodes to the expected message and
/// re-encodes to the same bytes (CRLF added, as section 7 hides it).
#[test]
fn s7_example_flow_line_by_line() {
    let flow = section7_flow();
    assert_eq!(flow.len(), 21);
    for (dir, wire, want) in flow {
        let line = crlf(wire);
        match (dir, want) {
            ('>', Ok(cmd)) => {
                assert_eq!(Command::decode(&line).as_ref(), Ok(&cmd), "{}", show(&line));
                assert_eq!(show(&cmd.to_bytes()), show(&line));
                // a command is never a reply, in case the directions get mixed up
                assert!(Reply::decode(&line).is_err());
            }
            ('<', Err(reply)) => {
                assert_eq!(Reply::decode(&line).as_ref(), Ok(&reply), "{}", show(&line));
                assert_eq!(show(&reply.to_bytes()), show(&line));
                assert!(Command::decode(&line).is_err());
            }
            _ => unreachable!("direction and message kind disagree"),
        }
    }
}

/// Frames everything `chunks` delivers, the way `LineReader` does, and decodes nothing.
fn frame_all(chunks: &[&[u8]], max_line: usize) -> Vec<Frame> {
    let mut framer = LineFramer::new(max_line);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(f) = framer.next_frame(&mut buf) {
            out.push(f);
        }
    }
    out.extend(framer.finish(&mut buf));
    out
}

/// RFC 3179 sections 7 and 8: each direction of the example flow as one byte stream, cut into
/// chunks of every size from 1 byte up (so CRLF is split across reads), framed and decoded.
#[test]
fn s7_example_flow_as_byte_streams() {
    let flow = section7_flow();
    for dir in ['>', '<'] {
        let msgs: Vec<_> = flow.iter().filter(|m| m.0 == dir).collect();
        let stream: Vec<u8> = msgs.iter().flat_map(|m| crlf(m.1)).collect();
        for size in 1..=stream.len() {
            let chunks: Vec<&[u8]> = stream.chunks(size).collect();
            let frames = frame_all(&chunks, 1024);
            assert_eq!(frames.len(), msgs.len(), "chunk size {size}");
            for (frame, (_, wire, want)) in frames.iter().zip(&msgs) {
                let Frame::Line(line) = frame else {
                    panic!("unexpected {frame:?}")
                };
                assert_eq!(show(line), show(&crlf(wire)));
                match want {
                    Ok(cmd) => assert_eq!(Command::decode(line).as_ref(), Ok(cmd)),
                    Err(reply) => assert_eq!(Reply::decode(line).as_ref(), Ok(reply)),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8 Transport: line framing

fn line(b: &[u8]) -> Frame {
    Frame::Line(Bytes::copy_from_slice(b))
}

/// RFC 3179 section 8: CRLF split across two reads still ends one line; bare LF ends a line;
/// a lone CR does not.
#[test]
fn s8_framing_crlf_split_across_reads() {
    assert_eq!(
        frame_all(&[b"231 1 2\r", b"\n231 2 4\r", b"\n"], 64),
        vec![line(b"231 1 2\r\n"), line(b"231 2 4\r\n")]
    );
    assert_eq!(
        frame_all(&[b"232 1\n232 2\r\n"], 64),
        vec![line(b"232 1\n"), line(b"232 2\r\n")]
    );
    // a CR in the middle does not end a line; the decoder then rejects it
    let frames = frame_all(&[b"231 1\r2\r\n"], 64);
    assert_eq!(frames, vec![line(b"231 1\r2\r\n")]);
    assert_eq!(Reply::decode(b"231 1\r2\r\n"), Err(mal(5, "RunState")));
}

/// RFC 3179 section 8 with a bounded framer: an over-long line is reported once, skipped up to
/// its LF, and the next line is intact.
#[test]
fn s8_framing_overlong_line_is_skipped() {
    let long = Reply::Result {
        run: RunId(44),
        state: RunState::Executing,
        result: oct(&[0xab; 100]),
    }
    .to_bytes();
    assert_eq!(long.len(), 213);
    // in one chunk
    assert_eq!(
        frame_all(&[&long, b"538 0 44 1\r\n"], 64),
        vec![Frame::Overlong, line(b"538 0 44 1\r\n")]
    );
    // byte by byte: still one Overlong, and the buffer never holds more than the limit + 1
    let stream = [long.as_slice(), &long, b"538 0 44 1\r\n"].concat();
    let mut framer = LineFramer::new(64);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for &b in &stream {
        buf.extend_from_slice(&[b]);
        while let Some(f) = framer.next_frame(&mut buf) {
            frames.push(f);
        }
        assert!(buf.len() <= 65, "buffered {} bytes", buf.len());
    }
    assert_eq!(framer.finish(&mut buf), None);
    assert_eq!(
        frames,
        vec![Frame::Overlong, Frame::Overlong, line(b"538 0 44 1\r\n")]
    );
    // exactly at the limit passes, one more byte does not
    assert_eq!(frame_all(&[b"232 12\r\n"], 8), vec![line(b"232 12\r\n")]);
    assert_eq!(frame_all(&[b"232 123\r\n"], 8), vec![Frame::Overlong]);
}

/// RFC 3179 section 8: bytes after the last LF at end of stream come out as an unterminated
/// line, which the decoders reject as a missing CRLF (a 401 for a command, section 6.1).
#[test]
fn s8_framing_unterminated_tail() {
    let frames = frame_all(&[b"hello 1\r\nstatus 2 42"], 64);
    assert_eq!(frames, vec![line(b"hello 1\r\n"), line(b"status 2 42")]);
    let Frame::Line(tail) = &frames[1] else {
        unreachable!()
    };
    assert_eq!(
        Command::decode(tail).map_err(|e| e.reply()),
        Err(Some(neg(2, Negative::Syntax)))
    );
    // an over-long unterminated tail is dropped, not handed out
    assert_eq!(frame_all(&[&[b'x'; 100]], 64), vec![Frame::Overlong]);
    assert_eq!(frame_all(&[b""], 64), vec![]);
}

/// An `AsyncRead` that hands out at most `step` bytes per read.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    step: usize,
}

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self
            .step
            .min(self.data.len() - self.pos)
            .min(buf.remaining());
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// RFC 3179 sections 7 and 8: `LineReader` over a stream that delivers one byte per read.
#[tokio::test]
async fn s8_line_reader_one_byte_reads() {
    let data = b"211 1 SMX/1.1\r\n231 2 2\n538 0 44 1".to_vec();
    let mut r = LineReader::new(
        Trickle {
            data,
            pos: 0,
            step: 1,
        },
        64,
    );
    let mut got = Vec::new();
    while let Some(f) = r.next().await.unwrap() {
        got.push(f);
    }
    assert_eq!(
        got,
        vec![
            line(b"211 1 SMX/1.1\r\n"),
            line(b"231 2 2\n"),
            line(b"538 0 44 1")
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// The golden vectors (tests/vectors/smx.txt), shared with smx conform and the Python and Tcl
// runtimes' own tests

/// What a runtime that has just said hello and runs nothing answers to `msg`, by the codec:
/// the decode error's reply (section 6.1), else 211 (6.1.1), else for `start` items 3 and 4
/// of 6.1.2 (the vectors name a missing file, or a readable one with a profile no runtime
/// knows), else 431 (no such run, 6.1.3-6.1.6 item 1).
fn fresh_runtime_answer(msg: &[u8]) -> Option<Reply> {
    match Command::decode(msg) {
        Err(e) => e.reply(),
        Ok(Command::Hello { id }) => Some(Reply::Hello {
            id,
            version: Version::V1_1,
            auth: None,
        }),
        Ok(Command::Start {
            id,
            script,
            profile,
            ..
        }) => {
            use std::os::unix::ffi::OsStrExt;
            let path = std::path::Path::new(std::ffi::OsStr::from_bytes(script.as_bytes()));
            let readable = std::fs::File::open(path)
                .and_then(|f| f.metadata())
                .is_ok_and(|m| m.is_file());
            if !readable {
                return Some(neg(id.0, Negative::IllegalScript));
            }
            assert_eq!(
                profile.as_str(),
                "smx-vector-unknown",
                "{}: a vector must not start a run",
                show(msg)
            );
            Some(neg(id.0, Negative::IllegalProfile))
        }
        Ok(c) => Some(neg(c.id().0, Negative::IllegalRunId)),
    }
}

/// RFC 3179 sections 5 and 6.1, tests/vectors/smx.txt: the codec (the exec runtime's parser,
/// and the grammar `smx conform` holds runtimes to) answers every golden vector exactly as
/// the file says, byte for byte.
#[test]
fn golden_vectors_match_the_codec() {
    let vectors = smx::conform::vectors().expect("tests/vectors/smx.txt parses");
    assert!(vectors.len() >= 250, "only {} vectors", vectors.len());
    let mut failures = Vec::new();
    for v in &vectors {
        let got = fresh_runtime_answer(&v.command).map(|r| r.to_bytes());
        let want = v.answer.as_ref().map(|r| r.to_bytes());
        if got != want {
            failures.push(format!(
                "smx.txt:{} ({}) {}: want {:?}, codec answers {:?}",
                v.line,
                v.section,
                v.text,
                v.answer_text,
                got.as_deref().map(show)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The vector file's own rules: every section is one RFC 3179 names, every check order of
/// 6.1.2 item 1 and every reply code a fresh runtime can owe is covered.
#[test]
fn golden_vectors_cover_the_grammar() {
    let vectors = smx::conform::vectors().expect("tests/vectors/smx.txt parses");
    let sections = [
        "5.1", "5.2", "6.1", "6.1.1", "6.1.2", "6.1.3", "6.1.4", "6.1.5", "6.1.6",
    ];
    for v in &vectors {
        assert!(
            sections.contains(&v.section),
            "smx.txt:{}: section {}",
            v.line,
            v.section
        );
    }
    let codes: std::collections::BTreeSet<u16> = vectors
        .iter()
        .map(|v| v.answer.as_ref().map_or(0, Reply::code))
        .collect();
    assert_eq!(
        codes.into_iter().collect::<Vec<_>>(),
        [0, 211, 401, 402, 421, 431, 432, 433],
        "discard and every reply a runtime owes a fresh command"
    );
    for w in ["hello", "start", "suspend", "resume", "abort", "status"] {
        for code in [401, 431] {
            if w == "hello" && code == 431 {
                continue;
            }
            assert!(
                vectors
                    .iter()
                    .any(|v| v.text.to_ascii_lowercase().starts_with(w)
                        && v.answer.as_ref().is_some_and(|r| r.code() == code)),
                "no {code} vector for {w}"
            );
        }
    }
    // All 16 combinations of good and bad start parameters (6.1.2 item 1 a-d).
    let order = vectors
        .iter()
        .filter(|v| v.section == "6.1.2")
        .filter(|v| (20..36).any(|id| v.text.starts_with(&format!("start {id} "))))
        .count();
    assert_eq!(order, 16, "the 6.1.2 item 1 order matrix");
    let text = |s: &str| vectors.iter().any(|v| v.text.contains(s));
    for s in [
        "<09>",
        "<0A>",
        "<0D>",
        "<00>",
        "18446744073709551615",
        "18446744073709551616",
    ] {
        assert!(text(s), "no vector with {s}");
    }
}
