//! The `[agentx]` section of the configuration: where the master agent listens and how
//! patient the subagent is with it. The section's presence is what turns the subagent on in
//! `smx daemon`; every knob has a default, so `[agentx]` alone connects to net-snmp's
//! default socket.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Dur;

/// net-snmp's default master socket (snmpd `agentXSocket`, RFC 2741 section 8.2.1).
pub const DEFAULT_SOCKET: &str = "/var/agentx/master";

/// Where the master agent accepts subagents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterAddr {
    /// A Unix stream socket (`/var/agentx/master` or `unix:/path`).
    Unix(PathBuf),
    /// TCP (`tcp:127.0.0.1:705`, RFC 2741 section 8.1).
    Tcp(SocketAddr),
}

/// A `socket` value that is neither an absolute path nor `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "agentx socket {0:?}: use an absolute path (\"/var/agentx/master\"), \"unix:/path\" or \"tcp:127.0.0.1:705\""
)]
pub struct BadAddr(String);

impl FromStr for MasterAddr {
    type Err = BadAddr;
    fn from_str(s: &str) -> Result<MasterAddr, BadAddr> {
        if let Some(t) = s.strip_prefix("tcp:") {
            return t
                .parse()
                .map(MasterAddr::Tcp)
                .map_err(|_| BadAddr(s.into()));
        }
        let p = s.strip_prefix("unix:").unwrap_or(s);
        if p.starts_with('/') {
            Ok(MasterAddr::Unix(PathBuf::from(p)))
        } else {
            Err(BadAddr(s.into()))
        }
    }
}

impl fmt::Display for MasterAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MasterAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            MasterAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl<'de> Deserialize<'de> for MasterAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[agentx]`: the AgentX subagent that serves DISMAN-SCRIPT-MIB through snmpd.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentxSettings {
    /// The master's socket.
    #[serde(default = "default_socket")]
    pub socket: MasterAddr,
    /// How long connecting, the Open and Register handshakes and every answer the
    /// master owes us may take.
    #[serde(default = "default_timeout", with = "dur")]
    pub timeout: Duration,
    /// How long the session may be quiet before we Ping the master (RFC 2741 6.2.13) to
    /// find out whether it is still there.
    #[serde(default = "default_ping", with = "dur")]
    pub ping_interval: Duration,
    /// First pause before reconnecting to a master that went away; doubles each failure.
    #[serde(default = "default_backoff_min", with = "dur")]
    pub reconnect_min: Duration,
    /// Longest pause between reconnection attempts.
    #[serde(default = "default_backoff_max", with = "dur")]
    pub reconnect_max: Duration,
    /// Notifications kept while no session is open; past it the oldest are dropped,
    /// counted and logged.
    #[serde(default = "default_queue")]
    pub notify_queue: usize,
}

fn default_socket() -> MasterAddr {
    MasterAddr::Unix(PathBuf::from(DEFAULT_SOCKET))
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_ping() -> Duration {
    Duration::from_secs(15)
}
fn default_backoff_min() -> Duration {
    Duration::from_millis(500)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_queue() -> usize {
    1000
}

mod dur {
    use std::time::Duration;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match <super::Dur as serde::Deserialize>::deserialize(d)?.0 {
            Duration::ZERO => Err(serde::de::Error::custom("must be longer than 0s")),
            t => Ok(t),
        }
    }
}

impl Default for AgentxSettings {
    fn default() -> Self {
        AgentxSettings {
            socket: default_socket(),
            timeout: default_timeout(),
            ping_interval: default_ping(),
            reconnect_min: default_backoff_min(),
            reconnect_max: default_backoff_max(),
            notify_queue: default_queue(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_presence_enables_with_defaults() {
        let mut c = crate::config::Config::embedded();
        assert_eq!(c.agentx, None, "no [agentx]: no subagent");
        c.extend("[agentx]\n", "t.toml", None).unwrap();
        assert_eq!(c.agentx, Some(AgentxSettings::default()));
        let mut c = crate::config::Config::embedded();
        c.extend(
            "[agentx]\nsocket = \"tcp:127.0.0.1:705\"\ntimeout = \"2s\"\nnotify_queue = 5\n",
            "t.toml",
            None,
        )
        .unwrap();
        let a = c.agentx.unwrap();
        assert_eq!(a.socket, MasterAddr::Tcp("127.0.0.1:705".parse().unwrap()));
        assert_eq!((a.timeout, a.notify_queue), (Duration::from_secs(2), 5));
        for bad in ["[agentx]\nsockt = \"/x\"\n", "[agentx]\ntimeout = \"0s\"\n"] {
            let e = crate::config::Config::embedded().extend(bad, "t.toml", None);
            assert!(e.is_err(), "{bad}");
        }
    }

    #[test]
    fn socket_forms() {
        let rows = [
            (
                "/var/agentx/master",
                Some(MasterAddr::Unix("/var/agentx/master".into())),
            ),
            (
                "unix:/tmp/a.sock",
                Some(MasterAddr::Unix("/tmp/a.sock".into())),
            ),
            (
                "tcp:127.0.0.1:705",
                Some(MasterAddr::Tcp("127.0.0.1:705".parse().unwrap())),
            ),
            ("tcp:localhost", None),
            ("relative.sock", None),
        ];
        for (text, want) in rows {
            assert_eq!(text.parse::<MasterAddr>().ok(), want, "{text}");
        }
    }
}
