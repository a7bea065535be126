//! Property tests for the AgentX codec (RFC 2741 sections 5 and 6) and its framer.
//!
//! - `decode(encode(p)) == p` for arbitrary PDUs of every type, both byte orders, every
//!   VarBind type, OIDs at and around the prefix rule and the 128 sub-identifier limit,
//!   contexts (also empty), u32/u16/u64 extremes, unknown res.error and c.reason values;
//! - encodings are well formed (aligned, `h.payload_length` right, the byte order flag set
//!   as asked) and the framer cuts any concatenation of them, in any chunking, back apart;
//! - an OID sent without `prefix` compression decodes like the compressed one;
//! - arbitrary bytes, arbitrary payloads under a valid header, and mutated valid PDUs never
//!   make `Pdu::decode` panic; errors point inside the input; whatever decodes re-encodes
//!   to a PDU that decodes to the same value and re-encodes to the same bytes;
//! - the framer never panics, keeps its buffer bounded and cuts like a simple model.

use std::num::NonZeroU8;

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;
use smx::agentx::{
    AddAgentCaps, ByteOrder, Close, CloseReason, DecodeError, FrameError, Framer, Get, GetBulk,
    GetNext, IndexAllocation, MAX_SUBIDS, Notify, Oid, Open, Payload, Pdu, Ping, Register,
    RemoveAgentCaps, ResError, Response, SearchRange, SubidRange, TestSet, Unregister, Value,
    VarBind,
};

// ---------------------------------------------------------------------------------------------
// strategies

fn u32_any() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => any::<u32>(),
        2 => 0u32..300,
        1 => select(vec![0, 1, 127, 255, 256, 0x7FFF_FFFF, 0x8000_0000, u32::MAX - 1, u32::MAX]),
    ]
}

fn u16_any() -> impl Strategy<Value = u16> {
    prop_oneof![any::<u16>(), 0u16..20, Just(u16::MAX)]
}

/// OIDs, with the forms the prefix rule of section 5.1 distinguishes over-represented.
fn oid() -> impl Strategy<Value = Oid> {
    let internet = |x: BoxedStrategy<u32>, max_tail: usize| {
        (x, prop::collection::vec(u32_any(), 0..=max_tail)).prop_map(|(x, tail)| {
            let mut v = vec![1, 3, 6, 1, x];
            v.extend(tail);
            v
        })
    };
    prop_oneof![
        3 => internet(prop_oneof![1u32..=255, Just(0), Just(256), u32_any()].boxed(), 16),
        1 => internet(Just(4u32).boxed(), MAX_SUBIDS - 5),
        1 => prop::collection::vec(u32_any(), 0..=4).prop_map(|mut v| {
            let mut p = vec![1, 3, 6, 1];
            p.truncate(v.len().min(4));
            p.append(&mut v);
            p
        }),
        2 => prop::collection::vec(u32_any(), 0..24),
        1 => prop::collection::vec(u32_any(), MAX_SUBIDS - 2..=MAX_SUBIDS),
    ]
    .prop_map(|v| Oid::new(v).expect("at most 128 sub-identifiers"))
}

fn octets() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..24),
        1 => prop::collection::vec(any::<u8>(), 0..600),
    ]
}

fn context() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(Vec::new())),
        2 => prop::collection::vec(any::<u8>(), 1..12).prop_map(Some),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(Value::Integer),
        octets().prop_map(Value::OctetString),
        Just(Value::Null),
        oid().prop_map(Value::ObjectIdentifier),
        any::<[u8; 4]>().prop_map(Value::IpAddress),
        u32_any().prop_map(Value::Counter32),
        u32_any().prop_map(Value::Gauge32),
        u32_any().prop_map(Value::TimeTicks),
        octets().prop_map(Value::Opaque),
        any::<u64>().prop_map(Value::Counter64),
        Just(Value::NoSuchObject),
        Just(Value::NoSuchInstance),
        Just(Value::EndOfMibView),
    ]
}

fn varbinds() -> impl Strategy<Value = Vec<VarBind>> {
    prop::collection::vec((oid(), value()).prop_map(|(n, v)| VarBind::new(n, v)), 0..6)
}

fn ranges() -> impl Strategy<Value = Vec<SearchRange>> {
    prop::collection::vec(
        (oid(), oid(), any::<bool>()).prop_map(|(start, end, include)| SearchRange {
            start,
            end,
            include,
        }),
        0..5,
    )
}

