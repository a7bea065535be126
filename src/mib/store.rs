//! Rows kept across restarts, in SQLite (`rusqlite`, bundled): non-volatile scripts with
//! their code, non-volatile launch buttons, the smLangIndex of every runtime, and every run
//! row until its expire time, so that no result a manager has not read is lost.
//!
//! Writes go to one thread that commits them in batches (one transaction for whatever has
//! queued up), so a burst of launches costs a few transactions, not one each. The queue is
//! bounded; a full one makes the writer of the next row wait, never drops it. SQLite's WAL
//! with `synchronous=NORMAL` survives a `kill -9` of the daemon (the OS keeps what was
//! written); `flush` waits until everything queued is committed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use crate::host::{RunInfo, TimeInterval};

use super::Key;
use super::launch::LaunchRow;
use super::script::{CodeRow, ScriptRow};

/// Why the store could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state database {path}: row {what} cannot be read: {why}")]
    Row {
        path: PathBuf,
        what: String,
        why: String,
    },
}

/// What the store had.
#[derive(Debug, Default)]
pub struct Loaded {
    pub lang_indexes: BTreeMap<String, u32>,
    pub scripts: Vec<ScriptRow>,
    pub code: Vec<CodeRow>,
    pub launches: Vec<LaunchRow>,
    /// Run rows as they were last saved; executing ones are ended by the host's restore.
    pub runs: Vec<RunInfo>,
}

/// One write.
#[derive(Debug)]
pub enum Op {
    LangIndexes(BTreeMap<String, u32>),
    /// A script row and all its code fragments (which replace the saved ones).
    PutScript(Box<ScriptRow>, Vec<CodeRow>),
    DeleteScript(Key),
    PutLaunch(Box<LaunchRow>),
    DeleteLaunch(Key),
    PutRun(Box<RunInfo>),
    DeleteRun(u64),
    /// Answered once everything before it is committed.
    Flush(mpsc::SyncSender<()>),
}

/// Queued writes at most; a writer beyond this waits for the database.
const QUEUE: usize = 65_536;

/// The state database of one daemon.
pub struct Store {
    path: PathBuf,
    tx: mpsc::SyncSender<Op>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS lang (runtime TEXT PRIMARY KEY, idx INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS script (owner TEXT, name TEXT, row TEXT NOT NULL, PRIMARY KEY (owner, name));
CREATE TABLE IF NOT EXISTS code (owner TEXT, name TEXT, idx INTEGER, row TEXT NOT NULL, PRIMARY KEY (owner, name, idx));
CREATE TABLE IF NOT EXISTS launch (owner TEXT, name TEXT, row TEXT NOT NULL, row_expire INTEGER NOT NULL, PRIMARY KEY (owner, name));
CREATE TABLE IF NOT EXISTS run (run_id INTEGER PRIMARY KEY, row TEXT NOT NULL);
";

impl Store {
    /// Opens (or creates) `dir/smx.db`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("smx.db");
        let db_err = |source| StoreError::Db {
            path: path.clone(),
            source,
        };
        // Every owner's code, arguments and results are in here: only the daemon's user
        // may read it (the script storage is world-readable for runtimes; this is not).
        {
            use std::os::unix::fs::PermissionsExt;
            let private = |p: &Path, mode| {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(
                    |source| StoreError::Dir {
                        path: p.to_owned(),
                        source,
                    },
                )
            };
            private(dir, 0o700)?;
            let conn = Connection::open(&path).map_err(db_err)?;
            drop(conn);
            private(&path, 0o600)?;
        }
        let conn = Connection::open(&path).map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let p = path.clone();
        std::thread::Builder::new()
            .name("smx-store".into())
            .spawn(move || writer(conn, rx, p))
            .map_err(|source| StoreError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        Ok(Store { path, tx })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything saved.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let conn = Connection::open(&self.path).map_err(|source| StoreError::Db {
            path: self.path.clone(),
            source,
        })?;
        load(&conn, &self.path)
    }

    /// Queues a write.
    pub fn put(&self, op: Op) {
        if self.tx.send(op).is_err() {
            tracing::error!(path = %self.path.display(), "state database writer is gone: a row was not saved");
        }
    }

    /// Waits until every queued write is committed.
    pub async fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        self.put(Op::Flush(tx));
        let _ = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30))).await;
    }
}

