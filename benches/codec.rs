//! Decode throughput of the SMX/1.1 codec next to a plain memchr line split of the same bytes.
//!
//! Run with `cargo bench --bench codec`. The corpus is a deterministic mix (about 32 MB) of
//! what a host reads from its runtimes, mostly replies (231, 232, 531, 532/533 with quoted
//! and hex results of varied sizes including some large ones, 536/537, 538, 211, 4yz, 511)
//! and some commands. Every round times each method over the whole corpus; the table shows
//! the median of the rounds. MB is 10^6 bytes.
//!
//! Plain `Instant` timing rather than criterion or divan: the quantity of interest is a ratio
//! of two throughputs over one large corpus measured in the same process and round, which a
//! dozen lines do exactly, and it keeps the dev-dependencies as they are.
//!
//! Arguments (after `--`): `--rounds N` (default 7), `--mb N` corpus size (default 32),
//! `--only mixed|small|large` to measure one corpus (handy under a profiler).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use smx::framing::{DEFAULT_MAX_LINE, Frame, LineFramer};
use smx::proto::{
    Authenticator, Command, ExitCode, Id, Negative, Octets, Profile, Quoted, Reply, RunId,
    RunState, Version,
};

/// splitmix64: a tiny deterministic generator, so every run measures the same corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }

    fn state(&mut self) -> RunState {
        RunState::ALL[self.below(RunState::ALL.len() as u64) as usize]
    }

    fn exit(&mut self) -> ExitCode {
        ExitCode::ALL[self.below(ExitCode::ALL.len() as u64) as usize]
    }

    fn id(&mut self) -> Id {
        Id(self.below(1_000_000))
    }

    fn run(&mut self) -> RunId {
        RunId(self.below(100_000))
    }

    /// Printable text like script output: words, punctuation, now and then a quote, a
    /// backslash, a tab or a newline (which the encoder escapes).
    fn text(&mut self, len: usize) -> Vec<u8> {
        const WORDS: &[&[u8]] = &[
            b"ifInOctets",
            b"=",
            b"42",
            b"ok",
            b"error:",
            b"timeout",
            b"host",
            b"10.0.0.1",
            b"value",
            b"sysUpTime",
            b"1234567",
            b"up",
            b"down",
            b"/var/log/x",
            b"(c)",
            b"done",
        ];
        let mut v = Vec::with_capacity(len + 16);
        while v.len() < len {
            v.extend_from_slice(WORDS[self.below(WORDS.len() as u64) as usize]);
            v.push(match self.below(40) {
                0 => b'\t',
                1 => b'\n',
                2 => b'"',
                3 => b'\\',
                _ => b' ',
            });
        }
        v.truncate(len);
        v
    }

    fn binary(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        // make sure it is not quotable, so it is sent as hex
        if let Some(b) = v.first_mut() {
            *b = 0x00;
        }
        v
    }
}

