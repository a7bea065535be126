//! Rate-limited log lines: at most one line per second per kind.
//!
//! Some conditions repeat as fast as the daemon can loop: an accept that fails with EMFILE,
//! a client flooding malformed requests, a crowd of connections over the cap. Logging each
//! one wrote 17 MB/s of identical WARN lines. A limited kind logs its first line, then at
//! most one per second, saying how many similar lines it swallowed in between.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one kind of line may be logged.
const PERIOD: Duration = Duration::from_secs(1);

/// Remembers, per kind, when a line was last logged and how many were suppressed since.
#[derive(Default)]
pub struct LogLimit {
    kinds: Mutex<HashMap<&'static str, Window>>,
}

struct Window {
    last: Instant,
    suppressed: u64,
}

/// How many similar lines were left out before this one; displays as
/// ` (N similar suppressed)`, or as nothing when there were none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed(pub u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} similar suppressed)"),
        }
    }
}

impl LogLimit {
    /// Whether a line of `kind` may be logged now: `Some` with the count of lines
    /// suppressed since the last one, or `None` (and the line is counted as suppressed).
    pub fn allow(&self, kind: &'static str) -> Option<Suppressed> {
        self.allow_at(kind, Instant::now())
    }

    fn allow_at(&self, kind: &'static str, now: Instant) -> Option<Suppressed> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        match kinds.get_mut(kind) {
            Some(w) if now.duration_since(w.last) < PERIOD => {
                w.suppressed += 1;
                None
            }
            Some(w) => {
                w.last = now;
                Some(Suppressed(std::mem::take(&mut w.suppressed)))
            }
            None => {
                kinds.insert(
                    kind,
                    Window {
                        last: now,
                        suppressed: 0,
                    },
                );
                Some(Suppressed(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_second_per_kind_with_the_count_of_the_rest() {
        let l = LogLimit::default();
        let t = Instant::now();
        assert_eq!(l.allow_at("accept", t), Some(Suppressed(0)));
        for i in 1..=500 {
            assert_eq!(l.allow_at("accept", t + Duration::from_millis(i)), None);
        }
        assert_eq!(
            l.allow_at("other", t + Duration::from_millis(10)),
            Some(Suppressed(0)),
            "kinds are limited separately"
        );
        assert_eq!(
            l.allow_at("accept", t + Duration::from_millis(1000)),
            Some(Suppressed(500))
        );
        assert_eq!(
            l.allow_at("accept", t + Duration::from_millis(2500)),
            Some(Suppressed(0))
        );
        assert_eq!(Suppressed(3).to_string(), " (3 similar suppressed)");
        assert_eq!(Suppressed(0).to_string(), "");
    }
}
