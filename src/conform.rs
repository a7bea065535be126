//! `smx conform`: checks a runtime against RFC 3179 section 6.1 from the outside.
//!
//! The runtime is started exactly as the host starts it (same transports, same handshake),
//! then driven with raw SMX lines, well-formed and not. Each check yields one [`Outcome`]
//! naming the RFC section, what was sent and what came back.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::config::{
    Argv, CookieDelivery, Registered, RuntimeName, RuntimeSpec, Threading, Transport,
};
use crate::framing::Frame;
use crate::host::{StartError, start_runtime};
use crate::proto::{ExitCode, Id, Negative, Octets, Profile, Reply, RunId, RunState};
use crate::security::Prepared;

/// The golden vectors (`tests/vectors/smx.txt`), embedded: one command each and the answer
/// RFC 3179 section 6.1 prescribes. The file's header describes the format.
pub const VECTORS: &str = include_str!("../tests/vectors/smx.txt");

/// One golden vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vector {
    /// Its line in the file (1-based).
    pub line: usize,
    /// The RFC 3179 section whose rule gives the answer.
    pub section: &'static str,
    /// COMMAND as written in the file (escapes not decoded).
    pub text: &'static str,
    /// The message as sent, terminator included.
    pub command: Vec<u8>,
    /// ANSWER as written in the file.
    pub answer_text: &'static str,
    /// The reply a runtime sends; `None` when it discards the message.
    pub answer: Option<Reply>,
}

/// The embedded golden vectors.
pub fn vectors() -> Result<Vec<Vector>, String> {
    parse_vectors(VECTORS)
}

/// Parses a vector file: `SECTION | COMMAND | ANSWER` per line, `#` comments. Every ANSWER
/// must be written canonically (as smx encodes it), so that a byte comparison is fair.
pub fn parse_vectors(text: &'static str) -> Result<Vec<Vector>, String> {
    const SEP: &str = " | ";
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |why: String| format!("tests/vectors/smx.txt:{line}: {why}");
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        if !raw.is_ascii() {
            return Err(err("not ASCII".into()));
        }
        let (Some(a), Some(b)) = (raw.find(SEP), raw.rfind(SEP)) else {
            return Err(err("expected SECTION | COMMAND | ANSWER".into()));
        };
        if b <= a {
            return Err(err("expected SECTION | COMMAND | ANSWER".into()));
        }
        let (section, text, answer_text) =
            (&raw[..a], &raw[a + SEP.len()..b], &raw[b + SEP.len()..]);
        if section.is_empty() || !section.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
            return Err(err(format!("bad SECTION {section:?}")));
        }
        let mut command = unescape_vector(text).map_err(err)?;
        match command.iter().position(|&c| c == b'\n') {
            None => command.extend_from_slice(b"\r\n"),
            Some(p) if p + 1 == command.len() => {}
            Some(_) => return Err(err("<0A> only at the end of COMMAND".into())),
        }
        let answer = if answer_text == "discard" {
            None
        } else {
            let wire = format!("{answer_text}\r\n");
            let r = Reply::decode(wire.as_bytes())
                .map_err(|e| err(format!("ANSWER {answer_text:?}: {e}")))?;
            if r.to_bytes() != wire.as_bytes() {
                return Err(err(format!(
                    "ANSWER {answer_text:?} is not written canonically"
                )));
            }
            if r.id().is_none() {
                return Err(err(format!(
                    "ANSWER {answer_text:?} is not a reply to a command"
                )));
            }
            Some(r)
        };
        out.push(Vector {
            line,
            section,
            text,
            command,
            answer_text,
            answer,
        });
    }
    Ok(out)
}

/// COMMAND's escapes: `<XX>` (two upper-case hex digits) is the octet 0xXX.
fn unescape_vector(text: &str) -> Result<Vec<u8>, String> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| matches!(c, b'0'..=b'9' | b'A'..=b'F');
        if b[i] == b'<' && i + 3 < b.len() && hex(b[i + 1]) && hex(b[i + 2]) && b[i + 3] == b'>' {
            let v = u8::from_str_radix(&text[i + 1..i + 3], 16).map_err(|e| e.to_string())?;
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// What to test.
#[derive(Debug, Clone)]
pub struct Options {
    pub command: Vec<String>,
    pub transport: Transport,
    /// A profile the runtime accepts.
    pub profile: Profile,
    /// A conformance script (see docs/writing-a-runtime.md); checks that need one are
    /// skipped without it.
    pub script: Option<PathBuf>,
    /// How long to wait for each expected message.
    pub timeout: Duration,
    /// How a TCP runtime gets its cookie (`None`: the default, its fd).
    pub cookie: Option<CookieDelivery>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub section: &'static str,
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = match self.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        };
        write!(
            f,
            "{v}  {:<7} {:<58} {}",
            self.section, self.check, self.detail
        )
    }
}

