//! Host events as DISMAN-SCRIPT-MIB notifications (RFC 3165 section 6, `smTraps`), sent as
//! agentx-Notify-PDUs (RFC 2741 6.2.10): snmpTrapOID.0 first, then the OBJECTS of the
//! NOTIFICATION-TYPE, instances of the run's smRunTable row. The master adds sysUpTime.0.
//!
//! - smScriptAbort { smRunExitCode, smRunEndTime, smRunError }: a run terminated with an
//!   exit code other than noError;
//! - smScriptResult { smRunResult }: the script asked for it (SMX `533`);
//! - smScriptException { smRunError }: the script or runtime asked for it (SMX `537`).

use std::time::SystemTime;

use crate::agentx::{Oid, Value, VarBind};
use crate::host::{Event, EventKind};
use crate::mib::types::date_and_time;
use crate::proto::ExitCode;

use super::index::{self, SCRIPT_MIB};
use super::view::Table;

/// snmpTrapOID.0 (SNMPv2-MIB, RFC 3418).
pub const SNMP_TRAP_OID: [u32; 11] = [1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0];

/// smScriptAbort, smScriptResult, smScriptException: smTraps.1-3.
pub const SM_SCRIPT_ABORT: u32 = 1;
pub const SM_SCRIPT_RESULT: u32 = 2;
pub const SM_SCRIPT_EXCEPTION: u32 = 3;

fn trap(n: u32) -> Value {
    let mut v = SCRIPT_MIB.to_vec();
    v.extend([2, 0, n]);
    Value::ObjectIdentifier(Oid::new(v).unwrap_or_default())
}

/// The varbinds of the notification `event` calls for, if any; `index` is the run's
/// smRunIndex and `end_time` its smRunEndTime.
pub fn varbinds(event: &Event, index: u32, end_time: Option<SystemTime>) -> Option<Vec<VarBind>> {
    let idx = index::owner_name_n(&event.owner, &event.name, index);
    let col = |c: u32, value: Value| {
        let mut name = Table::Run.column_oid(c);
        name.extend_from_slice(&idx);
        VarBind::new(Oid::new(name).unwrap_or_default(), value)
    };
    let head = |n| VarBind::new(Oid::new(SNMP_TRAP_OID).unwrap_or_default(), trap(n));
    match &event.kind {
        EventKind::Terminated {
            exit_code, error, ..
        } if *exit_code != ExitCode::NoError => Some(vec![
            head(SM_SCRIPT_ABORT),
            col(7, Value::Integer(exit_code.number().into())),
            col(
                4,
                Value::OctetString(date_and_time(end_time.or(Some(event.time)))),
            ),
            col(11, Value::OctetString(error.clone().into_bytes())),
        ]),
        EventKind::Result {
            result,
            notify: true,
        } => Some(vec![
            head(SM_SCRIPT_RESULT),
            col(8, Value::OctetString(result.as_bytes().to_vec())),
        ]),
        EventKind::Error {
            error,
            notify: true,
        } => Some(vec![
            head(SM_SCRIPT_EXCEPTION),
            col(11, Value::OctetString(error.clone().into_bytes())),
        ]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Octets, RunId};

    fn ev(kind: EventKind) -> Event {
        Event {
            run_id: RunId(1),
            owner: "noc".into(),
            name: "hi".into(),
            time: SystemTime::UNIX_EPOCH,
            kind,
        }
    }

    #[test]
    fn rfc3165_notification_objects() {
        let abort = varbinds(
            &ev(EventKind::Terminated {
                exit_code: ExitCode::Halted,
                result: Octets::default(),
                error: "x".into(),
            }),
            5,
            None,
        )
        .unwrap();
        let names: Vec<String> = abort.iter().map(|v| v.name.to_string()).collect();
        assert_eq!(
            names,
            [
                "1.3.6.1.6.3.1.1.4.1.0",
                "1.3.6.1.2.1.64.1.4.2.1.7.3.110.111.99.2.104.105.5",
                "1.3.6.1.2.1.64.1.4.2.1.4.3.110.111.99.2.104.105.5",
                "1.3.6.1.2.1.64.1.4.2.1.11.3.110.111.99.2.104.105.5",
            ]
        );
        assert_eq!(abort[0].value, trap(1));
        let ok = ev(EventKind::Terminated {
            exit_code: ExitCode::NoError,
            result: Octets::default(),
            error: String::new(),
        });
        assert!(
            varbinds(&ok, 5, None).is_none(),
            "noError: no smScriptAbort"
        );
        let r = ev(EventKind::Result {
            result: Octets::new(b"42".to_vec()),
            notify: true,
        });
        let r = varbinds(&r, 5, None).unwrap();
        assert_eq!((r.len(), &r[0].value), (2, &trap(2)));
        let quiet = ev(EventKind::Result {
            result: Octets::new(b"42".to_vec()),
            notify: false,
        });
        assert!(varbinds(&quiet, 5, None).is_none(), "532: no notification");
        let e = ev(EventKind::Error {
            error: "bad".into(),
            notify: true,
        });
        assert_eq!(varbinds(&e, 5, None).unwrap()[0].value, trap(3));
    }
}
