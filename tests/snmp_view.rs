//! The Script MIB's SNMP mapping without IO: OID order of Get/GetNext/GetBulk (RFC 2741
//! 7.2.3), SearchRange include/end handling, length-prefixed SnmpAdminString indexes
//! (RFC 2578 7.7), the error statuses a TestSet's varbinds get before the model sees them
//! (RFC 3416 4.2.5), and smRunTable walked from the host's run table.

mod common;

use std::collections::BTreeMap;
use std::time::SystemTime;

use smx::agentx::{GetBulk, Oid, ResError, SearchRange, Value, VarBind};
use smx::host::{RunInfo, TimeInterval};
use smx::mib::{CodeRow, LangRow, Mib, RowStatus, ScriptRow, types};
use smx::proto::{ExitCode, Octets, RunId, RunState};
use smx::snmp::index::owner_name;
use smx::snmp::set::changes;
use smx::snmp::view::{self, MibSource, Row, Source, Table};

fn oid(s: &str) -> Oid {
    s.parse().unwrap()
}

/// Rows held in ordered maps, by index OID.
#[derive(Default)]
struct Fake {
    tables: BTreeMap<(u8, Vec<u32>), Row>,
}

fn slot(t: Table) -> u8 {
    Table::ALL.iter().position(|x| *x == t).unwrap() as u8
}

impl Fake {
    fn add(&mut self, t: Table, idx: Vec<u32>, row: Row) {
        self.tables.insert((slot(t), idx), row);
    }
}

impl Source for Fake {
    fn row(&self, t: Table, index: &[u32]) -> Option<Row> {
        self.tables.get(&(slot(t), index.to_vec())).cloned()
    }
    fn next_row(&self, t: Table, after: &[u32], inclusive: bool) -> Option<(Vec<u32>, Row)> {
        self.tables
            .iter()
            .filter(|((s, _), _)| *s == slot(t))
            .find(|((_, k), _)| {
                if inclusive {
                    k.as_slice() >= after
                } else {
                    k.as_slice() > after
                }
            })
            .map(|((_, k), r)| (k.clone(), r.clone()))
    }
    fn run_index_next(&self, _: &str, _: &str) -> u32 {
        9
    }
}

fn lang(i: u32) -> Row {
    Row::Lang(LangRow {
        index: i,
        runtime: format!("rt{i}"),
        language: types::Oid(vec![1, 3, 6, 1, 4, 1, i]),
        version: "1".into(),
        vendor: types::Oid::zero_dot_zero(),
        revision: String::new(),
        descr: format!("lang {i}"),
    })
}

fn script(owner: &str, name: &str) -> Row {
    Row::Script(ScriptRow::new(owner, name))
}

/// Two languages, scripts "b"/"x" and "aa"/"x" (the shorter owner sorts first: the
/// length comes first in the index), one code row.
fn fake() -> Fake {
    let mut f = Fake::default();
    f.add(Table::Lang, vec![1], lang(1));
    f.add(Table::Lang, vec![2], lang(2));
    f.add(Table::Script, owner_name("b", "x"), script("b", "x"));
    f.add(Table::Script, owner_name("aa", "x"), script("aa", "x"));
    let mut c = CodeRow::new("b", "x", 1);
    c.text = b"echo".to_vec();
    c.row_status = RowStatus::Active;
    let mut ci = owner_name("b", "x");
    ci.push(1);
    f.add(Table::Code, ci, Row::Code(c));
    f
}

fn next(src: &dyn Source, start: &str, include: bool, end: &str) -> VarBind {
    view::get_next(
        src,
        &SearchRange {
            start: oid(start),
            end: oid(end),
            include,
        },
    )
}