/// One line from the runtime, raw and decoded.
struct Line {
    raw: Vec<u8>,
    reply: Result<Reply, crate::proto::Malformed>,
}

/// Lines read from the runtime and not yet looked at, at most. The reader stops reading the
/// runtime while the queue is full, so a runtime that floods blocks on its pipe.
const LINE_QUEUE: usize = 64;

/// Stray lines [`Seen`] keeps, at most.
const SEEN_LINES: usize = 512;
/// Octets of stray lines [`Seen`] keeps, at most (a line may be 256 KiB).
const SEEN_OCTETS: usize = 4 << 20;

/// Offending lines a FAIL quotes, at most; the others are counted.
const SHOWN: usize = 5;

/// Notifications and stray lines seen while waiting for replies: what later checks look up,
/// bounded, since a runtime may send `511` (or anything) forever.
///
/// Well-formed `511` messages are only counted (no check looks one up); other lines are kept,
/// the most recent [`SEEN_LINES`] of them. The section 5 and 6.1.7 verdicts are counted as
/// lines arrive, so they cover every line, kept or not.
#[derive(Default)]
struct Seen {
    kept: VecDeque<Line>,
    kept_octets: usize,
    /// Lines dropped from `kept` to stay in bounds (later checks cannot find them).
    dropped: u64,
    /// Lines seen since the last [`Seen::take`].
    total: u64,
    /// Lines not ending in CRLF or not well-formed (section 5), and the first few of them.
    malformed: u64,
    malformed_shown: Vec<String>,
    /// Lines starting with `5` (notifications, 6.1.7); those that are malformed or carry an
    /// Id other than Zero, and the first few of them.
    notes: u64,
    bad_notes: u64,
    bad_notes_shown: Vec<String>,
}

impl Seen {
    fn push(&mut self, l: Line) {
        self.total += 1;
        if !l.raw.ends_with(b"\r\n") || l.reply.is_err() {
            self.malformed += 1;
            if self.malformed_shown.len() < SHOWN {
                self.malformed_shown.push(show(&l.raw));
            }
        }
        if l.raw.first() == Some(&b'5') {
            self.notes += 1;
            if l.reply.as_ref().map_or(true, |r| r.id().is_some()) {
                self.bad_notes += 1;
                if self.bad_notes_shown.len() < SHOWN {
                    self.bad_notes_shown.push(show(&l.raw));
                }
            }
        }
        if matches!(l.reply, Ok(Reply::Message { .. })) {
            return;
        }
        self.kept_octets += l.raw.len();
        self.kept.push_back(l);
        while self.kept.len() > SEEN_LINES || self.kept_octets > SEEN_OCTETS {
            let Some(old) = self.kept.pop_front() else {
                break;
            };
            self.kept_octets -= old.raw.len();
            self.dropped += 1;
        }
    }

    /// The kept lines, and a fresh start.
    fn take(&mut self) -> VecDeque<Line> {
        std::mem::take(self).kept
    }

    fn iter(&self) -> impl Iterator<Item = &Line> {
        self.kept.iter()
    }
}

/// `shown`, and how many more of `count` there were.
fn listing(shown: &[String], count: u64) -> String {
    let more = count.saturating_sub(shown.len() as u64);
    if more == 0 {
        shown.join(", ")
    } else {
        format!("{} and {more} more", shown.join(", "))
    }
}

struct Session {
    writer: Option<crate::host::BoxWrite>,
    lines: mpsc::Receiver<Line>,
    seen: Seen,
    timeout: Duration,
    child: tokio::process::Child,
}

/// A line for the report; an Authenticator is a secret and never printed.
fn show(b: &[u8]) -> String {
    if let Ok(Reply::Hello {
        id,
        version,
        auth: Some(a),
    }) = Reply::decode(b)
    {
        return format!(
            "\"211 {id} {version} <{}-octet authenticator>\"",
            a.as_bytes().len()
        );
    }
    let s = String::from_utf8_lossy(b);
    let s = s.trim_end_matches(['\r', '\n']);
    let s: String = s.chars().take(90).collect();
    format!("{s:?}")
}

impl Session {
    async fn send(&mut self, line: &str) -> bool {
        let Some(w) = self.writer.as_mut() else {
            return false;
        };
        let ok = w.write_all(line.as_bytes()).await.is_ok() && w.write_all(b"\r\n").await.is_ok();
        ok && w.flush().await.is_ok()
    }