fn load(conn: &Connection, path: &Path) -> Result<Loaded, StoreError> {
    let db = |source| StoreError::Db {
        path: path.to_owned(),
        source,
    };
    let row_err = |what: String, why: String| StoreError::Row {
        path: path.to_owned(),
        what,
        why,
    };
    let mut out = Loaded::default();
    let mut q = conn.prepare("SELECT runtime, idx FROM lang").map_err(db)?;
    for r in q
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))
        .map_err(db)?
    {
        let (name, idx) = r.map_err(db)?;
        out.lang_indexes.insert(name, idx);
    }
    let texts = |sql: &str| -> Result<Vec<(String, i64)>, StoreError> {
        let mut q = conn.prepare(sql).map_err(db)?;
        let rows = q
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1).unwrap_or(0)))
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    };
    for (t, _) in texts("SELECT row, 0 FROM script")? {
        out.scripts
            .push(serde_json::from_str(&t).map_err(|e| row_err("script".into(), e.to_string()))?);
    }
    for (t, _) in texts("SELECT row, 0 FROM code ORDER BY owner, name, idx")? {
        out.code
            .push(serde_json::from_str(&t).map_err(|e| row_err("code".into(), e.to_string()))?);
    }
    for (t, expire) in texts("SELECT row, row_expire FROM launch")? {
        let mut l: LaunchRow =
            serde_json::from_str(&t).map_err(|e| row_err("launch".into(), e.to_string()))?;
        let v = TimeInterval::from_centis(expire.max(0) as u64).unwrap_or(TimeInterval::MAX);
        l.row_expire = crate::host::Countdown::new(v);
        out.launches.push(l);
    }
    for (t, _) in texts("SELECT row, 0 FROM run ORDER BY run_id")? {
        out.runs
            .push(serde_json::from_str(&t).map_err(|e| row_err("run".into(), e.to_string()))?);
    }
    Ok(out)
}

/// The writer thread: waits for a write, takes whatever else is queued (bounded), commits
/// it all in one transaction.
fn writer(mut conn: Connection, rx: mpsc::Receiver<Op>, path: PathBuf) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let started = Instant::now();
        while batch.len() < 4096 && started.elapsed() < Duration::from_millis(20) {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut flushes = Vec::new();
        if let Err(e) = write_batch(&mut conn, batch, &mut flushes) {
            tracing::error!(path = %path.display(), "state database write failed: {e}");
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

fn write_batch(
    conn: &mut Connection,
    batch: Vec<Op>,
    flushes: &mut Vec<mpsc::SyncSender<()>>,
) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction()?;
    let json = |v: &dyn erased::Json| v.json();
    // Within a batch only the last write of each row counts (a run saved when it starts
    // and again when it ends, a launch button saved at every start): the others are
    // skipped before they are serialized.
    let last = last_writes(&batch);
    for (i, op) in batch.into_iter().enumerate() {
        if !last[i] {
            continue;
        }
        match op {
            Op::LangIndexes(m) => {
                tx.execute("DELETE FROM lang", [])?;
                for (name, idx) in m {
                    tx.execute(
                        "INSERT INTO lang (runtime, idx) VALUES (?1, ?2)",
                        params![name, idx],
                    )?;
                }
            }
            Op::PutScript(r, code) => {
                tx.execute(
                    "INSERT OR REPLACE INTO script (owner, name, row) VALUES (?1, ?2, ?3)",
                    params![r.owner, r.name, json(&*r)],
                )?;
                tx.execute(
                    "DELETE FROM code WHERE owner = ?1 AND name = ?2",
                    params![r.owner, r.name],
                )?;
                for c in code {
                    tx.execute(
                        "INSERT INTO code (owner, name, idx, row) VALUES (?1, ?2, ?3, ?4)",
                        params![c.owner, c.name, c.index, json(&c)],
                    )?;
                }
            }
            Op::DeleteScript((o, n)) => {
                tx.execute(
                    "DELETE FROM script WHERE owner = ?1 AND name = ?2",
                    params![o, n],
                )?;
                tx.execute(
                    "DELETE FROM code WHERE owner = ?1 AND name = ?2",
                    params![o, n],
                )?;
            }
            Op::PutLaunch(l) => {
                let expire = l.row_expire.remaining(Instant::now()).centis();
                tx.execute(
                    "INSERT OR REPLACE INTO launch (owner, name, row, row_expire) VALUES (?1, ?2, ?3, ?4)",
                    params![l.owner, l.name, json(&*l), expire],
                )?;
            }
            Op::DeleteLaunch((o, n)) => {
                tx.execute(
                    "DELETE FROM launch WHERE owner = ?1 AND name = ?2",
                    params![o, n],
                )?;
            }
            Op::PutRun(r) => {
                tx.execute(
                    "INSERT OR REPLACE INTO run (run_id, row) VALUES (?1, ?2)",
                    params![r.run_id.0 as i64, json(&*r)],
                )?;
            }
            Op::DeleteRun(id) => {
                tx.execute("DELETE FROM run WHERE run_id = ?1", params![id as i64])?;
            }
            Op::Flush(f) => flushes.push(f),
        }
    }
    tx.commit()
}

/// The row a write replaces or deletes.
#[derive(PartialEq, Eq, Hash)]
enum RowKey<'a> {
    Lang,
    Script(&'a str, &'a str),
    Launch(&'a str, &'a str),
    Run(u64),
}

