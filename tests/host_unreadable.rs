//! Replies the host cannot read (RFC 3179 6.2.x rule 2: "the message is ignored") are not
//! silent: each is logged at WARN naming the runtime and, when it says, the run; they are
//! counted in the host's stats; and one that carried a run's result (532, 533, 534) leaves
//! smRunError saying so, instead of the run ending noError with an empty result and nothing
//! to tell why. Scotty's Tnm sends such results: a raw CR inside the quotes.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use smx::proto::{ExitCode, RunState};

/// Everything logged at WARN and above in this test binary.
fn warnings() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let make = move || Sink(sink.clone());
        tracing_subscriber::fmt()
            .with_writer(make)
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .init();
        buf
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged(log: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&log.lock().unwrap()).into_owned()
}

#[tokio::test]
async fn an_unreadable_result_is_warned_counted_and_in_sm_run_error() {
    let log = warnings();
    let h = host(&fake_runtime("tnm", &["--start", "tnm-cr"]));
    let script = install(&h, "x.tcl", "", false);
    let id = h.launch(request(&script, Some("tnm"))).expect("launch");
    let r = finish(&h, id, 10).await;
    assert_eq!(
        (r.state, r.exit_code),
        (RunState::Terminated, ExitCode::NoError)
    );
    assert!(r.result.is_empty(), "{r:?}");
    assert!(
        r.error.contains("result") && r.error.contains("could not be read"),
        "smRunError: {:?}",
        r.error
    );
    assert_eq!(h.stats().unreadable_replies, 1);
    let text = logged(&log);
    let warn = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains("unreadable") && l.contains("runtime=tnm"))
        .unwrap_or_else(|| panic!("no WARN line in {text:?}"));
    assert!(warn.contains(&format!("run={id}")), "{warn}");
    h.shutdown().await;
}

/// Lines that name no run are counted and warned about, the run is left alone; a runtime
/// that sends nothing else cannot flood the log (the first few are warned about, then only
/// every thousandth), but every line is counted.
#[tokio::test]
async fn unreadable_lines_are_counted_and_warned_about_boundedly() {
    let log = warnings();
    let h = host(&fake_runtime("junk", &["--start", "garbage=2500"]));
    let script = install(&h, "y.tcl", "", false);
    let before = logged(&log).lines().count();
    let id = h.launch(request(&script, Some("junk"))).expect("launch");
    let r = finish(&h, id, 20).await;
    assert_eq!(
        (r.exit_code, r.error.as_str()),
        (ExitCode::NoError, ""),
        "{r:?}"
    );
    assert_eq!(h.stats().unreadable_replies, 2500);
    let text = logged(&log);
    let warned = text
        .lines()
        .skip(before)
        .filter(|l| l.contains("unreadable") && l.contains("runtime=junk"))
        .count();
    assert!((10..=20).contains(&warned), "{warned} WARN lines:\n{text}");
    h.shutdown().await;
}