#[test]
fn rfc2741_7_2_3_2_get_next_rows() {
    let f = fake();
    // (start, include, end) -> the name found (or "" for endOfMibView at start).
    let rows: &[(&str, bool, &str, &str)] = &[
        ("1.3.6.1.2.1.64", false, "", "1.3.6.1.2.1.64.1.1.1.2.1"),
        (
            "1.3.6.1.2.1.64.1.1.1.2.1",
            false,
            "",
            "1.3.6.1.2.1.64.1.1.1.2.2",
        ),
        (
            "1.3.6.1.2.1.64.1.1.1.2.1",
            true,
            "",
            "1.3.6.1.2.1.64.1.1.1.2.1",
        ),
        (
            "1.3.6.1.2.1.64.1.1.1.2.2",
            false,
            "",
            "1.3.6.1.2.1.64.1.1.1.3.1",
        ),
        // The last column of the last language row continues in smScriptTable (smExtsn is
        // empty), whose first row is owner "b" (1.98): the length comes first, 1 < 2.
        (
            "1.3.6.1.2.1.64.1.1.1.6.2",
            false,
            "",
            "1.3.6.1.2.1.64.1.3.1.1.3.1.98.1.120",
        ),
        (
            "1.3.6.1.2.1.64.1.3.1.1.3",
            false,
            "",
            "1.3.6.1.2.1.64.1.3.1.1.3.1.98.1.120",
        ),
        (
            "1.3.6.1.2.1.64.1.3.1.1.3.1.98.1.120",
            false,
            "",
            "1.3.6.1.2.1.64.1.3.1.1.3.2.97.97.1.120",
        ),
        // A partial index: the next row after it.
        (
            "1.3.6.1.2.1.64.1.3.1.1.3.1.98",
            false,
            "",
            "1.3.6.1.2.1.64.1.3.1.1.3.1.98.1.120",
        ),
        // Not-accessible index columns are skipped: column 1 and 2 lead to column 3.
        (
            "1.3.6.1.2.1.64.1.3.1.1.1",
            false,
            "",
            "1.3.6.1.2.1.64.1.3.1.1.3.1.98.1.120",
        ),
        // Last script column, last row: on to smCodeTable.
        (
            "1.3.6.1.2.1.64.1.3.1.1.11.2.97.97.1.120",
            false,
            "",
            "1.3.6.1.2.1.64.1.3.2.1.2.1.98.1.120.1",
        ),
        // The end is not included: an end at the found name gives endOfMibView.
        (
            "1.3.6.1.2.1.64.1.1.1.2.2",
            false,
            "1.3.6.1.2.1.64.1.1.1.3.1",
            "",
        ),
        ("1.3.6.1.2.1.64.1.1.1.6.2", false, "1.3.6.1.2.1.64.1.2", ""),
        // Past everything.
        ("1.3.6.1.2.1.64.1.3.2.1.3.1.98.1.120.1", false, "", ""),
        ("1.3.6.1.2.1.64.2", false, "", ""),
    ];
    for (start, include, end, want) in rows {
        let vb = next(&f, start, *include, end);
        if want.is_empty() {
            assert_eq!(vb.value, Value::EndOfMibView, "{start}: {vb:?}");
            assert_eq!(vb.name, oid(start), "endOfMibView names the start");
        } else {
            assert_eq!(vb.name, oid(want), "{start} include={include} end={end:?}");
        }
    }
}

