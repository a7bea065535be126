//! The value types of DISMAN-SCRIPT-MIB (RFC 3165) and the textual conventions it uses from
//! SNMPv2-TC (RFC 2579): RowStatus, StorageType, DateAndTime, and the MIB's enumerations.
//! Pure: no IO, no clocks but the one passed in.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The longest prefix of a text that fits `max` octets, cut at a character boundary.
pub use crate::host::admin_prefix as cut;

/// Why a value cannot be set, in SNMP's words (RFC 3416 section 4.2.5), so that the control
/// API and the AgentX subagent answer the same thing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// The value is outside the column's range or enumeration.
    #[error("wrongValue: {0}")]
    WrongValue(String),
    /// A string is longer (or shorter) than the column allows.
    #[error("wrongLength: {0}")]
    WrongLength(String),
    /// The value is valid but not now: RowStatus rules, smLaunchStart checks 1-6, ...
    #[error("inconsistentValue: {0}")]
    InconsistentValue(String),
    /// The row does not exist and this column cannot create it.
    #[error("noCreation: {0}")]
    NoCreation(String),
    /// The column cannot be written.
    #[error("notWritable: {0}")]
    NotWritable(String),
    /// The host cannot take it now (out of run slots, storage full).
    #[error("resourceUnavailable: {0}")]
    ResourceUnavailable(String),
}

impl SetError {
    /// The SNMP error-status number (RFC 3416).
    pub fn status(&self) -> u32 {
        match self {
            SetError::WrongLength(_) => 8,
            SetError::WrongValue(_) => 10,
            SetError::NoCreation(_) => 11,
            SetError::InconsistentValue(_) => 12,
            SetError::ResourceUnavailable(_) => 13,
            SetError::NotWritable(_) => 17,
        }
    }

    /// The words after the error's name.
    pub fn message(&self) -> &str {
        match self {
            SetError::WrongValue(m)
            | SetError::WrongLength(m)
            | SetError::InconsistentValue(m)
            | SetError::NoCreation(m)
            | SetError::NotWritable(m)
            | SetError::ResourceUnavailable(m) => m,
        }
    }
}

