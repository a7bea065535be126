//! Table-driven tests of the AgentX codec against RFC 2741.
//!
//! - section 5.1: OID encoding, with and without `prefix`, including the RFC's examples;
//! - section 5.2: SearchRange with the include flag, the RFC's example;
//! - sections 5.3, 5.4: Octet String padding, every VarBind type;
//! - section 6.1: the header in both byte orders, every flag, contexts (6.1.1);
//! - section 6.2: every PDU type byte for byte in both byte orders, from an assembler that
//!   knows only the RFC's layouts; the RFC's Register example; hand-derived byte strings
//!   of a Get, a TestSet of a DateAndTime, Responses with a sysUpTime past 2^31 and with
//!   wrongValue at index 2;
//! - section 7.1: decoding failures, each with the offset and construct it names, split
//!   into header errors (no reply) and payload errors (reply parseError);
//! - the framer: PDUs cut from any chunking, the payload_length cap, misaligned lengths.

use std::num::NonZeroU8;

use bytes::BytesMut;
use smx::agentx::{
    AddAgentCaps, ByteOrder, Close, CloseReason, DEFAULT_MAX_PAYLOAD, DEFAULT_PRIORITY,
    DecodeError, FrameError, Framer, Get, GetBulk, GetNext, Header, IndexAllocation, MAX_SUBIDS,
    Malformed, Notify, Oid, OidError, Open, Payload, Pdu, PduType, Ping, Register, RemoveAgentCaps,
    ResError, Response, SearchRange, SubidRange, TestSet, Unregister, Value, VarBind,
};

// ---------------------------------------------------------------------------------------------
// an assembler that knows RFC 2741's layouts and nothing of the codec

/// One field of a PDU as the RFC draws it.
#[derive(Clone)]
enum W {
    /// A single octet.
    B(u8),
    /// `h.flags` without NETWORK_BYTE_ORDER: the renderer adds it for big-endian.
    Flags(u8),
    /// A 2-octet integer.
    S(u16),
    /// A 4-octet integer.
    L(u32),
    /// An 8-octet integer.
    Q(u64),
    /// Octets in transmission order whatever the byte order.
    Raw(Vec<u8>),
}
use W::*;

fn render(words: &[W], order: ByteOrder) -> Vec<u8> {
    let be = order == ByteOrder::BigEndian;
    let mut out = Vec::new();
    for w in words {
        match w {
            B(b) => out.push(*b),
            Flags(f) => out.push(f | if be { 0x10 } else { 0 }),
            S(v) if be => out.extend(v.to_be_bytes()),
            S(v) => out.extend(v.to_le_bytes()),
            L(v) if be => out.extend(v.to_be_bytes()),
            L(v) => out.extend(v.to_le_bytes()),
            Q(v) if be => out.extend(v.to_be_bytes()),
            Q(v) => out.extend(v.to_le_bytes()),
            Raw(r) => out.extend(r),
        }
    }
    out
}

const SESSION: u32 = 0x0102_0304;
const TRANSACTION: u32 = 0x0506_0708;
const PACKET: u32 = 0x090A_0B0C;

/// The 20-octet header (section 6.1) with the test ids and an explicit payload length.
fn hdr(pdu_type: u8, flags: u8, payload_length: u32) -> Vec<W> {
    vec![
        B(1),
        B(pdu_type),
        Flags(flags),
        B(0),
        L(SESSION),
        L(TRANSACTION),
        L(PACKET),
        L(payload_length),
    ]
}

/// An Object Identifier (section 5.1): header octets as given, then the sub-identifiers.
fn o(prefix: u8, include: u8, subids: &[u32]) -> Vec<W> {
    let mut v = vec![B(subids.len() as u8), B(prefix), B(include), B(0)];
    v.extend(subids.iter().map(|&s| L(s)));
    v
}

/// An Octet String (section 5.3): length, octets, zero padding to a multiple of 4.
fn os(octets: &[u8]) -> Vec<W> {
    let mut raw = octets.to_vec();
    raw.resize(octets.len().div_ceil(4) * 4, 0);
    vec![L(octets.len() as u32), Raw(raw)]
}

fn cat(parts: Vec<Vec<W>>) -> Vec<W> {
    parts.into_iter().flatten().collect()
}

// ---------------------------------------------------------------------------------------------
// helpers for the typed side

fn oid(s: &str) -> Oid {
    s.parse().expect("test OIDs are valid")
}

fn pdu(payload: Payload) -> Pdu {
    Pdu {
        session_id: SESSION,
        transaction_id: TRANSACTION,
        packet_id: PACKET,
        byte_order: ByteOrder::BigEndian,
        payload,
    }
}

fn with_order(mut p: Pdu, order: ByteOrder) -> Pdu {
    p.byte_order = order;
    p
}

fn vb(name: &str, value: Value) -> VarBind {
    VarBind::new(oid(name), value)
}

fn range(start: &str, end: &str, include: bool) -> SearchRange {
    SearchRange {
        start: oid(start),
        end: oid(end),
        include,
    }
}

fn mal(at: usize, expected: &'static str) -> Malformed {
    Malformed { at, expected }
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    ::hex::decode(s).expect("test hex is valid")
}