#[test]
fn rfc2741_7_2_3_1_get_answers() {
    let f = fake();
    let get = |s: &str| view::get(&f, &oid(s)).value;
    assert_eq!(
        get("1.3.6.1.2.1.64.1.1.1.6.2"),
        Value::OctetString(b"lang 2".to_vec())
    );
    assert_eq!(
        get("1.3.6.1.2.1.64.1.1.1.2.1"),
        Value::ObjectIdentifier(oid("1.3.6.1.4.1.1"))
    );
    assert_eq!(get("1.3.6.1.2.1.64.1.1.1.6.3"), Value::NoSuchInstance);
    assert_eq!(
        get("1.3.6.1.2.1.64.1.1.1.1.1"),
        Value::NoSuchObject,
        "index column"
    );
    assert_eq!(get("1.3.6.1.2.1.64.1.9"), Value::NoSuchObject);
    // smScriptLastChange never set: DateAndTime "not yet", 8 zero octets.
    assert_eq!(
        get("1.3.6.1.2.1.64.1.3.1.1.11.1.98.1.120"),
        Value::OctetString(vec![0; 8])
    );
    assert_eq!(
        get("1.3.6.1.2.1.64.1.3.1.1.9.1.98.1.120"),
        Value::Integer(3),
        "notReady"
    );
    assert_eq!(
        get("1.3.6.1.2.1.64.1.3.2.1.2.1.98.1.120.1"),
        Value::OctetString(b"echo".to_vec())
    );
}

#[test]
fn rfc2741_7_2_3_3_get_bulk() {
    let f = fake();
    let r = |s: &str| SearchRange {
        start: oid(s),
        end: Oid::null(),
        include: false,
    };
    let out = view::get_bulk(
        &f,
        &GetBulk {
            context: None,
            non_repeaters: 1,
            max_repetitions: 3,
            ranges: vec![r("1.3.6.1.2.1.64"), r("1.3.6.1.2.1.64.1.3.2")],
        },
    );
    // 1 non-repeater, then the repeater: the code row, endOfMibView, and stop.
    let names: Vec<String> = out.iter().map(|v| v.name.to_string()).collect();
    assert_eq!(
        names,
        [
            "1.3.6.1.2.1.64.1.1.1.2.1",
            "1.3.6.1.2.1.64.1.3.2.1.2.1.98.1.120.1",
            "1.3.6.1.2.1.64.1.3.2.1.3.1.98.1.120.1",
            "1.3.6.1.2.1.64.1.3.2.1.3.1.98.1.120.1",
        ]
    );
    assert_eq!(out[3].value, Value::EndOfMibView);
}

#[test]
fn rfc3416_4_2_5_varbind_checks_before_the_model() {
    let i = "3.110.111.99.2.104.105";
    let vb = |name: String, value: Value| VarBind::new(oid(&name), value);
    let rows: Vec<(VarBind, Option<ResError>)> = vec![
        (
            vb(format!("1.3.6.1.2.1.64.1.3.1.1.9.{i}"), Value::Integer(4)),
            None,
        ),
        (
            vb(
                format!("1.3.6.1.2.1.64.1.3.1.1.9.{i}"),
                Value::OctetString(vec![4]),
            ),
            Some(ResError::WrongType),
        ),
        (
            vb(format!("1.3.6.1.2.1.64.1.3.1.1.3.{i}"), Value::Integer(4)),
            Some(ResError::WrongType),
        ),
        (
            vb(format!("1.3.6.1.2.1.64.1.4.1.1.6.{i}"), Value::Integer(4)),
            Some(ResError::WrongType),
        ),
        (
            vb(format!("1.3.6.1.2.1.64.1.4.1.1.6.{i}"), Value::Gauge32(4)),
            None,
        ),
        (
            vb(format!("1.3.6.1.2.1.64.1.3.1.1.7.{i}"), Value::Integer(1)),
            Some(ResError::NotWritable),
        ),
        (
            vb(format!("1.3.6.1.2.1.64.1.4.1.1.14.{i}"), Value::Integer(1)),
            Some(ResError::NotWritable),
        ),
        (
            vb(
                format!("1.3.6.1.2.1.64.1.4.2.1.10.{i}.1"),
                Value::Integer(1),
            ),
            Some(ResError::NotWritable),
        ),
        (
            vb(
                "1.3.6.1.2.1.64.1.1.1.6.1".into(),
                Value::OctetString(vec![]),
            ),
            Some(ResError::NotWritable),
        ),
        (
            vb("1.3.6.1.2.1.1.5.0".into(), Value::OctetString(vec![])),
            Some(ResError::NotWritable),
        ),
        // An index that is no (owner, name): no such row can ever exist.
        (
            vb("1.3.6.1.2.1.64.1.3.1.1.9.3.110".into(), Value::Integer(4)),
            Some(ResError::NoCreation),
        ),
        (
            vb(format!("1.3.6.1.2.1.64.1.4.2.1.5.{i}"), Value::Integer(0)),
            Some(ResError::NoCreation),
        ),
        (
            vb(
                "1.3.6.1.2.1.64.1.3.1.1.9.1.300.1.120".into(),
                Value::Integer(4),
            ),
            Some(ResError::NoCreation),
        ),
    ];
    for (v, want) in rows {
        let got = changes(std::slice::from_ref(&v)).err().map(|(i, e)| {
            assert_eq!(i, 0);
            e
        });
        assert_eq!(got, want, "{v:?}");
    }
    // The failing varbind is named by its position in the PDU.
    let two = [
        vb(format!("1.3.6.1.2.1.64.1.3.1.1.9.{i}"), Value::Integer(4)),
        vb(format!("1.3.6.1.2.1.64.1.3.1.1.4.{i}"), Value::Null),
    ];
    assert_eq!(changes(&two).unwrap_err(), (1, ResError::WrongType));
}