/// One realistic line, drawn from the mix a host sees.
fn message(rng: &mut Rng, out: &mut Vec<u8>) {
    let roll = rng.below(10_000);
    let reply = |r: Reply, out: &mut Vec<u8>| r.encode(out);
    match roll {
        // 231 status replies
        0..=1699 => reply(
            Reply::Status {
                id: rng.id(),
                state: rng.state(),
            },
            out,
        ),
        // 232 abort replies
        1700..=1999 => reply(Reply::Aborted { id: rng.id() }, out),
        // 531 state changes
        2000..=3699 => reply(
            Reply::StateChange {
                run: rng.run(),
                state: rng.state(),
            },
            out,
        ),
        // 532/533 with a small quoted result
        3700..=5199 => {
            let (run, state) = (rng.run(), rng.state());
            let len = rng.range(0, 120);
            let result = Octets::new(rng.text(len));
            reply(
                if roll.is_multiple_of(3) {
                    Reply::ResultEvent { run, state, result }
                } else {
                    Reply::Result { run, state, result }
                },
                out,
            )
        }
        // 532/533 with a small hex result
        5200..=5899 => {
            let (run, state) = (rng.run(), rng.state());
            let len = rng.range(1, 64);
            let result = Octets::new(rng.binary(len));
            reply(
                if roll.is_multiple_of(3) {
                    Reply::ResultEvent { run, state, result }
                } else {
                    Reply::Result { run, state, result }
                },
                out,
            )
        }
        // 532 with a medium or large quoted result (up to 16 KB)
        5900..=5949 => {
            let len = rng.range(1024, 16 * 1024);
            reply(
                Reply::Result {
                    run: rng.run(),
                    state: RunState::Executing,
                    result: Octets::new(rng.text(len)),
                },
                out,
            )
        }
        // 532 with a large hex result (up to the full 65535-octet smRunResult)
        5950..=5964 => {
            let len = rng.range(4096, 65535);
            reply(
                Reply::Result {
                    run: rng.run(),
                    state: RunState::Executing,
                    result: Octets::new(rng.binary(len)),
                },
                out,
            )
        }
        // 536/537 error messages (smRunError is at most 255 octets)
        5965..=6464 => {
            let (run, state) = (rng.run(), rng.state());
            let len = rng.range(10, 255);
            let error = Octets::new(rng.text(len));
            reply(
                if roll.is_multiple_of(2) {
                    Reply::Error { run, state, error }
                } else {
                    Reply::ErrorEvent { run, state, error }
                },
                out,
            )
        }
        // 538 terminations
        6465..=7364 => reply(
            Reply::Terminated {
                run: rng.run(),
                exit: rng.exit(),
            },
            out,
        ),
        // 211 hello replies with an authenticator
        7365..=7464 => reply(
            Reply::Hello {
                id: rng.id(),
                version: Version::V1_1,
                auth: Authenticator::new(rng.binary(16)),
            },
            out,
        ),
        // 4yz
        7465..=7664 => reply(
            Reply::Negative {
                id: rng.id(),
                code: Negative::ALL[rng.below(7) as usize],
            },
            out,
        ),
        // 511 messages
        7665..=7764 => {
            let len = rng.range(10, 80);
            reply(
                Reply::Message {
                    text: Quoted::new(rng.text(len)).expect("text is quotable"),
                },
                out,
            )
        }
        // commands: start with an argument, status, suspend/resume/abort, hello
        _ => {
            let (id, run) = (rng.id(), rng.run());
            let cmd = match roll % 8 {
                0 | 1 => Command::Start {
                    id,
                    run,
                    script: Quoted::new(format!(
                        "/var/lib/smx/scripts/owner{}/s{}.tcl",
                        run.0 % 97,
                        run.0
                    ))
                    .expect("quotable"),
                    profile: "untrusted".parse::<Profile>().expect("valid"),
                    argument: Octets::new(if roll % 16 < 8 {
                        let len = rng.range(0, 60);
                        rng.text(len)
                    } else {
                        let len = rng.range(1, 32);
                        rng.binary(len)
                    }),
                },
                2..=4 => Command::Status { id, run },
                5 => Command::Suspend { id, run },
                6 => Command::Abort { id, run },
                _ => Command::Hello { id },
            };
            cmd.encode(out)
        }
    }
}

struct Corpus {
    bytes: Vec<u8>,
    lines: usize,
}

fn build_corpus(target: usize, seed: u64, filter: impl Fn(usize) -> bool) -> Corpus {
    let mut rng = Rng(seed);
    let mut bytes = Vec::with_capacity(target + 200_000);
    let mut lines = 0;
    let mut scratch = Vec::new();
    while bytes.len() < target {
        scratch.clear();
        message(&mut rng, &mut scratch);
        if filter(scratch.len()) {
            bytes.extend_from_slice(&scratch);
            lines += 1;
        }
    }
    Corpus { bytes, lines }
}

/// Splits at LF, like the framer does, and hands each line (LF included) to `f`.
#[inline(always)]
fn for_each_line(bytes: &[u8], mut f: impl FnMut(&[u8])) {
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', bytes) {
        f(&bytes[start..=end]);
        start = end + 1;
    }
    if start < bytes.len() {
        f(&bytes[start..]);
    }
}

/// Decodes a line as a reply when it starts with a digit, else as a command.
#[inline(always)]
fn decode_line(line: &[u8]) -> bool {
    if line.first().is_some_and(u8::is_ascii_digit) {
        black_box(Reply::decode(line)).is_ok()
    } else {
        black_box(Command::decode(line)).is_ok()
    }
}

fn memchr_split(c: &Corpus) -> usize {
    let mut n = 0;
    let mut sum = 0usize;
    for_each_line(black_box(&c.bytes), |l| {
        n += 1;
        sum = sum.wrapping_add(black_box(l).len());
    });
    black_box(sum);
    n
}

fn decode_all(c: &Corpus) -> usize {
    let mut ok = 0;
    for_each_line(black_box(&c.bytes), |l| ok += usize::from(decode_line(l)));
    ok
}