fn show(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

const ORDERS: [ByteOrder; 2] = [ByteOrder::BigEndian, ByteOrder::LittleEndian];

/// Both directions, both byte orders: `p` encodes to `wire` and `wire` decodes to `p`.
fn assert_vector(name: &str, p: &Pdu, wire: &[W]) {
    for order in ORDERS {
        let bytes = render(wire, order);
        let len = u32::from_be_bytes(
            render(&wire[7..8], ByteOrder::BigEndian)[..4]
                .try_into()
                .unwrap(),
        );
        assert_eq!(
            bytes.len(),
            20 + len as usize,
            "{name}: the test vector's own length"
        );
        let p = with_order(p.clone(), order);
        let got = p.to_bytes().expect("test PDUs encode");
        assert_eq!(show(&got), show(&bytes), "{name} {order:?}: encode");
        assert_eq!(Pdu::decode(&bytes), Ok(p), "{name} {order:?}: decode");
    }
}

// ---------------------------------------------------------------------------------------------
// 6.2: every PDU type, both byte orders

/// Every value type of section 5.4 in one list, with the wire form of each.
fn every_value() -> (Vec<VarBind>, Vec<W>) {
    let vbs = vec![
        vb("1.3.6.1.2.1.64.1.1.0", Value::Integer(-2)),
        vb(
            "1.3.6.1.2.1.64.1.2.0",
            Value::OctetString(vec![0x07, 0xEA, 0xFF]),
        ),
        vb("1.3.6.1.2.1.64.1.3.0", Value::Null),
        vb(
            "1.3.6.1.2.1.64.1.4.0",
            Value::ObjectIdentifier(oid("1.3.6.1.2.1.64")),
        ),
        vb("1.3.6.1.2.1.64.1.5.0", Value::IpAddress([127, 0, 0, 1])),
        vb("1.3.6.1.2.1.64.1.6.0", Value::Counter32(u32::MAX)),
        vb("1.3.6.1.2.1.64.1.7.0", Value::Gauge32(0x8000_0001)),
        vb("1.3.6.1.2.1.64.1.8.0", Value::TimeTicks(0xFFFF_FFFE)),
        vb(
            "1.3.6.1.2.1.64.1.9.0",
            Value::Opaque(vec![0x9F, 0x78, 0x04, 0x3F, 0x80, 0, 0]),
        ),
        vb(
            "1.3.6.1.2.1.64.1.10.0",
            Value::Counter64(0x0102_0304_0506_0708),
        ),
        vb("1.3.6.1.2.1.64.1.11.0", Value::NoSuchObject),
        vb("1.3.6.1.2.1.64.1.12.0", Value::NoSuchInstance),
        vb("1.3.6.1.2.1.64.1.13.0", Value::EndOfMibView),
    ];
    let name = |col: u32| o(2, 0, &[1, 64, 1, col, 0]);
    let t = |code: u16| vec![S(code), S(0)];
    let wire = cat(vec![
        t(2),
        name(1),
        vec![L(0xFFFF_FFFE)],
        t(4),
        name(2),
        os(&[0x07, 0xEA, 0xFF]),
        t(5),
        name(3),
        t(6),
        name(4),
        o(2, 0, &[1, 64]),
        t(64),
        name(5),
        vec![L(4), Raw(vec![127, 0, 0, 1])],
        t(65),
        name(6),
        vec![L(u32::MAX)],
        t(66),
        name(7),
        vec![L(0x8000_0001)],
        t(67),
        name(8),
        vec![L(0xFFFF_FFFE)],
        t(68),
        name(9),
        os(&[0x9F, 0x78, 0x04, 0x3F, 0x80, 0, 0]),
        t(70),
        name(10),
        vec![Q(0x0102_0304_0506_0708)],
        t(128),
        name(11),
        t(129),
        name(12),
        t(130),
        name(13),
    ]);
    (vbs, wire)
}

fn vectors() -> Vec<(&'static str, Pdu, Vec<W>)> {
    let (all_vbs, all_wire) = every_value();
    let trap = vec![
        vb(
            "1.3.6.1.6.3.1.1.4.1.0",
            Value::ObjectIdentifier(oid("1.3.6.1.2.1.64.2.0.1")),
        ),
        vb(
            "1.3.6.1.2.1.64.1.4.1.7.3.110.111.99.2.104.105.1",
            Value::Integer(3),
        ),
    ];
    let trap_wire = cat(vec![
        vec![S(6), S(0)],
        o(6, 0, &[3, 1, 1, 4, 1, 0]),
        o(2, 0, &[1, 64, 2, 0, 1]),
        vec![S(2), S(0)],
        o(2, 0, &[1, 64, 1, 4, 1, 7, 3, 110, 111, 99, 2, 104, 105, 1]),
        vec![L(3)],
    ]);
    let index_vb = vec![vb("1.3.6.1.2.1.64.1.4.1.1", Value::Integer(0))];
    let index_wire = cat(vec![
        vec![S(2), S(0)],
        o(2, 0, &[1, 64, 1, 4, 1, 1]),
        vec![L(0)],
    ]);
    vec![
        (
            "Open: timeout, net-snmp's enterprise id, description (6.2.1)",
            pdu(Payload::Open(Open {
                timeout: 5,
                id: oid("1.3.6.1.4.1.8072.3.2.10"),
                descr: b"smx".to_vec(),
            })),
            cat(vec![
                hdr(1, 0, 36),
                vec![B(5), B(0), B(0), B(0)],
                o(4, 0, &[1, 8072, 3, 2, 10]),
                os(b"smx"),
            ]),
        ),
        (
            "Open: null id, empty description",
            pdu(Payload::Open(Open {
                timeout: 0,
                id: Oid::null(),
                descr: Vec::new(),
            })),
            cat(vec![hdr(1, 0, 12), vec![B(0); 4], o(0, 0, &[]), os(b"")]),
        ),
        (
            "Close: reasonShutdown (6.2.2)",
            pdu(Payload::Close(Close {
                reason: CloseReason::Shutdown,
            })),
            cat(vec![hdr(2, 0, 4), vec![B(5), B(0), B(0), B(0)]]),
        ),
        (
            "Register: RFC 2741 6.2.3's example, row 7 of ifTable as 1.3.6.1.2.1.2.2.1.[1-22].7",
            pdu(Payload::Register(Register {
                context: None,
                timeout: 0,
                priority: 127,
                subtree: oid("1.3.6.1.2.1.2.2.1.1.7"),
                range: Some(SubidRange {
                    range_subid: NonZeroU8::new(10).unwrap(),
                    upper_bound: 22,
                }),
                instance_registration: false,
            })),
            cat(vec![
                hdr(3, 0, 36),
                vec![B(0), B(127), B(10), B(0)],
                o(2, 0, &[1, 2, 2, 1, 1, 7]),
                vec![L(22)],
            ]),
        ),
        (
            "Register: a context, INSTANCE_REGISTRATION, a timeout and priority 1",
            pdu(Payload::Register(Register {
                context: Some(b"ctx".to_vec()),
                timeout: 9,
                priority: 1,
                subtree: oid("1.3.6.1.2.1.64.1.1.0"),
                range: None,
                instance_registration: true,
            })),
            cat(vec![
                hdr(3, 0x08 | 0x01, 36),
                os(b"ctx"),
                vec![B(9), B(1), B(0), B(0)],
                o(2, 0, &[1, 64, 1, 1, 0]),
            ]),
        ),
        (
            "Unregister: the Script MIB at priority 127 (6.2.4)",
            pdu(Payload::Unregister(Unregister {
                context: None,
                priority: 127,
                subtree: oid("1.3.6.1.2.1.64"),
                range: None,
            })),
            cat(vec![
                hdr(4, 0, 16),
                vec![B(0), B(127), B(0), B(0)],
                o(2, 0, &[1, 64]),
            ]),
        ),
        (
            "Unregister: a context and a range",
            pdu(Payload::Unregister(Unregister {
                context: Some(b"abcd".to_vec()),
                priority: 200,
                subtree: oid("1.3.6.1.2.1.64.1.3.1.1"),
                range: Some(SubidRange {
                    range_subid: NonZeroU8::new(11).unwrap(),
                    upper_bound: 14,
                }),
            })),
            cat(vec![
                hdr(4, 0x08, 44),
                os(b"abcd"),
                vec![B(0), B(200), B(11), B(0)],
                o(2, 0, &[1, 64, 1, 3, 1, 1]),
                vec![L(14)],
            ]),
        ),
        (
            "Get: sysDescr.0 (the OID of RFC 2741 5.1's example), null end (6.2.5)",
            pdu(Payload::Get(Get {
                context: None,
                ranges: vec![range("1.3.6.1.2.1.1.1.0", "", false)],
            })),
            cat(vec![hdr(5, 0, 24), o(2, 0, &[1, 1, 1, 0]), o(0, 0, &[])]),
        ),
        (
            "Get: a context and two names, one without prefix (1.2.3.4 of 5.1)",
            pdu(Payload::Get(Get {
                context: Some(vec![0xFF, 0x00]),
                ranges: vec![
                    range("1.3.6.1.2.1.64.1.1.0", "", false),
                    range("1.2.3.4", "", false),
                ],
            })),
            cat(vec![
                hdr(5, 0x08, 8 + 28 + 24),
                os(&[0xFF, 0x00]),
                o(2, 0, &[1, 64, 1, 1, 0]),
                o(0, 0, &[]),
                o(0, 0, &[1, 2, 3, 4]),
                o(0, 0, &[]),
            ]),
        ),
        (
            "GetNext: RFC 2741 5.2's SearchRange, 1.3.6.1.2.1.25.2 (incl.) to ...25.2.1 (6.2.6)",
            pdu(Payload::GetNext(GetNext {
                context: None,
                ranges: vec![range("1.3.6.1.2.1.25.2", "1.3.6.1.2.1.25.2.1", true)],
            })),
            cat(vec![
                hdr(6, 0, 36),
                o(2, 1, &[1, 25, 2]),
                o(2, 0, &[1, 25, 2, 1]),
            ]),
        ),
        (
            "GetBulk: non_repeaters 1, max_repetitions 10, two ranges (6.2.7)",
            pdu(Payload::GetBulk(GetBulk {
                context: None,
                non_repeaters: 1,
                max_repetitions: 10,
                ranges: vec![
                    range("1.3.6.1.2.1.1.3.0", "", true),
                    range("1.3.6.1.2.1.64.1.3", "1.3.6.1.2.1.64.1.4", false),
                ],
            })),
            cat(vec![
                hdr(7, 0, 4 + 24 + 40),
                vec![S(1), S(10)],
                o(2, 1, &[1, 1, 3, 0]),
                o(0, 0, &[]),
                o(2, 0, &[1, 64, 1, 3]),
                o(2, 0, &[1, 64, 1, 4]),
            ]),
        ),
        (
            "GetBulk: a context, extremes of both counts, no ranges",
            pdu(Payload::GetBulk(GetBulk {
                context: Some(b"x".to_vec()),
                non_repeaters: 0,
                max_repetitions: u16::MAX,
                ranges: vec![],
            })),
            cat(vec![hdr(7, 0x08, 12), os(b"x"), vec![S(0), S(u16::MAX)]]),
        ),
        (
            "TestSet: every VarBind type (6.2.8)",
            pdu(Payload::TestSet(TestSet {
                context: None,
                varbinds: all_vbs.clone(),
            })),
            cat(vec![
                hdr(8, 0, render(&all_wire, ByteOrder::BigEndian).len() as u32),
                all_wire.clone(),
            ]),
        ),
        (
            "CommitSet: header only (6.2.9)",
            pdu(Payload::CommitSet),
            hdr(9, 0, 0),
        ),
        ("UndoSet: header only", pdu(Payload::UndoSet), hdr(10, 0, 0)),
        (
            "CleanupSet: header only",
            pdu(Payload::CleanupSet),
            hdr(11, 0, 0),
        ),
        (
            "Notify: snmpTrapOID.0 = smScriptAbort, then one object (6.2.10)",
            pdu(Payload::Notify(Notify {
                context: None,
                varbinds: trap.clone(),
            })),
            cat(vec![
                hdr(12, 0, render(&trap_wire, ByteOrder::BigEndian).len() as u32),
                trap_wire.clone(),
            ]),
        ),
        (
            "Ping: default context (6.2.11)",
            pdu(Payload::Ping(Ping { context: None })),
            hdr(13, 0, 0),
        ),
        (
            "Ping: an empty non-default context is still a context",
            pdu(Payload::Ping(Ping {
                context: Some(Vec::new()),
            })),
            cat(vec![hdr(13, 0x08, 4), os(b"")]),
        ),
        (
            "IndexAllocate: NEW_INDEX (6.2.12)",
            pdu(Payload::IndexAllocate(IndexAllocation {
                context: None,
                new_index: true,
                any_index: false,
                varbinds: index_vb.clone(),
            })),
            cat(vec![hdr(14, 0x02, 36), index_wire.clone()]),
        ),
        (
            "IndexAllocate: ANY_INDEX and a context",
            pdu(Payload::IndexAllocate(IndexAllocation {
                context: Some(b"12345".to_vec()),
                new_index: false,
                any_index: true,
                varbinds: index_vb.clone(),
            })),
            cat(vec![
                hdr(14, 0x04 | 0x08, 48),
                os(b"12345"),
                index_wire.clone(),
            ]),
        ),
        (
            "IndexDeallocate (6.2.13)",
            pdu(Payload::IndexDeallocate(IndexAllocation {
                context: None,
                new_index: false,
                any_index: false,
                varbinds: index_vb.clone(),
            })),
            cat(vec![hdr(15, 0, 36), index_wire.clone()]),
        ),
        (
            "AddAgentCaps: a capabilities OID and sysORDescr (6.2.14)",
            pdu(Payload::AddAgentCaps(AddAgentCaps {
                context: None,
                id: oid("1.3.6.1.2.1.64.3.1.2"),
                descr: b"Script MIB".to_vec(),
            })),
            cat(vec![
                hdr(16, 0, 40),
                o(2, 0, &[1, 64, 3, 1, 2]),
                os(b"Script MIB"),
            ]),
        ),
        (
            "AddAgentCaps: a context",
            pdu(Payload::AddAgentCaps(AddAgentCaps {
                context: Some(b"c".to_vec()),
                id: oid("1.3.6.1.2.1.64.3.1.2"),
                descr: b"".to_vec(),
            })),
            cat(vec![
                hdr(16, 0x08, 8 + 24 + 4),
                os(b"c"),
                o(2, 0, &[1, 64, 3, 1, 2]),
                os(b""),
            ]),
        ),
        (
            "RemoveAgentCaps (6.2.15)",
            pdu(Payload::RemoveAgentCaps(RemoveAgentCaps {
                context: None,
                id: oid("1.3.6.1.2.1.64.3.1.2"),
            })),
            cat(vec![hdr(17, 0, 24), o(2, 0, &[1, 64, 3, 1, 2])]),
        ),
        (
            "Response: every VarBind type (6.2.16)",
            pdu(Payload::Response(Response {
                sys_up_time: 12345,
                error: ResError::NoError,
                index: 0,
                varbinds: all_vbs,
            })),
            cat(vec![
                hdr(
                    18,
                    0,
                    8 + render(&all_wire, ByteOrder::BigEndian).len() as u32,
                ),
                vec![L(12345), S(0), S(0)],
                all_wire,
            ]),
        ),
        (
            "Response: AgentX's processingError (268), no varbinds",
            pdu(Payload::Response(Response::error(
                ResError::ProcessingError,
                0,
            ))),
            cat(vec![hdr(18, 0, 8), vec![L(0), S(268), S(0)]]),
        ),
        (
            "Response: a value neither RFC defines is kept",
            pdu(Payload::Response(Response::error(
                ResError::Unknown(999),
                7,
            ))),
            cat(vec![hdr(18, 0, 8), vec![L(0), S(999), S(7)]]),
        ),
    ]
}

#[test]
fn s6_2_every_pdu_type_in_both_byte_orders() {
    for (name, p, wire) in vectors() {
        assert_vector(name, &p, &wire);
    }
}

#[test]
fn s6_2_the_vectors_cover_every_pdu_type() {
    let seen: Vec<PduType> = vectors().iter().map(|(_, p, _)| p.pdu_type()).collect();
    for t in PduType::ALL {
        assert!(seen.contains(&t), "no vector for {t:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6.2: hand-derived byte strings

/// A Get of sysUpTime.0 from a big-endian master, written out octet by octet.
#[test]
fn s6_2_5_get_sysuptime_big_endian_by_hand() {
    let wire = hex(
        "01 05 10 00  00 00 00 07  00 00 00 09  00 00 00 2A  00 00 00 18
         04 02 00 00  00 00 00 01  00 00 00 01  00 00 00 03  00 00 00 00
         00 00 00 00",
    );
    let want = Pdu {
        session_id: 7,
        transaction_id: 9,
        packet_id: 42,
        byte_order: ByteOrder::BigEndian,
        payload: Payload::Get(Get {
            context: None,
            ranges: vec![range("1.3.6.1.2.1.1.3.0", "", false)],
        }),
    };
    assert_eq!(Pdu::decode(&wire), Ok(want.clone()));
    assert_eq!(want.to_bytes().unwrap(), wire);
}

/// A TestSet of a DateAndTime, 2026-11-22,14:30:0.0,+1:0 (`07 EA 0B 16 0E 1E 00 00 2B 01
/// 00`: 11 octets, not UTF-8, one octet of padding), little-endian and big-endian.
#[test]
fn s6_2_8_testset_of_a_date_and_time_by_hand() {
    let date = hex("07 EA 0B 16 0E 1E 00 00 2B 01 00");
    assert!(std::str::from_utf8(&date).is_err(), "the point: not UTF-8");
    let le = hex(
        "01 08 00 00  07 00 00 00  09 00 00 00  2A 00 00 00  3C 00 00 00
         04 00 00 00
         09 02 00 00  01 00 00 00  40 00 00 00  01 00 00 00  03 00 00 00
         01 00 00 00  01 00 00 00  04 00 00 00  01 00 00 00  61 00 00 00
         0B 00 00 00  07 EA 0B 16  0E 1E 00 00  2B 01 00 00",
    );
    let be = hex(
        "01 08 10 00  00 00 00 07  00 00 00 09  00 00 00 2A  00 00 00 3C
         00 04 00 00
         09 02 00 00  00 00 00 01  00 00 00 40  00 00 00 01  00 00 00 03
         00 00 00 01  00 00 00 01  00 00 00 04  00 00 00 01  00 00 00 61
         00 00 00 0B  07 EA 0B 16  0E 1E 00 00  2B 01 00 00",
    );
    for (order, wire) in [(ByteOrder::LittleEndian, le), (ByteOrder::BigEndian, be)] {
        let want = Pdu {
            session_id: 7,
            transaction_id: 9,
            packet_id: 42,
            byte_order: order,
            payload: Payload::TestSet(TestSet {
                context: None,
                varbinds: vec![vb(
                    "1.3.6.1.2.1.64.1.3.1.1.4.1.97",
                    Value::OctetString(date.clone()),
                )],
            }),
        };
        assert_eq!(Pdu::decode(&wire), Ok(want.clone()), "{order:?}");
        assert_eq!(show(&want.to_bytes().unwrap()), show(&wire), "{order:?}");
    }
}

/// A master up 300 days: res.sysUpTime 2,592,000,000 (0x9A7EC800) is above 2^31, and so
/// is a TimeTicks value; both are u32 and nothing multiplies them.
#[test]
fn s6_2_16_response_with_uptime_above_2_pow_31_by_hand() {
    let le = hex(
        "01 12 00 00  01 00 00 00  00 00 00 00  05 00 00 00  24 00 00 00
         00 C8 7E 9A  00 00 00 00
         43 00 00 00  04 02 00 00  01 00 00 00  01 00 00 00  03 00 00 00
         00 00 00 00  00 C8 7E 9A",
    );
    let be = hex(
        "01 12 10 00  00 00 00 01  00 00 00 00  00 00 00 05  00 00 00 24
         9A 7E C8 00  00 00 00 00
         00 43 00 00  04 02 00 00  00 00 00 01  00 00 00 01  00 00 00 03
         00 00 00 00  9A 7E C8 00",
    );
    let uptime = 300 * 86_400 * 100;
    assert!(uptime > 1u32 << 31);
    for (order, wire) in [(ByteOrder::LittleEndian, le), (ByteOrder::BigEndian, be)] {
        let want = Pdu {
            session_id: 1,
            transaction_id: 0,
            packet_id: 5,
            byte_order: order,
            payload: Payload::Response(Response {
                sys_up_time: uptime,
                error: ResError::NoError,
                index: 0,
                varbinds: vec![vb("1.3.6.1.2.1.1.3.0", Value::TimeTicks(uptime))],
            }),
        };
        assert_eq!(Pdu::decode(&wire), Ok(want.clone()), "{order:?}");
        assert_eq!(show(&want.to_bytes().unwrap()), show(&wire), "{order:?}");
    }
}

/// A TestSet refused: wrongValue (10, an SNMP status AgentX passes on) at VarBind 2.
#[test]
fn s6_2_16_response_wrong_value_at_index_2_by_hand() {
    let le = hex(
        "01 12 00 00  03 00 00 00  11 00 00 00  22 00 00 00  08 00 00 00
         00 00 00 00  0A 00 02 00",
    );
    let be = hex(
        "01 12 10 00  00 00 00 03  00 00 00 11  00 00 00 22  00 00 00 08
         00 00 00 00  00 0A 00 02",
    );
    for (order, wire) in [(ByteOrder::LittleEndian, le), (ByteOrder::BigEndian, be)] {
        let want = Pdu {
            session_id: 3,
            transaction_id: 0x11,
            packet_id: 0x22,
            byte_order: order,
            payload: Payload::Response(Response::error(ResError::WrongValue, 2)),
        };
        assert_eq!(Pdu::decode(&wire), Ok(want.clone()), "{order:?}");
        assert_eq!(show(&want.to_bytes().unwrap()), show(&wire), "{order:?}");
    }
}

/// `Pdu::respond` copies the three ids and the byte order (section 6.2.16).
#[test]
fn s6_2_16_respond_keeps_ids_and_byte_order() {
    let request = Pdu {
        session_id: 1,
        transaction_id: 2,
        packet_id: 3,
        byte_order: ByteOrder::LittleEndian,
        payload: Payload::CommitSet,
    };
    let r = request.respond(Response::error(ResError::CommitFailed, 0));
    assert_eq!((r.session_id, r.transaction_id, r.packet_id), (1, 2, 3));
    assert_eq!(r.byte_order, ByteOrder::LittleEndian);
    assert_eq!(r.pdu_type(), PduType::Response);
}

// ---------------------------------------------------------------------------------------------
// 5.1 Object Identifier encoding

/// The encoding of `o` alone: a RemoveAgentCaps payload is exactly one OID.
fn oid_wire(o: &Oid) -> Vec<u8> {
    let p = pdu(Payload::RemoveAgentCaps(RemoveAgentCaps {
        context: None,
        id: o.clone(),
    }));
    p.to_bytes().unwrap()[20..].to_vec()
}

/// A RemoveAgentCaps whose payload is `payload`, to decode OIDs alone.
fn oid_pdu(payload: &[u8]) -> Vec<u8> {
    let mut v = render(&hdr(17, 0, payload.len() as u32), ByteOrder::BigEndian);
    v.extend_from_slice(payload);
    v
}

fn decode_oid(payload: &[u8]) -> Result<Oid, DecodeError> {
    match Pdu::decode(&oid_pdu(payload))?.payload {
        Payload::RemoveAgentCaps(r) => Ok(r.id),
        other => panic!("not a RemoveAgentCaps: {other:?}"),
    }
}

#[test]
fn s5_1_prefix_is_used_exactly_for_internet_x_with_x_1_to_255_and_more_subids() {
    let long: Vec<u32> = [1, 3, 6, 1, 4].into_iter().chain(1..=123).collect();
    let long_other: Vec<u32> = (1..=128).collect();
    let cases: Vec<(Oid, Vec<W>)> = vec![
        // RFC 2741 5.1's examples.
        (oid("1.3.6.1.2.1.1.1.0"), o(2, 0, &[1, 1, 1, 0])),
        (oid("1.2.3.4"), o(0, 0, &[1, 2, 3, 4])),
        (Oid::null(), o(0, 0, &[])),
        // internet.x alone: nothing would follow the prefix.
        (oid("1.3.6.1.2"), o(0, 0, &[1, 3, 6, 1, 2])),
        (oid("1.3.6.1"), o(0, 0, &[1, 3, 6, 1])),
        (oid("1.3.6.1.2.1"), o(2, 0, &[1])),
        // x = 0 cannot be a prefix (0 means none); 255 is the largest that fits the octet.
        (oid("1.3.6.1.0.5"), o(0, 0, &[1, 3, 6, 1, 0, 5])),
        (oid("1.3.6.1.255.7"), o(255, 0, &[7])),
        (oid("1.3.6.1.256.7"), o(0, 0, &[1, 3, 6, 1, 256, 7])),
        (oid("1.3.6.2.1.1"), o(0, 0, &[1, 3, 6, 2, 1, 1])),
        (oid("1.3.6"), o(0, 0, &[1, 3, 6])),
        (oid("1.3.6.1.4.1.4294967295"), o(4, 0, &[1, 4294967295])),
        // 128 sub-identifiers: 123 after a prefix, or all 128.
        (Oid::new(long.clone()).unwrap(), o(4, 0, &long[5..])),
        (Oid::new(long_other.clone()).unwrap(), o(0, 0, &long_other)),
    ];
    for (o, wire) in cases {
        for order in ORDERS {
            let bytes = render(&wire, order);
            let mut p = pdu(Payload::RemoveAgentCaps(RemoveAgentCaps {
                context: None,
                id: o.clone(),
            }));
            p.byte_order = order;
            assert_eq!(
                show(&p.to_bytes().unwrap()[20..]),
                show(&bytes),
                "{o} {order:?}"
            );
        }
        assert_eq!(
            decode_oid(&render(&wire, ByteOrder::BigEndian)),
            Ok(o.clone()),
            "{o}"
        );
        assert_eq!(oid_wire(&o).len() % 4, 0);
    }
}

#[test]
fn s5_1_decoding_accepts_any_prefix_form_and_bounds_the_length() {
    let be = |w: Vec<W>| render(&w, ByteOrder::BigEndian);
    let ok: Vec<(Vec<u8>, Oid)> = vec![
        // A prefix with no sub-identifiers after it is still internet.x.
        (be(o(2, 0, &[])), oid("1.3.6.1.2")),
        // The same OID sent without compression decodes to the same value.
        (
            be(o(0, 0, &[1, 3, 6, 1, 2, 1, 1, 1, 0])),
            oid("1.3.6.1.2.1.1.1.0"),
        ),
        (be(o(2, 0, &[1, 1, 1, 0])), oid("1.3.6.1.2.1.1.1.0")),
        // 123 sub-identifiers after a prefix make 128.
        (be(o(9, 0, &[0; 123])), {
            let mut v = vec![1, 3, 6, 1, 9];
            v.extend([0; 123]);
            Oid::new(v).unwrap()
        }),
        // The include octet and the reserved octet are not read outside a SearchRange start.
        (hex("02 00 01 FF 00 00 00 01 00 00 00 02"), oid("1.2")),
    ];
    for (payload, want) in ok {
        assert_eq!(decode_oid(&payload), Ok(want), "{}", show(&payload));
    }
    let header = |payload: &[u8]| Header::decode(&oid_pdu(payload)).unwrap();
    let bad: Vec<(Vec<u8>, Malformed)> = vec![
        (be(o(0, 0, &[0; 129])), mal(20, "n_subid 0-128")),
        (
            be(o(2, 0, &[0; 124])),
            mal(20, "an OID of at most 128 sub-identifiers with its prefix"),
        ),
        (
            hex("02 00 00 00 00 00 00 01"),
            mal(24, "n_subid sub-identifiers"),
        ),
        (hex(""), mal(20, "an Object Identifier header")),
    ];
    for (mut payload, want) in bad {
        // Keep the PDU's own length valid, so the OID is what fails.
        while payload.len() % 4 != 0 {
            payload.push(0);
        }
        let got = decode_oid(&payload);
        let want = DecodeError::Payload {
            header: header(&payload),
            why: want,
        };
        assert_eq!(got, Err(want), "{}", show(&payload));
    }
}

#[test]
fn oid_text_form_and_limits() {
    assert_eq!(oid("1.3.6.1.2.1.64").subids(), &[1, 3, 6, 1, 2, 1, 64]);
    assert_eq!(oid(".1.3.6").to_string(), "1.3.6");
    assert_eq!(oid(""), Oid::null());
    assert!(oid("").is_null());
    assert_eq!(oid("1.3.6.1.4294967295").subids()[4], u32::MAX);
    for bad in ["1..3", "1.3.", "a.b", "1.4294967296", "1.-3", "1.+3", " 1"] {
        assert_eq!(bad.parse::<Oid>(), Err(OidError::Syntax), "{bad:?}");
    }
    assert_eq!(
        Oid::new(vec![0; MAX_SUBIDS + 1]),
        Err(OidError::TooLong(129))
    );
    assert!(Oid::new(vec![0; MAX_SUBIDS]).is_ok());
    assert!(oid("1.3.6.1.2.1.64.1.3.1.1.9").starts_with(&oid("1.3.6.1.2.1.64")));
    assert!(!oid("1.3.6.1.2.1.640").starts_with(&oid("1.3.6.1.2.1.64")));
    // Lexicographic, as GetNext needs: a prefix sorts before its extensions.
    assert!(oid("1.3.6.1.2.1.64") < oid("1.3.6.1.2.1.64.0"));
    assert!(oid("1.3.6.1.2.1.64.2") > oid("1.3.6.1.2.1.64.1.9.9"));
}

// ---------------------------------------------------------------------------------------------
// 6.2.3 and 6.2.16: the defaults and the code tables

#[test]
fn s6_2_3_register_new_uses_priority_127() {
    let r = Register::new(oid("1.3.6.1.2.1.64"));
    assert_eq!(r.priority, 127);
    assert_eq!(DEFAULT_PRIORITY, 127);
    assert_eq!(
        (
            r.timeout,
            r.range,
            r.context.clone(),
            r.instance_registration
        ),
        (0, None, None, false)
    );
}

#[test]
fn s6_2_16_res_error_codes() {
    let named: &[(ResError, u16)] = &[
        (ResError::NoError, 0),
        (ResError::TooBig, 1),
        (ResError::NoSuchName, 2),
        (ResError::BadValue, 3),
        (ResError::ReadOnly, 4),
        (ResError::GenErr, 5),
        (ResError::NoAccess, 6),
        (ResError::WrongType, 7),
        (ResError::WrongLength, 8),
        (ResError::WrongEncoding, 9),
        (ResError::WrongValue, 10),
        (ResError::NoCreation, 11),
        (ResError::InconsistentValue, 12),
        (ResError::ResourceUnavailable, 13),
        (ResError::CommitFailed, 14),
        (ResError::UndoFailed, 15),
        (ResError::AuthorizationError, 16),
        (ResError::NotWritable, 17),
        (ResError::InconsistentName, 18),
        (ResError::OpenFailed, 256),
        (ResError::NotOpen, 257),
        (ResError::IndexWrongType, 258),
        (ResError::IndexAlreadyAllocated, 259),
        (ResError::IndexNoneAvailable, 260),
        (ResError::IndexNotAllocated, 261),
        (ResError::UnsupportedContext, 262),
        (ResError::DuplicateRegistration, 263),
        (ResError::UnknownRegistration, 264),
        (ResError::UnknownAgentCaps, 265),
        (ResError::ParseError, 266),
        (ResError::RequestDenied, 267),
        (ResError::ProcessingError, 268),
    ];
    for &(e, code) in named {
        assert_eq!(e.code(), code, "{e:?}");
        assert_eq!(ResError::from_code(code), e, "{code}");
    }
    assert_eq!(ResError::ALL.len(), named.len());
    for code in [19, 255, 269, 1000, u16::MAX] {
        assert_eq!(ResError::from_code(code), ResError::Unknown(code));
        assert_eq!(ResError::Unknown(code).code(), code);
    }
}

#[test]
fn s6_2_2_close_reasons_and_s6_1_pdu_types() {
    let reasons = [
        (CloseReason::Other, 1),
        (CloseReason::ParseError, 2),
        (CloseReason::ProtocolError, 3),
        (CloseReason::Timeouts, 4),
        (CloseReason::Shutdown, 5),
        (CloseReason::ByManager, 6),
    ];
    for (r, code) in reasons {
        assert_eq!((r.code(), CloseReason::from_code(code)), (code, r));
    }
    for code in [0, 7, 255] {
        assert_eq!(CloseReason::from_code(code), CloseReason::Unknown(code));
    }
    for (i, t) in PduType::ALL.iter().enumerate() {
        assert_eq!(usize::from(t.code()), i + 1);
        assert_eq!(PduType::from_code(t.code()), Some(*t));
    }
    assert_eq!(PduType::from_code(0), None);
    assert_eq!(PduType::from_code(19), None);
    // Section 6.1.1: the PDUs that may carry a context.
    let with: Vec<u8> = PduType::ALL
        .iter()
        .filter(|t| t.has_context())
        .map(|t| t.code())
        .collect();
    assert_eq!(with, vec![3, 4, 5, 6, 7, 8, 12, 13, 14, 15, 16, 17]);
}

// ---------------------------------------------------------------------------------------------
// 7.1: what decoding refuses, and where

/// A PDU of `pdu_type` with `flags` whose payload is `payload` (length computed).
fn raw(pdu_type: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = render(
        &hdr(pdu_type, flags, payload.len() as u32),
        ByteOrder::BigEndian,
    );
    v.extend_from_slice(payload);
    v
}

#[test]
fn s7_1_header_errors_name_the_field() {
    let close = raw(2, 0, &[5, 0, 0, 0]);
    let with = |i: usize, b: u8| {
        let mut v = close.clone();
        v[i] = b;
        v
    };
    let cases: Vec<(&str, Vec<u8>, Malformed)> = vec![
        ("empty", vec![], mal(0, "a 20-octet AgentX header")),
        (
            "19 octets",
            close[..19].to_vec(),
            mal(19, "a 20-octet AgentX header"),
        ),
        ("version 0", with(0, 0), mal(0, "h.version 1")),
        ("version 2", with(0, 2), mal(0, "h.version 1")),
        ("type 0", with(1, 0), mal(1, "h.type 1-18")),
        ("type 19", with(1, 19), mal(1, "h.type 1-18")),
        ("type 255", with(1, 255), mal(1, "h.type 1-18")),
        (
            "payload_length 6",
            with(19, 6),
            mal(16, "h.payload_length a multiple of 4"),
        ),
        (
            "payload_length 2^32-1",
            {
                let mut v = close.clone();
                v[16..20].copy_from_slice(&[0xFF; 4]);
                v
            },
            mal(16, "h.payload_length a multiple of 4"),
        ),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(
            Pdu::decode(&bytes),
            Err(DecodeError::Header(want)),
            "{name}"
        );
    }
}

#[test]
fn s7_1_payload_errors_name_the_construct_and_keep_the_header() {
    let cases: Vec<(&str, Vec<u8>, Malformed)> = vec![
        (
            "fewer octets than payload_length",
            {
                let mut v = raw(2, 0, &[5, 0, 0, 0]);
                v.truncate(22);
                v
            },
            mal(22, "h.payload_length octets of payload"),
        ),
        (
            "octets after the PDU",
            {
                let mut v = raw(2, 0, &[5, 0, 0, 0]);
                v.extend([0; 4]);
                v
            },
            mal(24, "the end of the PDU after h.payload_length octets"),
        ),
        (
            "Close with 8 octets",
            raw(2, 0, &[5, 0, 0, 0, 0, 0, 0, 0]),
            mal(24, "end of payload"),
        ),
        ("Close with none", raw(2, 0, &[]), mal(20, "c.reason")),
        (
            "CommitSet with a payload",
            raw(9, 0, &[0; 4]),
            mal(20, "end of payload"),
        ),
        (
            "Ping with NON_DEFAULT_CONTEXT and no context",
            raw(13, 0x08, &[]),
            mal(20, "a context Octet String"),
        ),
        (
            "context longer than the payload",
            raw(13, 0x08, &hex("00 00 00 05 61 62 63 64")),
            mal(20, "a context Octet String"),
        ),
        (
            "context of 2^32-1 octets",
            raw(13, 0x08, &hex("FF FF FF FF")),
            mal(20, "a context Octet String"),
        ),
        (
            "Open without description",
            raw(1, 0, &hex("00 00 00 00 00 00 00 00")),
            mal(28, "o.descr"),
        ),
        (
            "Open description past the end",
            raw(
                1,
                0,
                &hex("00 00 00 00 00 00 00 00 00 00 00 09 61 62 63 64"),
            ),
            mal(28, "o.descr"),
        ),
        (
            "Register range_subid without upper_bound",
            raw(3, 0, &hex("00 7F 01 00 01 00 00 00 00 00 00 01")),
            mal(32, "upper_bound (range_subid is not 0)"),
        ),
        (
            "Register truncated",
            raw(3, 0, &[]),
            mal(20, "r.timeout, r.priority and r.range_subid"),
        ),
        (
            "Get include 2",
            raw(5, 0, &hex("01 02 02 00 00 00 00 01 00 00 00 00")),
            mal(22, "include 0 or 1"),
        ),
        (
            "Get without end OID",
            raw(5, 0, &hex("01 02 00 00 00 00 00 01")),
            mal(28, "an Object Identifier header"),
        ),
        (
            "GetBulk truncated",
            raw(7, 0, &[]),
            mal(20, "g.non_repeaters and g.max_repetitions"),
        ),
        (
            "unknown v.type 3",
            raw(8, 0, &hex("00 03 00 00 00 00 00 00")),
            mal(20, "v.type 2, 4, 5, 6, 64-68, 70 or 128-130"),
        ),
        (
            "unknown v.type 69",
            raw(8, 0, &hex("00 45 00 00 00 00 00 00")),
            mal(20, "v.type 2, 4, 5, 6, 64-68, 70 or 128-130"),
        ),
        (
            "unknown v.type 131",
            raw(12, 0, &hex("00 83 00 00 00 00 00 00")),
            mal(20, "v.type 2, 4, 5, 6, 64-68, 70 or 128-130"),
        ),
        (
            "VarBind type cut short",
            raw(8, 0, &hex("00 02 00 00")),
            mal(24, "an Object Identifier header"),
        ),
        (
            "Integer without data",
            raw(8, 0, &hex("00 02 00 00 00 00 00 00")),
            mal(28, "the VarBind's data"),
        ),
        (
            "Counter64 with 4 octets",
            raw(8, 0, &hex("00 46 00 00 00 00 00 00 00 00 00 01")),
            mal(28, "the VarBind's data"),
        ),
        (
            "IpAddress of 5 octets",
            raw(
                8,
                0,
                &hex("00 40 00 00 00 00 00 00 00 00 00 05 01 02 03 04 05 00 00 00"),
            ),
            mal(28, "an IpAddress of 4 octets"),
        ),
        (
            "IpAddress of 0 octets",
            raw(8, 0, &hex("00 40 00 00 00 00 00 00 00 00 00 00")),
            mal(28, "an IpAddress of 4 octets"),
        ),
        (
            "OID value with n_subid 200",
            raw(8, 0, &hex("00 06 00 00 00 00 00 00 C8 00 00 00")),
            mal(28, "n_subid 0-128"),
        ),
        (
            "Response truncated",
            raw(18, 0, &hex("00 00 00 01")),
            mal(24, "res.error and res.index"),
        ),
        (
            "Response without sysUpTime",
            raw(18, 0, &[]),
            mal(20, "res.sysUpTime"),
        ),
    ];
    for (name, bytes, want) in cases {
        let header = Header::decode(&bytes).expect("the header is good");
        let got = Pdu::decode(&bytes);
        assert_eq!(
            got,
            Err(DecodeError::Payload { header, why: want }),
            "{name}: {}",
            show(&bytes)
        );
        // The header in the error addresses a parseError Response (section 7.1 step 6).
        assert_eq!((header.session_id, header.packet_id), (SESSION, PACKET));
    }
}

#[test]
fn s5_lenient_where_the_rfc_says_reserved_or_padding() {
    // Reserved octets, padding, unused flag bits and the end OID's include are not read.
    let cases: Vec<(&str, Vec<u8>, Payload)> = vec![
        (
            "header reserved octet",
            {
                let mut v = raw(9, 0, &[]);
                v[3] = 0xAA;
                v
            },
            Payload::CommitSet,
        ),
        (
            "flags bits 5-7 and INSTANCE_REGISTRATION on a CommitSet",
            raw(9, 0xE1, &[]),
            Payload::CommitSet,
        ),
        (
            "NON_DEFAULT_CONTEXT on a Response (it has no context)",
            raw(18, 0x08, &[0; 8]),
            Payload::Response(Response::ok(vec![])),
        ),
        (
            "Close reserved octets",
            raw(2, 0, &[1, 9, 9, 9]),
            Payload::Close(Close {
                reason: CloseReason::Other,
            }),
        ),
        (
            "Response VarBind reserved octets and non-zero padding",
            raw(
                18,
                0,
                &hex("00 00 00 00 00 00 00 00 00 04 FF FF 00 00 00 00 00 00 00 01 61 62 63 64"),
            ),
            Payload::Response(Response::ok(vec![VarBind::new(
                Oid::null(),
                Value::OctetString(vec![0x61]),
            )])),
        ),
        (
            "Get end OID with include 1",
            raw(5, 0, &hex("00 00 01 00 00 00 01 00")),
            Payload::Get(Get {
                context: None,
                ranges: vec![SearchRange {
                    start: Oid::null(),
                    end: Oid::null(),
                    include: true,
                }],
            }),
        ),
        (
            "Close with an undefined reason",
            raw(2, 0, &[0, 0, 0, 0]),
            Payload::Close(Close {
                reason: CloseReason::Unknown(0),
            }),
        ),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(Pdu::decode(&bytes).map(|p| p.payload), Ok(want), "{name}");
    }
}

#[test]
fn s6_1_byte_order_is_read_per_pdu() {
    // The same Response in both orders: a receiver decodes each as its own flags say.
    let p = pdu(Payload::Response(Response::error(ResError::NotWritable, 1)));
    for order in ORDERS {
        let bytes = with_order(p.clone(), order).to_bytes().unwrap();
        assert_eq!(bytes[2] & 0x10 != 0, order == ByteOrder::BigEndian);
        let h = Header::decode(&bytes).unwrap();
        assert_eq!(
            (h.byte_order(), h.session_id, h.payload_length),
            (order, SESSION, 8)
        );
        assert_eq!(Pdu::decode(&bytes).unwrap().byte_order, order);
    }
}

#[test]
fn errors_read_as_sentences() {
    let e = Pdu::decode(&raw(13, 0x08, &[])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "malformed AgentX Ping payload (answer parseError, RFC 2741 7.1): expected a context Octet String at offset 20"
    );
    assert_eq!(e.malformed(), mal(20, "a context Octet String"));
    let e = Pdu::decode(&[1, 0]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unusable AgentX header, dropped without a response (RFC 2741 7.1): expected a 20-octet AgentX header at offset 2"
    );
}

// ---------------------------------------------------------------------------------------------
// the framer

fn feed(framer: &mut Framer, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, FrameError>> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match framer.next_frame(&mut buf) {
                Ok(Some(f)) => out.push(Ok(f.to_vec())),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
        }
    }
    if let Err(e) = framer.finish(&mut buf) {
        out.push(Err(e));
    }
    out
}

#[test]
fn framer_cuts_pdus_of_both_byte_orders_from_any_chunking() {
    let a = with_order(
        pdu(Payload::Ping(Ping {
            context: Some(b"ctx".to_vec()),
        })),
        ByteOrder::LittleEndian,
    )
    .to_bytes()
    .unwrap();
    let b = pdu(Payload::CommitSet).to_bytes().unwrap();
    let c = pdu(Payload::Response(Response::error(ResError::WrongValue, 2)))
        .to_bytes()
        .unwrap();
    let stream: Vec<u8> = [a.clone(), b.clone(), c.clone()].concat();
    let want = vec![Ok(a), Ok(b), Ok(c)];
    for size in [1, 3, 19, 20, 21, 64, stream.len()] {
        let chunks: Vec<&[u8]> = stream.chunks(size).collect();
        assert_eq!(
            feed(&mut Framer::default(), &chunks),
            want,
            "chunks of {size}"
        );
    }
}

#[test]
fn framer_cap_refuses_long_payloads_and_skips_them_without_buffering() {
    let ok = pdu(Payload::CommitSet).to_bytes().unwrap();
    let long = raw(8, 0, &[0; 8]);
    // A cap of 4: an 8-octet payload is refused, the next PDU still comes out.
    let stream = [long.clone(), ok.clone()].concat();
    for size in [1, 7, 28, stream.len()] {
        let chunks: Vec<&[u8]> = stream.chunks(size).collect();
        assert_eq!(
            feed(&mut Framer::new(4), &chunks),
            vec![
                Err(FrameError::TooLong {
                    payload_length: 8,
                    max: 4
                }),
                Ok(ok.clone())
            ],
            "chunks of {size}"
        );
    }
    // Exactly the cap passes.
    assert_eq!(feed(&mut Framer::new(8), &[&long]), vec![Ok(long.clone())]);
}

#[test]
fn framer_a_huge_length_is_an_error_at_once_not_an_allocation() {
    let mut framer = Framer::default();
    let mut buf = BytesMut::new();
    let mut h = raw(8, 0, &[]);
    h[16..20].copy_from_slice(&0xFFFF_FFFCu32.to_be_bytes());
    buf.extend_from_slice(&h);
    assert_eq!(
        framer.next_frame(&mut buf),
        Err(FrameError::TooLong {
            payload_length: 0xFFFF_FFFC,
            max: DEFAULT_MAX_PAYLOAD
        })
    );
    assert!(buf.is_empty());
    // What follows is skipped as it arrives.
    buf.extend_from_slice(&[0xAB; 4096]);
    assert_eq!(framer.next_frame(&mut buf), Ok(None));
    assert!(buf.is_empty(), "skipped octets are not kept");
    // Little-endian lengths are read as such: 0x00100004 > 1 MiB.
    let mut le = with_order(pdu(Payload::CommitSet), ByteOrder::LittleEndian)
        .to_bytes()
        .unwrap();
    le[16..20].copy_from_slice(&0x0010_0004u32.to_le_bytes());
    assert_eq!(
        feed(&mut Framer::default(), &[&le]),
        vec![Err(FrameError::TooLong {
            payload_length: 0x0010_0004,
            max: DEFAULT_MAX_PAYLOAD
        })]
    );
}

#[test]
fn framer_misaligned_length_is_refused_and_skipped() {
    let ok = pdu(Payload::UndoSet).to_bytes().unwrap();
    let bad = raw(8, 0, &[1, 2, 3]);
    assert_eq!(
        feed(&mut Framer::default(), &[&bad, &ok]),
        vec![Err(FrameError::Misaligned { payload_length: 3 }), Ok(ok)]
    );
}

#[test]
fn framer_finish_reports_a_truncated_pdu() {
    let ok = pdu(Payload::CleanupSet).to_bytes().unwrap();
    assert_eq!(
        feed(&mut Framer::default(), &[&ok[..10]]),
        vec![Err(FrameError::Truncated { buffered: 10 })]
    );
    let close = pdu(Payload::Close(Close {
        reason: CloseReason::Shutdown,
    }))
    .to_bytes()
    .unwrap();
    assert_eq!(
        feed(&mut Framer::default(), &[&close[..22]]),
        vec![Err(FrameError::Truncated { buffered: 22 })]
    );
    assert_eq!(feed(&mut Framer::default(), &[]), vec![]);
    // A refused payload cut short by the end of the stream is not reported twice.
    let mut long = raw(8, 0, &[]);
    long[16..20].copy_from_slice(&64u32.to_be_bytes());
    assert_eq!(
        feed(&mut Framer::new(16), &[&long, &[0; 10]]),
        vec![Err(FrameError::TooLong {
            payload_length: 64,
            max: 16
        })]
    );
}
