//! The Script MIB's objects as SNMP reads them: Get, GetNext and GetBulk over
//! smLangTable, smExtsnTable, smScriptTable, smCodeTable, smLaunchTable and smRunTable, in
//! lexicographic OID order (RFC 2741 sections 7.2.3.1-7.2.3.3).
//!
//! Pure: the rows come from a [`Source`]; [`MibSource`] is the model's, built per PDU.
//! A step of a walk costs a binary search over a table's rows (the small tables are
//! sorted once per PDU), and for smRunTable one ordered lookup in the run table: walking
//! 10,000 runs does no O(n) work per GetNext.

use std::cell::OnceCell;
use std::ops::RangeInclusive;

use crate::agentx::{GetBulk, Oid, SearchRange, Value, VarBind};
use crate::host::RunInfo;
use crate::mib::{CodeRow, ExtsnRow, LangRow, LaunchView, Mib, ScriptRow, types};

use super::index::{self, SCRIPT_MIB};

/// The tables under `smObjects`, in OID order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Lang,
    Extsn,
    Script,
    Code,
    Launch,
    Run,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::Lang,
        Table::Extsn,
        Table::Script,
        Table::Code,
        Table::Launch,
        Table::Run,
    ];

    /// The entry's OID below scriptMIB (RFC 3165: smLangEntry is smObjects.1.1, ...).
    pub fn entry(self) -> &'static [u32] {
        match self {
            Table::Lang => &[1, 1, 1],
            Table::Extsn => &[1, 2, 1],
            Table::Script => &[1, 3, 1, 1],
            Table::Code => &[1, 3, 2, 1],
            Table::Launch => &[1, 4, 1, 1],
            Table::Run => &[1, 4, 2, 1],
        }
    }

    /// The accessible columns (the index columns are not-accessible).
    pub fn columns(self) -> RangeInclusive<u32> {
        match self {
            Table::Lang | Table::Extsn => 2..=6,
            Table::Script => 3..=11,
            Table::Code => 2..=3,
            Table::Launch => 3..=19,
            Table::Run => 2..=13,
        }
    }

    /// The full OID of column `col`.
    pub fn column_oid(self, col: u32) -> Vec<u32> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&SCRIPT_MIB);
        v.extend_from_slice(self.entry());
        v.push(col);
        v
    }

    /// Which table, column and instance `name` is, if it names a column of ours.
    pub fn locate(name: &[u32]) -> Option<(Table, u32, &[u32])> {
        let rest = name.strip_prefix(&SCRIPT_MIB[..])?;
        Table::ALL.into_iter().find_map(|t| {
            let after = rest.strip_prefix(t.entry())?;
            let (&col, idx) = after.split_first()?;
            t.columns().contains(&col).then_some((t, col, idx))
        })
    }
}

/// One row of one table, with what its columns are read from.
#[derive(Debug, Clone)]
pub enum Row {
    Lang(LangRow),
    Extsn(ExtsnRow),
    Script(ScriptRow),
    Code(CodeRow),
    Launch(Box<LaunchView>),
    Run(Box<RunInfo>),
}

/// Where the rows come from.
pub trait Source {
    /// The row at exactly `index`.
    fn row(&self, t: Table, index: &[u32]) -> Option<Row>;
    /// The first row whose index is after `after` (or equal to it, if `inclusive`).
    fn next_row(&self, t: Table, after: &[u32], inclusive: bool) -> Option<(Vec<u32>, Row)>;
    /// smLaunchRunIndexNext: a fresh value on every read.
    fn run_index_next(&self, owner: &str, name: &str) -> u32;
}

/// Get (RFC 2741 7.2.3.1): the value of exactly `name`; noSuchObject if it is no column of
/// ours, noSuchInstance if the column has no such row.
pub fn get(src: &dyn Source, name: &Oid) -> VarBind {
    let value = match Table::locate(name.subids()) {
        None => Value::NoSuchObject,
        Some((t, col, idx)) => match src.row(t, idx) {
            Some(row) => value(src, &row, col),
            None => Value::NoSuchInstance,
        },
    };
    VarBind::new(name.clone(), value)
}

/// GetNext (RFC 2741 7.2.3.2): the first instance in `range`, or endOfMibView named by
/// the range's start.
pub fn get_next(src: &dyn Source, range: &SearchRange) -> VarBind {
    let start = range.start.subids();
    let end = (!range.end.is_null()).then(|| range.end.subids());
    for t in Table::ALL {
        for col in t.columns() {
            let col_oid = t.column_oid(col);
            let (after, inclusive) = if let Some(after) = start.strip_prefix(&col_oid[..]) {
                (after, range.include)
            } else if start < &col_oid[..] {
                (&[][..], true)
            } else {
                continue;
            };
            if end.is_some_and(|e| &col_oid[..] >= e) {
                return end_of_view(range);
            }
            let Some((idx, row)) = src.next_row(t, after, inclusive) else {
                continue;
            };
            let mut name = col_oid;
            name.extend_from_slice(&idx);
            if end.is_some_and(|e| &name[..] >= e) {
                return end_of_view(range);
            }
            let value = value(src, &row, col);
            return VarBind::new(Oid::new(name).unwrap_or_default(), value);
        }
    }
    end_of_view(range)
}