fn subid_range() -> impl Strategy<Value = Option<SubidRange>> {
    prop::option::of(
        (1u8..=255, u32_any()).prop_map(|(i, upper_bound)| SubidRange {
            range_subid: NonZeroU8::new(i).expect("1-255"),
            upper_bound,
        }),
    )
}

fn index_allocation() -> impl Strategy<Value = IndexAllocation> {
    (context(), any::<bool>(), any::<bool>(), varbinds()).prop_map(
        |(context, new_index, any_index, varbinds)| IndexAllocation {
            context,
            new_index,
            any_index,
            varbinds,
        },
    )
}

/// Every payload type; codes are drawn as numbers so unknown ones appear as `Unknown`.
fn payload() -> impl Strategy<Value = Payload> {
    Union::new(vec![
        (any::<u8>(), oid(), octets())
            .prop_map(|(timeout, id, descr)| Payload::Open(Open { timeout, id, descr }))
            .boxed(),
        any::<u8>()
            .prop_map(|c| {
                Payload::Close(Close {
                    reason: CloseReason::from_code(c),
                })
            })
            .boxed(),
        (
            context(),
            any::<u8>(),
            any::<u8>(),
            oid(),
            subid_range(),
            any::<bool>(),
        )
            .prop_map(
                |(context, timeout, priority, subtree, range, instance_registration)| {
                    Payload::Register(Register {
                        context,
                        timeout,
                        priority,
                        subtree,
                        range,
                        instance_registration,
                    })
                },
            )
            .boxed(),
        (context(), any::<u8>(), oid(), subid_range())
            .prop_map(|(context, priority, subtree, range)| {
                Payload::Unregister(Unregister {
                    context,
                    priority,
                    subtree,
                    range,
                })
            })
            .boxed(),
        (context(), ranges())
            .prop_map(|(context, ranges)| Payload::Get(Get { context, ranges }))
            .boxed(),
        (context(), ranges())
            .prop_map(|(context, ranges)| Payload::GetNext(GetNext { context, ranges }))
            .boxed(),
        (context(), u16_any(), u16_any(), ranges())
            .prop_map(|(context, non_repeaters, max_repetitions, ranges)| {
                Payload::GetBulk(GetBulk {
                    context,
                    non_repeaters,
                    max_repetitions,
                    ranges,
                })
            })
            .boxed(),
        (context(), varbinds())
            .prop_map(|(context, varbinds)| Payload::TestSet(TestSet { context, varbinds }))
            .boxed(),
        Just(Payload::CommitSet).boxed(),
        Just(Payload::UndoSet).boxed(),
        Just(Payload::CleanupSet).boxed(),
        (context(), varbinds())
            .prop_map(|(context, varbinds)| Payload::Notify(Notify { context, varbinds }))
            .boxed(),
        context()
            .prop_map(|context| Payload::Ping(Ping { context }))
            .boxed(),
        index_allocation().prop_map(Payload::IndexAllocate).boxed(),
        index_allocation()
            .prop_map(Payload::IndexDeallocate)
            .boxed(),
        (context(), oid(), octets())
            .prop_map(|(context, id, descr)| {
                Payload::AddAgentCaps(AddAgentCaps { context, id, descr })
            })
            .boxed(),
        (context(), oid())
            .prop_map(|(context, id)| Payload::RemoveAgentCaps(RemoveAgentCaps { context, id }))
            .boxed(),
        (
            u32_any(),
            prop_oneof![
                select(ResError::ALL.to_vec()),
                any::<u16>().prop_map(ResError::from_code)
            ],
            u16_any(),
            varbinds(),
        )
            .prop_map(|(sys_up_time, error, index, varbinds)| {
                Payload::Response(Response {
                    sys_up_time,
                    error,
                    index,
                    varbinds,
                })
            })
            .boxed(),
    ])
}

fn byte_order() -> impl Strategy<Value = ByteOrder> {
    select(vec![ByteOrder::BigEndian, ByteOrder::LittleEndian])
}

fn pdu() -> impl Strategy<Value = Pdu> {
    (u32_any(), u32_any(), u32_any(), byte_order(), payload()).prop_map(
        |(session_id, transaction_id, packet_id, byte_order, payload)| Pdu {
            session_id,
            transaction_id,
            packet_id,
            byte_order,
            payload,
        },
    )
}

