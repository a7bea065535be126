//! Admission of control connections: a cap in total and per peer uid.
//!
//! Every open connection holds a file descriptor and a little memory in the daemon. Without
//! a cap one local user could open connections until the daemon hit EMFILE and could no
//! longer accept anyone or start runtimes. A [`Seat`] is one admitted connection; it frees
//! its place when dropped, which happens when the connection's last task has ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the daemon already has {max} control connections ([control] max_connections)")]
    Total { max: usize },
    #[error("uid {uid} already has {max} control connections ([control] max_connections_per_uid)")]
    PerUid { uid: u32, max: usize },
}

/// The counts of admitted connections.
#[derive(Default)]
pub struct Admission {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// One admitted connection's place.
pub struct Seat {
    admission: Arc<Admission>,
    uid: u32,
}

impl Admission {
    /// Admits a connection from `uid` if it stays within `max_total` and `max_per_uid`.
    pub fn admit(
        self: &Arc<Self>,
        uid: u32,
        max_total: usize,
        max_per_uid: usize,
    ) -> Result<Seat, Refusal> {
        let mut c = self.lock();
        if c.total >= max_total {
            return Err(Refusal::Total { max: max_total });
        }
        let mine = c.per_uid.get(&uid).copied().unwrap_or(0);
        if mine >= max_per_uid {
            return Err(Refusal::PerUid {
                uid,
                max: max_per_uid,
            });
        }
        c.total += 1;
        c.per_uid.insert(uid, mine + 1);
        Ok(Seat {
            admission: self.clone(),
            uid,
        })
    }

    /// Connections admitted and not yet closed.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut c = self.admission.lock();
        c.total -= 1;
        if let Some(n) = c.per_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.per_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_total_and_per_uid_and_seats_free_their_place() {
        let a = Arc::new(Admission::default());
        let s1 = a.admit(1000, 3, 2).unwrap();
        let s2 = a.admit(1000, 3, 2).unwrap();
        assert_eq!(
            a.admit(1000, 3, 2).err(),
            Some(Refusal::PerUid { uid: 1000, max: 2 })
        );
        let s3 = a.admit(0, 3, 2).unwrap();
        assert_eq!(a.admit(0, 3, 2).err(), Some(Refusal::Total { max: 3 }));
        assert_eq!(a.open(), 3);
        drop(s1);
        let _s4 = a.admit(1000, 3, 2).unwrap();
        drop((s2, s3));
        assert_eq!(a.open(), 1);
    }
}