fn end_of_view(range: &SearchRange) -> VarBind {
    VarBind::new(range.start.clone(), Value::EndOfMibView)
}

/// GetBulk (RFC 2741 7.2.3.3): the non-repeaters once, then up to `max_repetitions`
/// rounds of the others, each continuing from the name it reached; stops early once every
/// repeater is at endOfMibView.
pub fn get_bulk(src: &dyn Source, g: &GetBulk) -> Vec<VarBind> {
    let n = usize::from(g.non_repeaters).min(g.ranges.len());
    let mut out: Vec<VarBind> = g.ranges[..n].iter().map(|r| get_next(src, r)).collect();
    let mut ranges: Vec<SearchRange> = g.ranges[n..].to_vec();
    for _ in 0..g.max_repetitions {
        if ranges.is_empty() {
            break;
        }
        let mut all_done = true;
        for r in ranges.iter_mut() {
            let vb = get_next(src, r);
            if vb.value != Value::EndOfMibView {
                all_done = false;
                r.start = vb.name.clone();
                r.include = false;
            }
            out.push(vb);
        }
        if all_done {
            break;
        }
    }
    out
}

fn octets(s: impl AsRef<[u8]>) -> Value {
    Value::OctetString(s.as_ref().to_vec())
}

fn oid(o: &types::Oid) -> Value {
    Value::ObjectIdentifier(Oid::new(o.0.clone()).unwrap_or_default())
}

fn int(n: impl TryInto<i32>) -> Value {
    Value::Integer(n.try_into().unwrap_or(i32::MAX))
}

fn date(t: Option<std::time::SystemTime>) -> Value {
    Value::OctetString(types::date_and_time(t))
}

/// The value of column `col` of `row` (a column [`Table::columns`] lists).
pub fn value(src: &dyn Source, row: &Row, col: u32) -> Value {
    match (row, col) {
        (Row::Lang(l), 2) => oid(&l.language),
        (Row::Lang(l), 3) => octets(&l.version),
        (Row::Lang(l), 4) => oid(&l.vendor),
        (Row::Lang(l), 5) => octets(&l.revision),
        (Row::Lang(l), 6) => octets(&l.descr),
        (Row::Extsn(e), 2) => oid(&e.extension),
        (Row::Extsn(e), 3) => octets(&e.version),
        (Row::Extsn(e), 4) => oid(&e.vendor),
        (Row::Extsn(e), 5) => octets(&e.revision),
        (Row::Extsn(e), 6) => octets(&e.descr),
        (Row::Script(s), 3) => octets(&s.descr),
        (Row::Script(s), 4) => int(s.language),
        (Row::Script(s), 5) => octets(&s.source),
        (Row::Script(s), 6) => int(s.admin_status.number()),
        (Row::Script(s), 7) => int(s.oper_status.number()),
        (Row::Script(s), 8) => int(s.storage_type.number()),
        (Row::Script(s), 9) => int(s.row_status.number()),
        (Row::Script(s), 10) => octets(&s.error),
        (Row::Script(s), 11) => date(s.last_change),
        (Row::Code(c), 2) => octets(&c.text),
        (Row::Code(c), 3) => int(c.row_status.number()),
        (Row::Launch(l), c) => launch_value(src, l, c),
        (Row::Run(r), c) => run_value(r, c),
        _ => Value::NoSuchInstance,
    }
}

fn launch_value(src: &dyn Source, v: &LaunchView, col: u32) -> Value {
    let l = &v.row;
    match col {
        3 => octets(&l.script_owner),
        4 => octets(&l.script_name),
        5 => octets(l.argument.as_bytes()),
        6 => Value::Gauge32(l.max_running),
        7 => Value::Gauge32(l.max_completed),
        8 => int(l.lifetime.centis()),
        9 => int(l.expire_time.centis()),
        10 => int(l.start),
        // smLaunchControl reads as nop: it acts on runs, it holds no state.
        11 => int(types::Control::Nop.number()),
        12 => int(l.admin_status.number()),
        13 => int(v.oper_status.number()),
        14 => int(src.run_index_next(&l.owner, &l.name)),
        15 => int(l.storage_type.number()),
        16 => int(l.row_status.number()),
        17 => octets(&l.error),
        18 => date(l.last_change),
        19 => int(v.row_expire_time.centis()),
        _ => Value::NoSuchInstance,
    }
}

