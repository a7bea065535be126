//! The agentx-Response-PDU (RFC 2741 section 6.2.16) and its `res.error` codes.
//!
//! `res.error` carries SNMP's error statuses (RFC 3416 section 3) in answers to requests
//! and AgentX's own (256-268) in answers to administrative PDUs, so the enum has both: a
//! subagent must be able to say wrongValue or notWritable, not only parseError.

use super::error::EncodeError;
use super::value::VarBind;
use super::wire::{Reader, Step, Writer};

/// Defines [`ResError`] from one table, so `from_code` and `code` cannot disagree.
macro_rules! res_errors {
    ($($(#[$doc:meta])* $name:ident = $code:literal,)*) => {
        /// `res.error`. Values neither RFC defines decode to [`ResError::Unknown`] and
        /// re-encode unchanged.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ResError {
            $($(#[$doc])* $name,)*
            /// A value neither RFC 3416 nor RFC 2741 defines.
            Unknown(u16),
        }

        impl ResError {
            /// Every named value in code order: SNMP's 0-18, then AgentX's 256-268.
            pub const ALL: &'static [ResError] = &[$(ResError::$name,)*];

            pub fn from_code(code: u16) -> ResError {
                match code {
                    $($code => ResError::$name,)*
                    n => ResError::Unknown(n),
                }
            }

            pub fn code(self) -> u16 {
                match self {
                    $(ResError::$name => $code,)*
                    ResError::Unknown(n) => n,
                }
            }
        }
    };
}

res_errors! {
    /// noError, which AgentX calls noAgentXError (0).
    NoError = 0,
    TooBig = 1,
    NoSuchName = 2,
    BadValue = 3,
    ReadOnly = 4,
    GenErr = 5,
    NoAccess = 6,
    WrongType = 7,
    WrongLength = 8,
    WrongEncoding = 9,
    WrongValue = 10,
    NoCreation = 11,
    InconsistentValue = 12,
    ResourceUnavailable = 13,
    CommitFailed = 14,
    UndoFailed = 15,
    AuthorizationError = 16,
    NotWritable = 17,
    InconsistentName = 18,
    /// The master could not open the session (section 7.1.1).
    OpenFailed = 256,
    /// The PDU's h.sessionID is not an open session.
    NotOpen = 257,
    IndexWrongType = 258,
    IndexAlreadyAllocated = 259,
    IndexNoneAvailable = 260,
    IndexNotAllocated = 261,
    UnsupportedContext = 262,
    DuplicateRegistration = 263,
    UnknownRegistration = 264,
    UnknownAgentCaps = 265,
    /// The PDU could not be parsed (section 7.1 step 2).
    ParseError = 266,
    RequestDenied = 267,
    ProcessingError = 268,
}

/// agentx-Response-PDU (section 6.2.16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// `res.sysUpTime` in hundredths of a second: meaningful from the master, ignored by
    /// it from a subagent. A u32 taken as it is; it passes 2^31 after 249 days.
    pub sys_up_time: u32,
    pub error: ResError,
    /// `res.index`: the 1-based index of the failed VarBind, 0 if none.
    pub index: u16,
    pub varbinds: Vec<VarBind>,
}

impl Response {
    /// A successful answer carrying `varbinds`.
    pub fn ok(varbinds: Vec<VarBind>) -> Response {
        Response {
            sys_up_time: 0,
            error: ResError::NoError,
            index: 0,
            varbinds,
        }
    }

    /// A failure of the `index`-th VarBind (1-based; 0 for the PDU as a whole).
    pub fn error(error: ResError, index: u16) -> Response {
        Response {
            sys_up_time: 0,
            error,
            index,
            varbinds: Vec::new(),
        }
    }
}

impl Response {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Step<Response> {
        let sys_up_time = r.u32("res.sysUpTime")?;
        let (error, index) = r.u16_pair("res.error and res.index")?;
        Ok(Response {
            sys_up_time,
            error: ResError::from_code(error),
            index,
            varbinds: VarBind::decode_list(r)?,
        })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u32(self.sys_up_time);
        w.u16_pair(self.error.code(), self.index);
        VarBind::encode_list(&self.varbinds, w)
    }
}
