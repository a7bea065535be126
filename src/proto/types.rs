//! The scalar tokens of SMX/1.1 (RFC 3179 section 5.1) with their invariants.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Parses `1*DIGIT` into a `u64`, rejecting overflow instead of wrapping.
fn parse_digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

macro_rules! digits_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// Parses `1*DIGIT`; `None` if empty, not all digits, or larger than `u64::MAX`.
            pub fn parse(digits: &[u8]) -> Option<Self> {
                parse_digits(digits).map($name)
            }

            pub fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                $name(v)
            }
        }

        impl FromStr for $name {
            type Err = ParseTokenError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s.as_bytes()).ok_or(ParseTokenError(stringify!($name)))
            }
        }
    };
}

digits_newtype!(
    /// A transaction identifier (`Id = 1*DIGIT`). Replies carry the Id of their command;
    /// asynchronous 5yz notifications carry `0`. Leading zeros are accepted on input
    /// (`007` is 7); values past `u64::MAX` are rejected, never wrapped.
    Id
);

digits_newtype!(
    /// A host-wide unique run identifier (`RunId = 1*DIGIT`). Unlike smRunIndex it does not
    /// repeat across (smLaunchOwner, smLaunchName) pairs.
    RunId
);

/// A token did not have the syntax of its ABNF rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid {0}")]
pub struct ParseTokenError(pub &'static str);

/// A security profile name (`Profile = 1*ProfileChars`): digits, letters and `- . / : _`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Profile(String);

impl Profile {
    /// True for the characters of the `ProfileChars` rule.
    pub fn is_profile_char(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'/' | b':' | b'_')
    }

    /// Checks `1*ProfileChars`.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || !bytes.iter().all(|&b| Self::is_profile_char(b)) {
            return None;
        }
        // All ProfileChars are ASCII, so this cannot fail.
        std::str::from_utf8(bytes)
            .ok()
            .map(|s| Profile(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Profile {
    type Err = ParseTokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes()).ok_or(ParseTokenError("Profile"))
    }
}

impl<'de> Deserialize<'de> for Profile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid profile name {s:?}: use 1 or more of A-Z a-z 0-9 - . / : _"
            ))
        })
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Profile({})", self.0)
    }
}

macro_rules! mib_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $num:literal => $mib:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant = $num),+
        }

        impl $name {
            /// Every value, in numeric order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The MIB enumeration number, which is also the SMX wire digit.
            pub fn number(self) -> u8 {
                self as u8
            }

            pub fn from_number(n: u8) -> Option<Self> {
                match n {
                    $($num => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The MIB enumeration label, e.g. `noError`.
            pub fn mib_name(self) -> &'static str {
                match self {
                    $($name::$variant => $mib),+
                }
            }

            pub fn from_mib_name(s: &str) -> Option<Self> {
                match s {
                    $($mib => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Parses the single wire digit.
            pub fn parse(bytes: &[u8]) -> Option<Self> {
                match bytes {
                    [d @ b'0'..=b'9'] => Self::from_number(d - b'0'),
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.mib_name())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.mib_name())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::from_mib_name(&s)
                    .ok_or_else(|| serde::de::Error::custom(format!("unknown {} {s:?}", stringify!($name))))
            }
        }
    };
}

mib_enum!(
    /// smRunState (RFC 3165) and the SMX `RunState` digit.
    RunState {
        Initializing = 1 => "initializing",
        Executing = 2 => "executing",
        Suspending = 3 => "suspending",
        Suspended = 4 => "suspended",
        Resuming = 5 => "resuming",
        Aborting = 6 => "aborting",
        Terminated = 7 => "terminated",
    }
);

mib_enum!(
    /// smRunExitCode (RFC 3165) and the SMX `ExitCode` digit.
    ExitCode {
        NoError = 1 => "noError",
        Halted = 2 => "halted",
        LifeTimeExceeded = 3 => "lifeTimeExceeded",
        NoResourcesLeft = 4 => "noResourcesLeft",
        LanguageError = 5 => "languageError",
        RuntimeError = 6 => "runtimeError",
        InvalidArgument = 7 => "invalidArgument",
        SecurityViolation = 8 => "securityViolation",
        GenericError = 9 => "genericError",
    }
);

/// The protocol version in a `211` reply. RFC 3179 defines only `SMX/1.1`; any
/// `SMX/<digits>.<digits>` is parsed so that the host can name what it did not accept
/// (section 6.2.2 rule 3 checks the version after parsing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

impl Version {
    /// `SMX/1.1`, the only version this implementation speaks.
    pub const V1_1: Version = Version { major: 1, minor: 1 };

    /// Parses `SMX/<major>.<minor>`. The literal `SMX` is matched case-insensitively, as all
    /// ABNF quoted strings are (RFC 2234 section 2.3).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(b"SMX/").or_else(|| {
            (bytes.len() >= 4 && bytes[..4].eq_ignore_ascii_case(b"SMX/")).then(|| &bytes[4..])
        })?;
        let dot = rest.iter().position(|&b| b == b'.')?;
        let num = |s: &[u8]| parse_digits(s).and_then(|v| u32::try_from(v).ok());
        Some(Version {
            major: num(&rest[..dot])?,
            minor: num(&rest[dot + 1..])?,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SMX/{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_reject_overflow_and_junk() {
        assert_eq!(Id::parse(b"0"), Some(Id(0)));
        assert_eq!(Id::parse(b"007"), Some(Id(7)));
        assert_eq!(Id::parse(b"18446744073709551615"), Some(Id(u64::MAX)));
        assert_eq!(Id::parse(b"18446744073709551616"), None);
        assert_eq!(RunId::parse(b""), None);
        assert_eq!(RunId::parse(b"1a"), None);
        assert_eq!(RunId::parse(b"-1"), None);
    }

    #[test]
    fn profile_chars_follow_section_5_1() {
        assert!(Profile::parse(b"a-Z.0/9:_").is_some());
        assert!(Profile::parse(b"").is_none());
        assert!(Profile::parse(b"a b").is_none());
        assert!(Profile::parse(b"a\"").is_none());
        assert!(Profile::parse("é".as_bytes()).is_none());
    }

    #[test]
    fn enums_map_numbers_and_mib_names() {
        assert_eq!(RunState::parse(b"7"), Some(RunState::Terminated));
        assert_eq!(RunState::parse(b"8"), None);
        assert_eq!(RunState::parse(b"0"), None);
        assert_eq!(RunState::parse(b"12"), None);
        assert_eq!(ExitCode::parse(b"9"), Some(ExitCode::GenericError));
        assert_eq!(
            ExitCode::from_mib_name("lifeTimeExceeded"),
            Some(ExitCode::LifeTimeExceeded)
        );
        assert_eq!(ExitCode::ALL.len(), 9);
        assert_eq!(RunState::ALL.len(), 7);
    }

    #[test]
    fn version_parses_generic_form() {
        assert_eq!(Version::parse(b"SMX/1.1"), Some(Version::V1_1));
        assert_eq!(Version::parse(b"smx/1.1"), Some(Version::V1_1));
        assert_eq!(
            Version::parse(b"SMX/1.0"),
            Some(Version { major: 1, minor: 0 })
        );
        assert_eq!(Version::parse(b"SMX/1"), None);
        assert_eq!(Version::parse(b"SMX/1."), None);
        assert_eq!(Version::parse(b"SNMP/1.1"), None);
    }
}