/// For each write of `batch`, whether it is the last one of its row (flushes always are).
fn last_writes(batch: &[Op]) -> Vec<bool> {
    let mut seen = std::collections::HashSet::new();
    let mut last = vec![true; batch.len()];
    for (i, op) in batch.iter().enumerate().rev() {
        let key = match op {
            Op::LangIndexes(_) => RowKey::Lang,
            Op::PutScript(r, _) => RowKey::Script(&r.owner, &r.name),
            Op::DeleteScript((o, n)) => RowKey::Script(o, n),
            Op::PutLaunch(l) => RowKey::Launch(&l.owner, &l.name),
            Op::DeleteLaunch((o, n)) => RowKey::Launch(o, n),
            Op::PutRun(r) => RowKey::Run(r.run_id.0),
            Op::DeleteRun(id) => RowKey::Run(*id),
            Op::Flush(_) => continue,
        };
        last[i] = seen.insert(key);
    }
    last
}

/// Serializing rows for the database without naming each type.
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_else(|_| "null".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(name: &str, max: u32) -> LaunchRow {
        let mut l = LaunchRow::new("o", name, Instant::now());
        l.max_completed = max;
        l
    }

    #[test]
    fn only_the_last_write_of_a_row_counts_in_a_batch() {
        let (tx, _rx) = mpsc::sync_channel(1);
        let batch = vec![
            Op::DeleteRun(1),
            Op::PutLaunch(Box::new(launch("a", 1))),
            Op::Flush(tx),
            Op::DeleteLaunch(("o".into(), "a".into())),
            Op::DeleteRun(1),
            Op::DeleteRun(2),
            Op::PutLaunch(Box::new(launch("b", 1))),
        ];
        assert_eq!(
            last_writes(&batch),
            [false, false, true, true, true, true, true]
        );
    }

    #[tokio::test]
    async fn a_batch_commits_the_last_value_of_each_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for max in 1..=50 {
            store.put(Op::PutLaunch(Box::new(launch("a", max))));
        }
        store.put(Op::PutLaunch(Box::new(launch("b", 7))));
        store.put(Op::DeleteLaunch(("o".into(), "b".into())));
        store.put(Op::PutLaunch(Box::new(launch("c", 3))));
        store.flush().await;
        let mut got: Vec<(String, u32)> = store
            .load()
            .unwrap()
            .launches
            .into_iter()
            .map(|l| (l.name, l.max_completed))
            .collect();
        got.sort();
        assert_eq!(got, [("a".to_owned(), 50), ("c".to_owned(), 3)]);
    }
}

#[cfg(test)]
mod permission_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Found by a hostile review: the database (every owner's code, arguments and results)
    /// was world-readable.
    #[test]
    fn only_the_daemon_may_read_the_database() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        let s = Store::open(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(s.path()), 0o600);
    }
}