/// One way of damaging an encoded PDU.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Xor(usize, u8),
    Truncate(usize),
    Insert(usize, [u8; 4]),
    Remove4(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), select(vec![0u8, 1, 2, 0x7F, 0x80, 0xFF])).prop_map(|(i, b)| Mutation::Set(i, b)),
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Xor(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<[u8; 4]>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => any::<usize>().prop_map(Mutation::Remove4),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let n = bytes.len();
    match *m {
        Mutation::Set(i, b) => bytes[i % n] = b,
        Mutation::Xor(i, b) => bytes[i % n] ^= b,
        Mutation::Truncate(i) => bytes.truncate(i % n),
        Mutation::Insert(i, b) => {
            let at = i % (n + 1);
            bytes.splice(at..at, b);
        }
        Mutation::Remove4(i) => {
            let at = i % n;
            bytes.drain(at..(at + 4).min(n));
        }
    }
}

/// Sets `h.payload_length` to what follows the header (in the header's byte order), so a
/// mutation inside the payload reaches the payload decoder instead of the length check.
fn fix_length(bytes: &mut [u8]) {
    if bytes.len() < 20 {
        return;
    }
    let len = (bytes.len() - 20) as u32;
    let b = if bytes[2] & 0x10 != 0 {
        len.to_be_bytes()
    } else {
        len.to_le_bytes()
    };
    bytes[16..20].copy_from_slice(&b);
}

/// What must hold for any input: no panic (by getting here), errors inside the input, and
/// whatever decodes is a fixpoint of encode-then-decode.
fn check_decode(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Pdu::decode(bytes) {
        Ok(p) => {
            let wire = p.to_bytes().expect("a decoded PDU re-encodes");
            let again = Pdu::decode(&wire).expect("a re-encoded PDU decodes");
            prop_assert_eq!(&again, &p);
            prop_assert_eq!(again.to_bytes().unwrap(), wire);
        }
        Err(e) => {
            prop_assert!(
                e.malformed().at <= bytes.len(),
                "{e} for {} octets",
                bytes.len()
            );
            if let DecodeError::Payload { header, .. } = e {
                prop_assert!(bytes.len() >= 20);
                prop_assert_eq!(header.payload_length % 4, 0);
            }
        }
    }
    Ok(())
}

/// The framer's expected output on `input`, computed the obvious way.
fn frame_model(input: &[u8], max: u32) -> Vec<Result<Vec<u8>, FrameError>> {
    let mut out = Vec::new();
    let mut rest = input;
    loop {
        if rest.len() < 20 {
            if !rest.is_empty() {
                out.push(Err(FrameError::Truncated {
                    buffered: rest.len(),
                }));
            }
            return out;
        }
        let l = [rest[16], rest[17], rest[18], rest[19]];
        let len = if rest[2] & 0x10 != 0 {
            u32::from_be_bytes(l)
        } else {
            u32::from_le_bytes(l)
        };
        if len % 4 != 0 || len > max {
            out.push(Err(if len % 4 != 0 {
                FrameError::Misaligned {
                    payload_length: len,
                }
            } else {
                FrameError::TooLong {
                    payload_length: len,
                    max,
                }
            }));
            let skip = 20 + len as usize;
            if skip >= rest.len() {
                return out;
            }
            rest = &rest[skip..];
            continue;
        }
        let total = 20 + len as usize;
        if rest.len() < total {
            out.push(Err(FrameError::Truncated {
                buffered: rest.len(),
            }));
            return out;
        }
        out.push(Ok(rest[..total].to_vec()));
        rest = &rest[total..];
    }
}