fn run(id: u64, owner: &str, name: &str, index: u32) -> RunInfo {
    RunInfo {
        run_id: RunId(id),
        owner: owner.into(),
        name: name.into(),
        index,
        script: "s".into(),
        runtime: "exec".into(),
        profile: "trusted".into(),
        os_profile: None,
        argument: Octets::new(b"arg".to_vec()),
        state: RunState::Terminated,
        exit_code: ExitCode::NoError,
        result: Octets::new(format!("r{id}").into_bytes()),
        error: String::new(),
        start_time: SystemTime::now(),
        end_time: Some(SystemTime::now()),
        result_time: None,
        error_time: None,
        lifetime: TimeInterval::ZERO,
        expire_time: TimeInterval::ONE_HOUR,
        runtime_pid: None,
    }
}

/// smRunTable walked from the run table itself: (owner, name) in index-OID order (length
/// first), then smRunIndex; smRunExpireTime ticks down (TimeInterval, RFC 3165).
#[tokio::test]
async fn run_table_walk_follows_index_order() {
    let host = common::host("");
    for r in [
        run(1, "zz", "a", 7),
        run(2, "b", "long", 3),
        run(3, "b", "long", 10),
        run(4, "b", "c", 5),
    ] {
        assert!(host.restore(r));
    }
    let mib = Mib::new(host, None).unwrap();
    let src = MibSource::new(&mib);
    let mut start = oid("1.3.6.1.2.1.64.1.4.2.1.8");
    let mut seen = Vec::new();
    loop {
        let vb = view::get_next(
            &src,
            &SearchRange {
                start: start.clone(),
                end: oid("1.3.6.1.2.1.64.1.4.2.1.9"),
                include: false,
            },
        );
        if vb.value == Value::EndOfMibView {
            break;
        }
        seen.push(vb.value.clone());
        start = vb.name;
    }
    let r = |s: &str| Value::OctetString(s.as_bytes().to_vec());
    // "b"/"c" (1.98.1.99) < "b"/"long" (1.98.4...) < "zz"/"a" (2.122.122...).
    assert_eq!(seen, [r("r4"), r("r2"), r("r3"), r("r1")]);
    let name = format!(
        "1.3.6.1.2.1.64.1.4.2.1.6.{}.3",
        owner_name("b", "long")
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".")
    );
    let Value::Integer(a) = view::get(&src, &oid(&name)).value else {
        panic!()
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let Value::Integer(b) = view::get(&MibSource::new(&mib), &oid(&name)).value else {
        panic!()
    };
    assert!(a <= 360_000 && b < a, "smRunExpireTime ticks: {a} then {b}");
    mib.shutdown().await;
}