    /// Writes a whole message as it is, terminator included.
    async fn send_raw(&mut self, msg: &[u8]) -> bool {
        let Some(w) = self.writer.as_mut() else {
            return false;
        };
        w.write_all(msg).await.is_ok() && w.flush().await.is_ok()
    }

    /// The next line before `deadline`. The deadline is checked before every line: a
    /// runtime that floods keeps the queue full, and a timeout polls the receive first, so
    /// one that is always ready rarely lets the timeout decide.
    async fn next_line(&mut self, deadline: tokio::time::Instant) -> Option<Line> {
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::timeout_at(deadline, self.lines.recv())
            .await
            .ok()?
    }

    /// The next reply carrying `id`; notifications and others go to `seen`.
    async fn reply(&mut self, id: u64) -> Option<Line> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let line = self.next_line(deadline).await?;
            if matches!(&line.reply, Ok(r) if r.id() == Some(Id(id))) {
                return Some(line);
            }
            self.seen.push(line);
        }
    }

    /// Waits up to `wait` for a notification matching `f` (looking at `seen` first).
    async fn notification(&mut self, wait: Duration, f: impl Fn(&Reply) -> bool) -> Option<Reply> {
        if let Some(r) = self
            .seen
            .iter()
            .filter_map(|l| l.reply.as_ref().ok())
            .find(|r| f(r))
        {
            return Some(r.clone());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let line = self.next_line(deadline).await?;
            let hit = line.reply.as_ref().ok().filter(|r| f(r)).cloned();
            self.seen.push(line);
            if hit.is_some() {
                return hit;
            }
        }
    }

    /// Moves the lines that arrive within `wait` to `seen`.
    async fn absorb(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while let Some(l) = self.next_line(deadline).await {
            self.seen.push(l);
        }
    }
}

struct Report {
    out: Vec<Outcome>,
    print: bool,
}

impl Report {
    fn add(
        &mut self,
        section: &'static str,
        check: &'static str,
        verdict: Verdict,
        detail: impl Into<String>,
    ) {
        let o = Outcome {
            section,
            check,
            verdict,
            detail: detail.into(),
        };
        if self.print {
            println!("{o}");
        }
        self.out.push(o);
    }

    fn expect(
        &mut self,
        section: &'static str,
        check: &'static str,
        sent: &str,
        got: Option<&Line>,
        ok: impl Fn(&Reply) -> bool,
    ) -> bool {
        let (v, d) = match got {
            None => (
                Verdict::Fail,
                format!("sent {sent:?}, no reply with its Id"),
            ),
            Some(l) => match &l.reply {
                Ok(r) if ok(r) => (
                    Verdict::Pass,
                    format!("sent {sent:?}, got {}", show(&l.raw)),
                ),
                _ => (
                    Verdict::Fail,
                    format!("sent {sent:?}, got {}", show(&l.raw)),
                ),
            },
        };
        let pass = v == Verdict::Pass;
        self.add(section, check, v, d);
        pass
    }
}

fn status(state: RunState) -> impl Fn(&Reply) -> bool {
    move |r| matches!(r, Reply::Status { state: s, .. } if *s == state)
}

fn negative(code: Negative) -> impl Fn(&Reply) -> bool {
    move |r| matches!(r, Reply::Negative { code: c, .. } if *c == code)
}

fn quoted(s: &str) -> String {
    let mut v = Vec::new();
    Octets::from(s).encode(&mut v);
    String::from_utf8(v).expect("quoted text is ASCII")
}