fn run_value(r: &RunInfo, col: u32) -> Value {
    match col {
        2 => octets(r.argument.as_bytes()),
        3 => date(Some(r.start_time)),
        4 => date(r.end_time),
        5 => int(r.lifetime.centis()),
        6 => int(r.expire_time.centis()),
        7 => int(r.exit_code.number()),
        8 => octets(r.result.as_bytes()),
        9 => int(types::Control::Nop.number()),
        10 => int(r.state.number()),
        11 => octets(&r.error),
        12 => date(r.result_time),
        13 => date(r.error_time),
        _ => Value::NoSuchInstance,
    }
}

/// A row with its index OID.
type Indexed = (Vec<u32>, Row);

/// The model as a [`Source`], for one PDU: each small table is read and sorted by index
/// OID at most once; smRunTable is looked up in the host's run table.
pub struct MibSource<'a> {
    mib: &'a Mib,
    sorted: [OnceCell<Vec<Indexed>>; 5],
}

impl<'a> MibSource<'a> {
    pub fn new(mib: &'a Mib) -> MibSource<'a> {
        MibSource {
            mib,
            sorted: Default::default(),
        }
    }

    /// A small table's rows by index OID.
    fn rows(&self, t: Table) -> &[Indexed] {
        let slot = match t {
            Table::Lang => 0,
            Table::Extsn => 1,
            Table::Script => 2,
            Table::Code => 3,
            Table::Launch | Table::Run => 4,
        };
        self.sorted[slot].get_or_init(|| {
            let mut v: Vec<Indexed> = match t {
                Table::Lang => self
                    .mib
                    .languages()
                    .0
                    .into_iter()
                    .map(|l| (vec![l.index], Row::Lang(l)))
                    .collect(),
                Table::Extsn => self
                    .mib
                    .languages()
                    .1
                    .into_iter()
                    .map(|e| (vec![e.lang, e.index], Row::Extsn(e)))
                    .collect(),
                Table::Script => self
                    .mib
                    .scripts()
                    .into_iter()
                    .map(|s| (index::owner_name(&s.owner, &s.name), Row::Script(s)))
                    .collect(),
                Table::Code => self
                    .mib
                    .code(None)
                    .into_iter()
                    .map(|c| {
                        (
                            index::owner_name_n(&c.owner, &c.name, c.index),
                            Row::Code(c),
                        )
                    })
                    .collect(),
                Table::Launch | Table::Run => self
                    .mib
                    .launches()
                    .into_iter()
                    .map(|l| {
                        let idx = index::owner_name(&l.row.owner, &l.row.name);
                        (idx, Row::Launch(Box::new(l)))
                    })
                    .collect(),
            };
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        })
    }

    fn next_run(&self, after: &[u32], inclusive: bool) -> Option<(Vec<u32>, Row)> {
        let host = self.mib.host();
        let mut launches: Vec<(Vec<u32>, String, String)> = host
            .run_launches()
            .into_iter()
            .map(|(o, n)| (index::owner_name(&o, &n), o, n))
            .collect();
        launches.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, owner, name) in launches {
            let from = if let Some(rest) = after.strip_prefix(&key[..]) {
                match rest {
                    [] => 0,
                    [r] if inclusive => *r,
                    [r, ..] => match r.checked_add(1) {
                        Some(n) => n,
                        None => continue,
                    },
                }
            } else if &key[..] > after {
                0
            } else {
                continue;
            };
            if let Some(run) = host.run_from(&owner, &name, from) {
                let idx = index::owner_name_n(&owner, &name, run.index);
                return Some((idx, Row::Run(Box::new(run))));
            }
        }
        None
    }
}

impl Source for MibSource<'_> {
    fn row(&self, t: Table, idx: &[u32]) -> Option<Row> {
        if t == Table::Run {
            let (o, n, i) = index::parse_owner_name_n(idx)?;
            return self
                .mib
                .host()
                .run_at(&o, &n, i)
                .map(|r| Row::Run(Box::new(r)));
        }
        let rows = self.rows(t);
        rows.binary_search_by(|(k, _)| k.as_slice().cmp(idx))
            .ok()
            .map(|i| rows[i].1.clone())
    }

    fn next_row(&self, t: Table, after: &[u32], inclusive: bool) -> Option<(Vec<u32>, Row)> {
        if t == Table::Run {
            return self.next_run(after, inclusive);
        }
        let rows = self.rows(t);
        let i = rows.partition_point(|(k, _)| {
            if inclusive {
                k.as_slice() < after
            } else {
                k.as_slice() <= after
            }
        });
        rows.get(i).cloned()
    }

    fn run_index_next(&self, owner: &str, name: &str) -> u32 {
        self.mib.run_index_next(owner, name)
    }
}