/// Declares an SMI enumeration: numbers on the wire, MIB names in JSON and text.
macro_rules! smi_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident = $num:literal => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $var = $num),+
        }

        impl $name {
            /// The SMI number.
            pub fn number(self) -> i64 {
                self as i64
            }

            /// The value for an SMI number; `None` outside the enumeration.
            pub fn from_number(n: i64) -> Option<Self> {
                match n {
                    $($num => Some($name::$var),)+
                    _ => None,
                }
            }

            /// The MIB's name of the value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$var => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$var),)+
                    _ => Err(format!(
                        "{s:?} is not one of: {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

smi_enum! {
    /// RowStatus (RFC 2579). Reads return active, notInService or notReady; sets may use
    /// every value but notReady.
    RowStatus {
        Active = 1 => "active",
        NotInService = 2 => "notInService",
        NotReady = 3 => "notReady",
        CreateAndGo = 4 => "createAndGo",
        CreateAndWait = 5 => "createAndWait",
        Destroy = 6 => "destroy",
    }
}

smi_enum! {
    /// StorageType (RFC 2579): whether a row survives a restart.
    StorageType {
        Other = 1 => "other",
        Volatile = 2 => "volatile",
        NonVolatile = 3 => "nonVolatile",
        Permanent = 4 => "permanent",
        ReadOnly = 5 => "readOnly",
    }
}

smi_enum! {
    /// smScriptAdminStatus.
    ScriptAdmin {
        Enabled = 1 => "enabled",
        Disabled = 2 => "disabled",
        Editing = 3 => "editing",
    }
}

smi_enum! {
    /// smScriptOperStatus.
    ScriptOper {
        Enabled = 1 => "enabled",
        Disabled = 2 => "disabled",
        Editing = 3 => "editing",
        Retrieving = 4 => "retrieving",
        Compiling = 5 => "compiling",
        NoSuchScript = 6 => "noSuchScript",
        AccessDenied = 7 => "accessDenied",
        WrongLanguage = 8 => "wrongLanguage",
        WrongVersion = 9 => "wrongVersion",
        CompilationFailed = 10 => "compilationFailed",
        NoResourcesLeft = 11 => "noResourcesLeft",
        UnknownProtocol = 12 => "unknownProtocol",
        ProtocolFailure = 13 => "protocolFailure",
        GenericError = 14 => "genericError",
    }
}

smi_enum! {
    /// smLaunchAdminStatus.
    LaunchAdmin {
        Enabled = 1 => "enabled",
        Disabled = 2 => "disabled",
        Autostart = 3 => "autostart",
    }
}

smi_enum! {
    /// smLaunchOperStatus.
    LaunchOper {
        Enabled = 1 => "enabled",
        Disabled = 2 => "disabled",
        Expired = 3 => "expired",
    }
}

smi_enum! {
    /// smLaunchControl and smRunControl.
    Control {
        Abort = 1 => "abort",
        Suspend = 2 => "suspend",
        Resume = 3 => "resume",
        Nop = 4 => "nop",
    }
}

impl ScriptOper {
    /// smScriptSource cannot be set in these (RFC 3165 smScriptSource).
    pub fn holds_source(self) -> bool {
        matches!(
            self,
            ScriptOper::Enabled
                | ScriptOper::Editing
                | ScriptOper::Retrieving
                | ScriptOper::Compiling
        )
    }
}

/// An OBJECT IDENTIFIER, as sub-identifiers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Oid(pub Vec<u32>);

impl Oid {
    /// `{0 0}`: "unknown" for smLangLanguage and smLangVendor.
    pub fn zero_dot_zero() -> Oid {
        Oid(vec![0, 0])
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

impl std::str::FromStr for Oid {
    type Err = String;
    /// Dotted numbers, with or without a leading dot: `1.3.6.1.4.1.1575`.
    fn from_str(s: &str) -> Result<Oid, String> {
        let t = s.strip_prefix('.').unwrap_or(s);
        let subs: Result<Vec<u32>, _> = t.split('.').map(str::parse::<u32>).collect();
        match subs {
            Ok(v) if v.len() >= 2 && v.len() <= 128 && v[0] <= 2 => Ok(Oid(v)),
            _ => Err(format!(
                "{s:?} is not an OBJECT IDENTIFIER (dotted numbers such as 1.3.6.1.4.1.1575)"
            )),
        }
    }
}

impl Serialize for Oid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Oid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Oid, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// DateAndTime (RFC 2579) of `t` in UTC: 11 octets (year, month, day, hour, minutes,
/// seconds, deci-seconds, '+', 0, 0). `None` gives the Script MIB's "not yet":
/// eight zero octets.
pub fn date_and_time(t: Option<SystemTime>) -> Vec<u8> {
    let Some(t) = t else { return vec![0; 8] };
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, mo, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let year = y.clamp(0, 65_535) as u16;
    vec![
        (year >> 8) as u8,
        year as u8,
        mo,
        day,
        (rem / 3600) as u8,
        (rem % 3600 / 60) as u8,
        (rem % 60) as u8,
        (d.subsec_millis() / 100) as u8,
        b'+',
        0,
        0,
    ]
}

/// Year, month (1-12), day (1-31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Checks an SnmpAdminString column's length in octets.
pub fn check_len(what: &str, v: &[u8], min: usize, max: usize) -> Result<(), SetError> {
    if v.len() < min || v.len() > max {
        return Err(SetError::WrongLength(format!(
            "{what} must be {min}..{max} octets, not {}",
            v.len()
        )));
    }
    Ok(())
}

/// An SnmpAdminString value: UTF-8 (RFC 3411).
pub fn admin_string(what: &str, v: &[u8], min: usize, max: usize) -> Result<String, SetError> {
    check_len(what, v, min, max)?;
    String::from_utf8(v.to_vec())
        .map_err(|_| SetError::WrongValue(format!("{what} must be UTF-8 (SnmpAdminString)")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn date_and_time_is_rfc_2579() {
        assert_eq!(
            date_and_time(None),
            vec![0; 8],
            "'0000000000000000'H: not yet"
        );
        // 2026-12-01 21:07:46.5 UTC
        let t = UNIX_EPOCH + Duration::from_millis(1_796_159_266_500);
        assert_eq!(
            date_and_time(Some(t)),
            vec![0x07, 0xEA, 12, 1, 21, 7, 46, 5, b'+', 0, 0]
        );
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&date_and_time(Some(leap))[..4], &[0x07, 0xD0, 2, 29]);
    }

    #[test]
    fn enumerations_round_trip_numbers_and_names() {
        assert_eq!(RowStatus::from_number(4), Some(RowStatus::CreateAndGo));
        assert_eq!(RowStatus::from_number(7), None);
        assert_eq!(
            "nonVolatile".parse::<StorageType>(),
            Ok(StorageType::NonVolatile)
        );
        assert_eq!(ScriptOper::UnknownProtocol.number(), 12);
        assert_eq!(
            serde_json::to_string(&LaunchOper::Expired).unwrap(),
            "\"expired\""
        );
        assert!(
            "bogus"
                .parse::<Control>()
                .unwrap_err()
                .contains("abort, suspend")
        );
    }

    #[test]
    fn oids_parse_and_print() {
        let o: Oid = ".1.3.6.1.4.1.1575".parse().unwrap();
        assert_eq!(o.to_string(), "1.3.6.1.4.1.1575");
        assert!("1".parse::<Oid>().is_err());
        assert!("1.x".parse::<Oid>().is_err());
        assert_eq!(Oid::zero_dot_zero().to_string(), "0.0");
    }
}