/// Runs every check, printing each line as it completes when `print` is set.
pub async fn run(opts: &Options, print: bool) -> Vec<Outcome> {
    let mut rep = Report {
        out: Vec::new(),
        print,
    };
    let spec = Registered {
        spec: RuntimeSpec {
            name: RuntimeName("conform".into()),
            description: String::new(),
            command: Argv(opts.command.clone()),
            transport: opts.transport,
            threading: Threading::Multi,
            extensions: Vec::new(),
            profiles: crate::config::ProfileList(vec![opts.profile.clone()]),
            cookie: opts.cookie,
            language: None,
            version: Default::default(),
            vendor: None,
            revision: Default::default(),
            language_extensions: Vec::new(),
            max_runs: None,
        },
        config_dir: None,
    };
    let started = match start_runtime(&spec, &Prepared::invoker(), opts.timeout).await {
        Ok(s) => s,
        Err(e) => {
            let section = match &e {
                StartError::NoConnection { .. } => "8.2",
                _ => "6.1.1",
            };
            rep.add(
                section,
                "runtime starts and answers hello with 211",
                Verdict::Fail,
                e.to_string(),
            );
            return rep.out;
        }
    };
    let what = match (opts.transport, opts.cookie) {
        (Transport::Pipe, _) => "hello 1 answered 211 1 SMX/1.1 over stdin/stdout",
        (Transport::Tcp, Some(CookieDelivery::Env)) => {
            "connected from loopback, 211 1 SMX/1.1 with the cookie from SMX_COOKIE"
        }
        (Transport::Tcp, _) => "connected from loopback, 211 1 SMX/1.1 with the cookie",
    };
    rep.add(
        "6.1.1",
        "runtime starts and answers hello with 211",
        Verdict::Pass,
        what,
    );

    let (tx, rx) = mpsc::channel(LINE_QUEUE);
    let mut reader = started.reader;
    tokio::spawn(async move {
        while let Ok(Some(f)) = reader.next().await {
            let Frame::Line(raw) = f else { continue };
            let reply = Reply::decode(&raw);
            let line = Line {
                raw: raw.to_vec(),
                reply,
            };
            // Waits while the checks are behind: the runtime is read no faster than that.
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    for out in started.logs {
        tokio::spawn(async move {
            let mut r = crate::framing::LineReader::new(out, 4096);
            while let Ok(Some(_)) = r.next().await {}
        });
    }
    let mut s = Session {
        writer: Some(started.writer),
        lines: rx,
        seen: Seen::default(),
        timeout: opts.timeout,
        child: started.child,
    };
    checks(&mut s, &mut rep, opts).await;
    rep.out
}

async fn checks(s: &mut Session, rep: &mut Report, opts: &Options) {
    let p = opts.profile.as_str();

    let sent = "hello 77";
    s.send(sent).await;
    let got = s.reply(77).await;
    rep.expect(
        "6.1.1",
        "a later hello is answered with its own Id",
        sent,
        got.as_ref(),
        |r| matches!(r, Reply::Hello { version, .. } if *version == crate::proto::Version::V1_1),
    );

    let sent = "frobnicate 5";
    s.send(sent).await;
    let got = s.reply(5).await;
    rep.expect(
        "6.1",
        "unknown command word gives 402",
        sent,
        got.as_ref(),
        negative(Negative::UnknownCommand),
    );

    // No command word and Id: discarded (a 511 may come), nothing answers it.
    s.send("garbage").await;
    s.send("hello 6").await;
    let got = s.reply(6).await;
    // `take` starts the later checks afresh and keeps no 511s.
    let stray = s.seen.take();
    let (v, d) = match (&got, stray.is_empty()) {
        (Some(_), true) => (
            Verdict::Pass,
            "sent \"garbage\": no reply, next command answered".to_owned(),
        ),
        (None, _) => (
            Verdict::Fail,
            "sent \"garbage\" then \"hello 6\": no 211 6".to_owned(),
        ),
        (_, false) => {
            let shown: Vec<String> = stray.iter().take(SHOWN).map(|l| show(&l.raw)).collect();
            (
                Verdict::Fail,
                format!(
                    "sent \"garbage\": got {}",
                    listing(&shown, stray.len() as u64)
                ),
            )
        }
    };
    rep.add(
        "6.1",
        "a line without command word and Id is discarded",
        v,
        d,
    );

    let sent = "hello 18 extra";
    s.send(sent).await;
    let got = s.reply(18).await;
    rep.expect(
        "6.1",
        "other syntax errors give 401",
        sent,
        got.as_ref(),
        negative(Negative::Syntax),
    );

    // Section 6.1.2 item 1: the four syntax checks, in their order.
    let cases: [(&'static str, String, u64, Negative); 6] = [
        (
            "start: bad RunId gives 431 (1a)",
            format!("start 10 x1 \"/x\" {p} \"\""),
            10,
            Negative::IllegalRunId,
        ),
        (
            "start: bad Script gives 421 (1b)",
            format!("start 11 9001 /unquoted {p} \"\""),
            11,
            Negative::IllegalScript,
        ),
        (
            "start: bad Profile gives 432 (1c)",
            "start 12 9002 \"/x\" bad!profile \"\"".to_owned(),
            12,
            Negative::IllegalProfile,
        ),
        (
            "start: bad Argument gives 433 (1d)",
            format!("start 13 9003 \"/x\" {p} 0G"),
            13,
            Negative::IllegalArgument,
        ),
        (
            "start: RunId is checked before the others",
            "start 14 x! \"open bad! 0G".to_owned(),
            14,
            Negative::IllegalRunId,
        ),
        (
            "start: Script is checked before Profile",
            "start 15 9004 /unquoted bad! \"\"".to_owned(),
            15,
            Negative::IllegalScript,
        ),
    ];
    for (check, sent, id, code) in cases {
        s.send(&sent).await;
        let got = s.reply(id).await;
        rep.expect("6.1.2", check, &sent, got.as_ref(), negative(code));
    }
    let sent = format!("start 16 9005 \"/x\" {p} \"\" trailing");
    s.send(&sent).await;
    let got = s.reply(16).await;
    rep.expect(
        "6.1.2",
        "start with trailing junk gives 401",
        &sent,
        got.as_ref(),
        negative(Negative::Syntax),
    );

    let sent = format!("start 20 9006 \"/nonexistent/smx-conform/none\" {p} \"\"");
    s.send(&sent).await;
    let got = s.reply(20).await;
    rep.expect(
        "6.1.2",
        "start of a missing script gives 421 (item 3)",
        &sent,
        got.as_ref(),
        negative(Negative::IllegalScript),
    );

    // A file the runtime could run (the conformance script, else an executable stub), so
    // only the profile is wrong.
    let stub = tempfile::NamedTempFile::new().ok().filter(|f| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(f.path(), "#!/bin/sh\n").is_ok()
            && std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o755)).is_ok()
    });
    let runnable = opts
        .script
        .clone()
        .or_else(|| stub.as_ref().map(|f| f.path().to_owned()));
    match &runnable {
        Some(f) => {
            let sent = format!(
                "start 21 9007 {} smx-conform-unknown-profile \"\"",
                quoted(&f.display().to_string())
            );
            s.send(&sent).await;
            let got = s.reply(21).await;
            rep.expect(
                "6.1.2",
                "start with an unknown profile gives 432 (item 4)",
                &sent,
                got.as_ref(),
                negative(Negative::IllegalProfile),
            );
        }
        None => rep.add(
            "6.1.2",
            "start with an unknown profile gives 432 (item 4)",
            Verdict::Skip,
            "no temp file",
        ),
    }

    for (id, word, section) in [
        (30, "status", "6.1.6"),
        (31, "suspend", "6.1.3"),
        (32, "resume", "6.1.4"),
        (33, "abort", "6.1.5"),
    ] {
        let sent = format!("{word} {id} 424242");
        s.send(&sent).await;
        let got = s.reply(id).await;
        let check = match word {
            "status" => "status of an unknown run gives 431",
            "suspend" => "suspend of an unknown run gives 431",
            "resume" => "resume of an unknown run gives 431",
            _ => "abort of an unknown run gives 431",
        };
        rep.expect(
            section,
            check,
            &sent,
            got.as_ref(),
            negative(Negative::IllegalRunId),
        );
    }
    let sent = "status 34 12x";
    s.send(sent).await;
    let got = s.reply(34).await;
    rep.expect(
        "6.1.6",
        "status with a RunId syntax error gives 431",
        sent,
        got.as_ref(),
        negative(Negative::IllegalRunId),
    );

    vector_checks(s, rep).await;

    match &opts.script {
        Some(script) => with_script(s, rep, opts, script).await,
        None => {
            for (section, check) in [
                ("6.1.2", "start runs a script and replies 231 (item 5)"),
                ("6.1.2", "start with a RunId in use gives 431 (item 2)"),
                ("6.1.6", "status of a running script gives 231"),
                ("6.1.3", "suspend gives 231 4 (or 434 if unsupported)"),
                ("6.1.4", "resume gives 231 2"),
                ("6.1.5", "abort gives 232, and a 538 ends the run"),
                (
                    "5.1",
                    "results come back intact as QuotedString and HexString",
                ),
                ("6.1.7", "notifications are well-formed with Id 0"),
            ] {
                rep.add(section, check, Verdict::Skip, "needs --script");
            }
        }
    }

    // Everything the runtime wrote so far must be CRLF-terminated, well-formed SMX.
    s.absorb(Duration::from_millis(200)).await;
    let (v, mut d) = if s.seen.malformed == 0 {
        (
            Verdict::Pass,
            format!(
                "{} asynchronous lines, all CRLF-terminated and well-formed",
                s.seen.total
            ),
        )
    } else {
        (
            Verdict::Fail,
            format!(
                "malformed or not CRLF-terminated: {}",
                listing(&s.seen.malformed_shown, s.seen.malformed)
            ),
        )
    };
    if s.seen.dropped > 0 {
        d.push_str(&format!(
            "; {} stray lines beyond the last {SEEN_LINES} were not kept for lookups",
            s.seen.dropped
        ));
    }
    rep.add("5", "every message is well-formed and ends with CRLF", v, d);

    shutdown_check(s, rep, opts).await;
}

/// Ids of the `hello` sent after each vector; no vector uses one.
const SENTINEL: u64 = 9_000_000_000_000_000_000;

/// Whether `got` is the reply `want`; a 211 may carry any Authenticator.
fn same_reply(got: &Reply, want: &Reply) -> bool {
    match (got, want) {
        (
            Reply::Hello { id, version, .. },
            Reply::Hello {
                id: i2,
                version: v2,
                ..
            },
        ) => id == i2 && version == v2,
        _ => got == want,
    }
}

/// One check per golden vector: the vector's message, then `hello SENTINEL+n`; every line
/// before the sentinel's reply but 511s is the runtime's answer to the vector, which must
/// be exactly the vector's ANSWER (or nothing, for `discard`). After a sentinel goes
/// unanswered the runtime is taken to have stopped, and the remaining vectors fail at once.
async fn vector_checks(s: &mut Session, rep: &mut Report) {
    let vectors = match vectors() {
        Ok(v) => v,
        Err(e) => {
            rep.add("6.1", "the golden vectors parse", Verdict::Fail, e);
            return;
        }
    };
    let mut stopped: Option<String> = None;
    for (n, v) in vectors.iter().enumerate() {
        if let Some(why) = &stopped {
            rep.add(v.section, v.text, Verdict::Fail, format!("not sent: {why}"));
            continue;
        }
        let sentinel = SENTINEL + n as u64;
        let sent = s.send_raw(&v.command).await && s.send(&format!("hello {sentinel}")).await;
        let deadline = tokio::time::Instant::now() + s.timeout;
        let mut answers: Vec<(String, Option<Reply>)> = Vec::new();
        let mut messages = 0;
        let mut answered = false;
        while let Some(line) = match sent {
            true => s.next_line(deadline).await,
            false => None,
        } {
            match &line.reply {
                Ok(r) if r.id() == Some(Id(sentinel)) => {
                    answered = true;
                    break;
                }
                Ok(Reply::Message { .. }) => messages += 1,
                r => answers.push((show(&line.raw), r.as_ref().ok().cloned())),
            }
            s.seen.push(line);
        }
        let got = if answers.is_empty() {
            "nothing".to_owned()
        } else {
            answers
                .iter()
                .map(|(shown, _)| shown.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let want = match v.answer {
            None => "discard".to_owned(),
            Some(_) => format!("{:?}", v.answer_text),
        };
        let at = format!("(smx.txt:{})", v.line);
        let (verdict, detail) = if !answered {
            let why = if sent {
                format!("no reply to `hello {sentinel}` within {:?}", s.timeout)
            } else {
                "the connection is closed".to_owned()
            };
            stopped = Some(format!(
                "the runtime stopped answering at smx.txt:{}",
                v.line
            ));
            (Verdict::Fail, format!("want {want}, got {got}; {why} {at}"))
        } else {
            let ok = match &v.answer {
                None => answers.is_empty(),
                Some(w) => {
                    answers.len() == 1 && answers[0].1.as_ref().is_some_and(|g| same_reply(g, w))
                }
            };
            let with_511 = if messages > 0 { " (and a 511)" } else { "" };
            match (ok, &v.answer) {
                (true, None) => (Verdict::Pass, format!("discarded{with_511} {at}")),
                (true, Some(_)) => (Verdict::Pass, format!("got {got} {at}")),
                (false, _) => (Verdict::Fail, format!("want {want}, got {got} {at}")),
            }
        };
        rep.add(v.section, v.text, verdict, detail);
    }
}

async fn with_script(s: &mut Session, rep: &mut Report, opts: &Options, script: &std::path::Path) {
    let p = opts.profile.as_str();
    let path = quoted(&script.display().to_string());
    let run = 5001;
    let sent = format!("start 40 {run} {path} {p} \"\"");
    s.send(&sent).await;
    let got = s.reply(40).await;
    let started = rep.expect(
        "6.1.2",
        "start runs a script and replies 231 (item 5)",
        &sent,
        got.as_ref(),
        |r| {
            matches!(
                r,
                Reply::Status {
                    state: RunState::Initializing | RunState::Executing,
                    ..
                }
            )
        },
    );
    if !started {
        for (section, check) in [
            ("6.1.2", "start with a RunId in use gives 431 (item 2)"),
            ("6.1.6", "status of a running script gives 231"),
            ("6.1.3", "suspend gives 231 4 (or 434 if unsupported)"),
            ("6.1.4", "resume gives 231 2"),
            ("6.1.5", "abort gives 232, and a 538 ends the run"),
        ] {
            rep.add(section, check, Verdict::Skip, "the script did not start");
        }
    } else {
        let sent = format!("start 41 {run} {path} {p} \"\"");
        s.send(&sent).await;
        let got = s.reply(41).await;
        rep.expect(
            "6.1.2",
            "start with a RunId in use gives 431 (item 2)",
            &sent,
            got.as_ref(),
            negative(Negative::IllegalRunId),
        );

        // Let a script that starts `initializing` get going.
        let _ = s
            .notification(Duration::from_millis(500), |r| {
                matches!(
                    r,
                    Reply::StateChange {
                        run: RunId(5001),
                        state: RunState::Executing
                    }
                )
            })
            .await;
        let sent = format!("status 42 {run}");
        s.send(&sent).await;
        let got = s.reply(42).await;
        rep.expect(
            "6.1.6",
            "status of a running script gives 231",
            &sent,
            got.as_ref(),
            |r| matches!(r, Reply::Status { .. }),
        );

        let sent = format!("suspend 43 {run}");
        s.send(&sent).await;
        let got = s.reply(43).await;
        let suspended = matches!(
            got.as_ref().map(|l| &l.reply),
            Some(Ok(Reply::Status {
                state: RunState::Suspended,
                ..
            }))
        );
        let unsupported = matches!(
            got.as_ref().map(|l| &l.reply),
            Some(Ok(Reply::Negative {
                code: Negative::CannotChange,
                ..
            }))
        );
        rep.expect(
            "6.1.3",
            "suspend gives 231 4 (or 434 if unsupported)",
            &sent,
            got.as_ref(),
            |r| {
                matches!(
                    r,
                    Reply::Status {
                        state: RunState::Suspended,
                        ..
                    } | Reply::Negative {
                        code: Negative::CannotChange,
                        ..
                    }
                )
            },
        );
        if suspended {
            let sent = format!("suspend 44 {run}");
            s.send(&sent).await;
            let got = s.reply(44).await;
            rep.expect(
                "6.1.3",
                "suspend of a suspended script gives 231 (item 2)",
                &sent,
                got.as_ref(),
                status(RunState::Suspended),
            );
            let sent = format!("resume 45 {run}");
            s.send(&sent).await;
            let got = s.reply(45).await;
            rep.expect(
                "6.1.4",
                "resume gives 231 2",
                &sent,
                got.as_ref(),
                status(RunState::Executing),
            );
        } else if unsupported {
            rep.add(
                "6.1.4",
                "resume gives 231 2",
                Verdict::Skip,
                "the runtime cannot suspend (434)",
            );
        } else {
            rep.add(
                "6.1.4",
                "resume gives 231 2",
                Verdict::Skip,
                "suspend failed",
            );
        }
        let sent = format!("resume 46 {run}");
        s.send(&sent).await;
        let got = s.reply(46).await;
        rep.expect(
            "6.1.4",
            "resume of a running script gives 231 (item 2)",
            &sent,
            got.as_ref(),
            status(RunState::Executing),
        );

        let sent = format!("abort 47 {run}");
        s.send(&sent).await;
        let got = s.reply(47).await;
        let ended = s
            .notification(opts.timeout, |r| {
                matches!(
                    r,
                    Reply::Terminated {
                        run: RunId(5001),
                        ..
                    }
                )
            })
            .await;
        let (v, d) = match (&got, &ended) {
            (Some(l), Some(e)) if matches!(l.reply, Ok(Reply::Aborted { .. })) => (
                Verdict::Pass,
                format!(
                    "sent {sent:?}, got {} and {:?}",
                    show(&l.raw),
                    String::from_utf8_lossy(&e.to_bytes()).trim_end()
                ),
            ),
            (Some(l), _) if matches!(l.reply, Ok(Reply::Aborted { .. })) => (
                Verdict::Fail,
                format!(
                    "sent {sent:?}, got {} but no 538 for run {run} (6.1.7 item 8)",
                    show(&l.raw)
                ),
            ),
            (Some(l), _) => (
                Verdict::Fail,
                format!("sent {sent:?}, got {}", show(&l.raw)),
            ),
            (None, _) => (Verdict::Fail, format!("sent {sent:?}, no 232")),
        };
        rep.add("6.1.5", "abort gives 232, and a 538 ends the run", v, d);
    }

    // Results in both forms: the conformance script echoes its Argument as a 532.
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    let cases: [(u64, &[u8], bool); 2] = [
        (5002, b"conform \"text\" \\ with\ttab", true),
        (5003, &[0, 0xff, b'\n', 0x80, b'x'], false),
    ];
    for (i, (run, arg, text)) in cases.into_iter().enumerate() {
        let mut a = Vec::new();
        Octets::new(arg).encode(&mut a);
        let sent = format!(
            "start {} {run} {path} {p} {}",
            50 + i,
            String::from_utf8_lossy(&a)
        );
        s.send(&sent).await;
        let _ = s.reply(50 + i as u64).await;
        let result = s
            .notification(opts.timeout, |r| matches!(r, Reply::Result { run: r2, .. } | Reply::ResultEvent { run: r2, .. } if *r2 == RunId(run)))
            .await;
        let end = s
            .notification(
                opts.timeout,
                |r| matches!(r, Reply::Terminated { run: r2, .. } if *r2 == RunId(run)),
            )
            .await;
        let raw_form = s
            .seen
            .iter()
            .find(|l| matches!(&l.reply, Ok(Reply::Result { run: r2, .. }) if *r2 == RunId(run)))
            .map(|l| l.raw.clone())
            .unwrap_or_default();
        let form_ok = if text {
            raw_form.contains(&b'"')
        } else {
            !raw_form.contains(&b'"')
        };
        match (result, end) {
            (
                Some(Reply::Result { result, .. } | Reply::ResultEvent { result, .. }),
                Some(Reply::Terminated { exit, .. }),
            ) if result.as_bytes() == arg && exit == ExitCode::NoError && form_ok => {
                ok.push(if text { "quoted" } else { "hex" })
            }
            (r, e) => bad.push(format!(
                "argument {:?}: result {:?}, end {:?}, line {}",
                Octets::new(arg),
                r.map(|x| x.to_bytes()).map(|b| show(&b)),
                e.map(|x| x.code()),
                show(&raw_form)
            )),
        }
    }
    let (v, d) = if bad.is_empty() {
        (
            Verdict::Pass,
            format!(
                "Argument echoed as 532 Result octet for octet ({}), then 538 noError",
                ok.join(" and ")
            ),
        )
    } else {
        (Verdict::Fail, bad.join("; "))
    };
    rep.add(
        "5.1",
        "results come back intact as QuotedString and HexString",
        v,
        d,
    );

    s.absorb(Duration::from_millis(200)).await;
    let seen = &s.seen;
    let (v, d) = if seen.notes == 0 {
        (
            Verdict::Fail,
            "no asynchronous notification at all (a 538 must end every run)".to_owned(),
        )
    } else if seen.bad_notes == 0 {
        (
            Verdict::Pass,
            format!(
                "{} notifications, all 5yz with Id 0 per the ABNF",
                seen.notes
            ),
        )
    } else {
        (
            Verdict::Fail,
            format!(
                "bad notifications: {}",
                listing(&seen.bad_notes_shown, seen.bad_notes)
            ),
        )
    };
    rep.add("6.1.7", "notifications are well-formed with Id 0", v, d);

    // One more running script, to see that closing the connection ends it.
    let sent = format!("start 60 5009 {path} {p} \"\"");
    s.send(&sent).await;
    let _ = s.reply(60).await;
}

async fn shutdown_check(s: &mut Session, rep: &mut Report, opts: &Options) {
    let running = opts.script.is_some();
    if let Some(mut w) = s.writer.take() {
        let _ = w.shutdown().await;
    }
    let exited = tokio::time::timeout(opts.timeout, s.child.wait()).await;
    let ended = if running {
        s.notification(Duration::from_millis(300), |r| {
            matches!(
                r,
                Reply::Terminated {
                    run: RunId(5009),
                    ..
                }
            )
        })
        .await
        .is_some()
    } else {
        true
    };
    let (v, d) = match exited {
        Ok(Ok(status)) if ended => (
            Verdict::Pass,
            format!("exited ({status}) after its input closed"),
        ),
        Ok(Ok(status)) => (
            Verdict::Pass,
            format!("exited ({status}); the running script's 538 was not seen before exit"),
        ),
        Ok(Err(e)) => (Verdict::Fail, format!("wait failed: {e}")),
        Err(_) => {
            let _ = s.child.start_kill();
            (
                Verdict::Fail,
                format!(
                    "still running {:?} after its input closed (killed)",
                    opts.timeout
                ),
            )
        }
    };
    rep.add("5.2", "closing the connection terminates the runtime", v, d);
}