fn frame_all(
    input: &[u8],
    max: u32,
    chunk: usize,
) -> Result<Vec<Result<Vec<u8>, FrameError>>, TestCaseError> {
    let mut framer = Framer::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match framer.next_frame(&mut buf) {
                Ok(Some(f)) => out.push(Ok(f.to_vec())),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
        }
        prop_assert!(buf.len() < 20 + max as usize + piece.len());
    }
    if let Err(e) = framer.finish(&mut buf) {
        out.push(Err(e));
    }
    prop_assert!(buf.is_empty());
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Sections 5 and 6.2: every PDU survives encode then decode, in either byte order.
    #[test]
    fn round_trip_every_pdu(p in pdu()) {
        let wire = p.to_bytes().expect("generated PDUs encode");
        prop_assert_eq!(Pdu::decode(&wire), Ok(p));
    }

    /// Section 6.1: aligned, a right payload_length, the byte order flag as asked, and the
    /// NON_DEFAULT_CONTEXT flag exactly when there is a context.
    #[test]
    fn encodings_are_well_formed(p in pdu()) {
        let wire = p.to_bytes().unwrap();
        prop_assert_eq!(wire.len() % 4, 0);
        prop_assert_eq!((wire[0], wire[1]), (1, p.pdu_type().code()));
        prop_assert_eq!(wire[2] & 0x10 != 0, p.byte_order == ByteOrder::BigEndian);
        prop_assert_eq!(wire[2] & 0x08 != 0, p.payload.context().is_some());
        prop_assert_eq!(wire[2] & 0xE0, 0);
        let l = [wire[16], wire[17], wire[18], wire[19]];
        let len = match p.byte_order {
            ByteOrder::BigEndian => u32::from_be_bytes(l),
            ByteOrder::LittleEndian => u32::from_le_bytes(l),
        };
        prop_assert_eq!(len as usize, wire.len() - 20);
    }

    /// Anything that decodes is a fixpoint of encode-then-decode (arbitrary bytes).
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        check_decode(&bytes)?;
    }

    /// A valid-looking header over an arbitrary payload reaches every payload decoder.
    #[test]
    fn arbitrary_payloads_never_panic(
        t in 1u8..=18,
        flags in any::<u8>(),
        ids in any::<[u8; 12]>(),
        words in prop::collection::vec(
            prop_oneof![
                3 => any::<[u8; 4]>(),
                1 => select(vec![[0u8; 4], [0, 0, 0, 1], [1, 0, 0, 0], [4, 2, 0, 0], [0xFF; 4]]),
            ],
            0..24,
        ),
    ) {
        let mut bytes = vec![1, t, flags, 0];
        bytes.extend(ids);
        bytes.extend([0; 4]);
        bytes.extend(words.concat());
        fix_length(&mut bytes);
        check_decode(&bytes)?;
    }

    /// Damaged valid PDUs: with and without the length made to match again.
    #[test]
    fn mutated_pdus_never_panic(
        p in pdu(),
        ms in prop::collection::vec(mutation(), 1..4),
        fix in any::<bool>(),
    ) {
        let mut bytes = p.to_bytes().unwrap();
        for m in &ms {
            apply(&mut bytes, m);
        }
        if fix {
            fix_length(&mut bytes);
        }
        check_decode(&bytes)?;
    }

    /// Section 5.1: the prefix is an encoding choice; the uncompressed form is the same OID.
    #[test]
    fn uncompressed_oids_decode_the_same(o in oid(), order in byte_order()) {
        let mut wire = vec![1, 17, if order == ByteOrder::BigEndian { 0x10 } else { 0 }, 0];
        wire.extend([0; 16]);
        wire.extend([o.subids().len() as u8, 0, 0, 0]);
        for &s in o.subids() {
            wire.extend(match order {
                ByteOrder::BigEndian => s.to_be_bytes(),
                ByteOrder::LittleEndian => s.to_le_bytes(),
            });
        }
        fix_length(&mut wire);
        match Pdu::decode(&wire).map(|p| p.payload) {
            Ok(Payload::RemoveAgentCaps(r)) => prop_assert_eq!(r.id, o),
            other => prop_assert!(false, "{other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Encoded PDUs back to back, in any chunking, come out of the framer one by one.
    #[test]
    fn framer_cuts_encoded_pdus_apart(
        ps in prop::collection::vec(pdu(), 0..6),
        chunk in 1usize..200,
    ) {
        let wires: Vec<Vec<u8>> = ps.iter().map(|p| p.to_bytes().unwrap()).collect();
        let stream = wires.concat();
        let got = frame_all(&stream, 1 << 20, chunk)?;
        let want: Vec<Result<Vec<u8>, FrameError>> = wires.into_iter().map(Ok).collect();
        prop_assert_eq!(got, want);
    }

    /// Arbitrary streams: no panic, a bounded buffer, and the model's cuts and errors.
    #[test]
    fn framer_matches_the_model(
        input in prop::collection::vec(
            prop_oneof![
                3 => any::<u8>(),
                1 => select(vec![0u8, 4, 8, 0x10]),
            ],
            0..400,
        ),
        max in prop_oneof![Just(0u32), 0u32..64, Just(1 << 20)],
        chunk in 1usize..64,
    ) {
        let got = frame_all(&input, max, chunk)?;
        prop_assert_eq!(got, frame_model(&input, max));
    }
}