/// What a host really does: 64 KiB reads into the framer's buffer, then decode each frame.
fn framer_decode(c: &Corpus, decode: bool) -> usize {
    let mut framer = LineFramer::new(DEFAULT_MAX_LINE);
    let mut buf = BytesMut::with_capacity(256 * 1024);
    let mut n = 0;
    let mut handle = |f: Frame| match f {
        Frame::Line(l) => {
            n += if decode {
                usize::from(decode_line(&l))
            } else {
                black_box(l).len().min(1)
            }
        }
        Frame::Overlong => panic!("no line in the corpus is over-long"),
    };
    for chunk in black_box(&c.bytes).chunks(64 * 1024) {
        buf.extend_from_slice(chunk);
        while let Some(f) = framer.next_frame(&mut buf) {
            handle(f);
        }
    }
    if let Some(f) = framer.finish(&mut buf) {
        handle(f);
    }
    n
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

struct Row {
    name: &'static str,
    time: Duration,
}

fn measure(c: &Corpus, rounds: usize) -> Vec<Row> {
    type Method = (&'static str, fn(&Corpus) -> usize);
    let methods: [Method; 4] = [
        ("memchr line split", memchr_split),
        ("decode (memchr split + decode)", decode_all),
        ("LineFramer, 64 KiB reads", |c| framer_decode(c, false)),
        ("LineFramer + decode", |c| framer_decode(c, true)),
    ];
    // warm up, and check that the work is real: every line is counted / decodes
    for (name, f) in &methods {
        assert_eq!(
            f(c),
            c.lines,
            "{name}: every line of the corpus must count / decode"
        );
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); methods.len()];
    for _ in 0..rounds {
        for (i, (_, f)) in methods.iter().enumerate() {
            let t = Instant::now();
            black_box(f(c));
            times[i].push(t.elapsed());
        }
    }
    methods
        .iter()
        .zip(times)
        .map(|((name, _), t)| Row {
            name,
            time: median(t),
        })
        .collect()
}

fn print_table(title: &str, c: &Corpus, rows: &[Row]) {
    let mb = c.bytes.len() as f64 / 1e6;
    println!();
    println!(
        "{title}: {:.1} MB, {} lines, {:.0} bytes/line on average",
        mb,
        c.lines,
        c.bytes.len() as f64 / c.lines as f64
    );
    println!(
        "| {:<32} | {:>10} | {:>9} | {:>12} | {:>14} |",
        "method", "median ms", "MB/s", "lines/s", "vs memchr split"
    );
    println!(
        "|{:-<34}|{:->12}|{:->11}|{:->14}|{:->17}|",
        "", "", "", "", ""
    );
    let base = rows[0].time.as_secs_f64();
    for r in rows {
        let s = r.time.as_secs_f64();
        println!(
            "| {:<32} | {:>10.2} | {:>9.0} | {:>12.0} | {:>14.1}% |",
            r.name,
            s * 1e3,
            mb / s,
            c.lines as f64 / s,
            100.0 * base / s
        );
    }
}

fn main() {
    let mut rounds = 7usize;
    let mut mb = 32usize;
    let mut only = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().and_then(|v| v.parse().ok()).unwrap_or(rounds),
            "--mb" => mb = args.next().and_then(|v| v.parse().ok()).unwrap_or(mb),
            "--only" => only = args.next().unwrap_or_default(),
            _ => {} // `cargo bench` passes `--bench`
        }
    }
    let target = mb * 1_000_000;

    let t = Instant::now();
    let corpora = [
        (
            "mixed",
            "mixed corpus",
            build_corpus(target, 0x5eed_3179, |_| true),
        ),
        (
            "small",
            "small lines only (< 1 KiB)",
            build_corpus(target / 2, 0x5eed_3179, |len| len < 1024),
        ),
        (
            "large",
            "large lines only (>= 1 KiB)",
            build_corpus(target / 2, 0x5eed_3179, |len| len >= 1024),
        ),
    ];
    println!(
        "corpora built in {:.1} s; {rounds} rounds each, median shown",
        t.elapsed().as_secs_f64()
    );
    for (key, title, corpus) in &corpora {
        if !only.is_empty() && only != *key {
            continue;
        }
        let rows = measure(corpus, rounds);
        print_table(title, corpus, &rows);
        let ratio = rows[0].time.as_secs_f64() / rows[1].time.as_secs_f64();
        println!(
            "target (decode >= 25% of memchr split): {:.1}%, {}",
            100.0 * ratio,
            if ratio >= 0.25 { "met" } else { "NOT met" }
        );
    }
}
