//! smLaunchTable (RFC 3165 section 5.4): launch buttons. A row names a script and the
//! parameters of its runs; setting smLaunchStart starts one.

use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::host::{Countdown, TimeInterval};
use crate::proto::Octets;

use super::types::{
    Control, LaunchAdmin, LaunchOper, RowStatus, SetError, StorageType, admin_string,
};

/// One smLaunchTable row (the columns a manager sets or that the model keeps; oper status,
/// smLaunchRunIndexNext and smLaunchStart are answered from the run table).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchRow {
    /// smLaunchOwner.
    pub owner: String,
    /// smLaunchName.
    pub name: String,
    pub script_owner: String,
    pub script_name: String,
    pub argument: Octets,
    pub max_running: u32,
    pub max_completed: u32,
    pub lifetime: TimeInterval,
    pub expire_time: TimeInterval,
    /// smLaunchStart as read: the smRunIndex of the last run started from this row.
    pub start: u32,
    pub admin_status: LaunchAdmin,
    pub storage_type: StorageType,
    pub row_status: RowStatus,
    pub error: String,
    #[serde(with = "super::opt_time")]
    pub last_change: Option<SystemTime>,
    /// Set once smLaunchRowExpireTime reached 0 while runs still existed.
    #[serde(skip)]
    pub expired: bool,
    /// Made by the control API's `launch` op for a run of a stored file, not by a manager.
    /// Only such buttons may that op reuse and rewrite.
    #[serde(default)]
    pub implicit: bool,
    /// smLaunchRowExpireTime (kept by the store as its remaining value).
    #[serde(skip, default = "no_expiry")]
    pub(crate) row_expire: Countdown,
    /// smLaunchScriptOwner was given (it is required for `active`).
    #[serde(skip, default = "yes")]
    pub script_owner_set: bool,
    /// The oper status last published, to notice disabled -> enabled (autostart).
    #[serde(skip, default = "disabled")]
    pub last_oper: LaunchOper,
}

fn no_expiry() -> Countdown {
    Countdown::new(TimeInterval::MAX)
}
fn yes() -> bool {
    true
}
fn disabled() -> LaunchOper {
    LaunchOper::Disabled
}

/// One column of an smLaunchTable row, as a manager sets it.
#[derive(Debug, Clone, PartialEq)]
pub enum LaunchCol {
    ScriptOwner(Vec<u8>),
    ScriptName(Vec<u8>),
    Argument(Vec<u8>),
    MaxRunning(i64),
    MaxCompleted(i64),
    LifeTime(i64),
    ExpireTime(i64),
    Start(i64),
    Control(i64),
    AdminStatus(i64),
    StorageType(i64),
    RowStatus(i64),
    RowExpireTime(i64),
}

impl LaunchCol {
    pub fn name(&self) -> &'static str {
        match self {
            LaunchCol::ScriptOwner(_) => "smLaunchScriptOwner",
            LaunchCol::ScriptName(_) => "smLaunchScriptName",
            LaunchCol::Argument(_) => "smLaunchArgument",
            LaunchCol::MaxRunning(_) => "smLaunchMaxRunning",
            LaunchCol::MaxCompleted(_) => "smLaunchMaxCompleted",
            LaunchCol::LifeTime(_) => "smLaunchLifeTime",
            LaunchCol::ExpireTime(_) => "smLaunchExpireTime",
            LaunchCol::Start(_) => "smLaunchStart",
            LaunchCol::Control(_) => "smLaunchControl",
            LaunchCol::AdminStatus(_) => "smLaunchAdminStatus",
            LaunchCol::StorageType(_) => "smLaunchStorageType",
            LaunchCol::RowStatus(_) => "smLaunchRowStatus",
            LaunchCol::RowExpireTime(_) => "smLaunchRowExpireTime",
        }
    }
}

/// A TimeInterval column value.
pub fn time_interval(what: &str, v: i64) -> Result<TimeInterval, SetError> {
    u64::try_from(v)
        .ok()
        .and_then(TimeInterval::from_centis)
        .ok_or_else(|| SetError::WrongValue(format!("{what} is 0..2147483647 centi-seconds")))
}

/// An Unsigned32 (1..4294967295) column value.
fn positive_u32(what: &str, v: i64) -> Result<u32, SetError> {
    u32::try_from(v)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| SetError::WrongValue(format!("{what} is 1..4294967295")))
}

/// The smLaunchControl value, checked.
pub fn control(what: &str, v: i64) -> Result<Control, SetError> {
    Control::from_number(v).ok_or_else(|| {
        SetError::WrongValue(format!(
            "{what} is abort(1), suspend(2), resume(3) or nop(4)"
        ))
    })
}

impl LaunchRow {
    /// A row as `createAndGo`/`createAndWait` makes it: the MIB's DEFVALs.
    pub fn new(owner: &str, name: &str, now: Instant) -> LaunchRow {
        let mut row_expire = Countdown::new(TimeInterval::MAX);
        row_expire.start(now);
        LaunchRow {
            owner: owner.to_owned(),
            name: name.to_owned(),
            script_owner: String::new(),
            script_name: String::new(),
            argument: Octets::default(),
            max_running: 1,
            max_completed: 1,
            lifetime: TimeInterval::ONE_HOUR,
            expire_time: TimeInterval::ONE_HOUR,
            start: 0,
            admin_status: LaunchAdmin::Disabled,
            storage_type: StorageType::Volatile,
            row_status: RowStatus::NotReady,
            error: String::new(),
            last_change: None,
            expired: false,
            implicit: false,
            row_expire,
            script_owner_set: false,
            last_oper: LaunchOper::Disabled,
        }
    }

    pub fn missing(&self) -> Option<&'static str> {
        (!self.script_owner_set).then_some("smLaunchScriptOwner")
    }

    /// Applies one column other than RowStatus, smLaunchStart and smLaunchControl (those
    /// act on runs and are applied by the set engine).
    pub fn set(&mut self, col: &LaunchCol, now: SystemTime, at: Instant) -> Result<(), SetError> {
        if matches!(
            self.storage_type,
            StorageType::Permanent | StorageType::ReadOnly
        ) && matches!(col, LaunchCol::StorageType(_))
        {
            return Err(SetError::InconsistentValue(format!(
                "the row is {}: its storage type cannot change",
                self.storage_type
            )));
        }
        let change = match col {
            LaunchCol::ScriptOwner(v) => {
                self.script_owner = admin_string("smLaunchScriptOwner", v, 0, 32)?;
                self.script_owner_set = true;
                true
            }
            LaunchCol::ScriptName(v) => {
                self.script_name = admin_string("smLaunchScriptName", v, 0, 32)?;
                true
            }
            LaunchCol::Argument(v) => {
                if v.len() > crate::proto::MAX_RESULT_OCTETS {
                    return Err(SetError::WrongLength(format!(
                        "smLaunchArgument is at most {} octets here",
                        crate::proto::MAX_RESULT_OCTETS
                    )));
                }
                self.argument = Octets::new(v.clone());
                true
            }
            LaunchCol::MaxRunning(v) => {
                self.max_running = positive_u32("smLaunchMaxRunning", *v)?;
                true
            }
            LaunchCol::MaxCompleted(v) => {
                self.max_completed = positive_u32("smLaunchMaxCompleted", *v)?;
                true
            }
            LaunchCol::LifeTime(v) => {
                self.lifetime = time_interval("smLaunchLifeTime", *v)?;
                true
            }
            LaunchCol::ExpireTime(v) => {
                self.expire_time = time_interval("smLaunchExpireTime", *v)?;
                true
            }
            LaunchCol::AdminStatus(v) => {
                self.admin_status = LaunchAdmin::from_number(*v).ok_or_else(|| {
                    SetError::WrongValue(
                        "smLaunchAdminStatus is enabled(1), disabled(2) or autostart(3)".into(),
                    )
                })?;
                true
            }
            LaunchCol::StorageType(v) => {
                let st = StorageType::from_number(*v)
                    .ok_or_else(|| SetError::WrongValue("smLaunchStorageType is 1..5".into()))?;
                match st {
                    StorageType::Volatile | StorageType::NonVolatile => self.storage_type = st,
                    _ => {
                        return Err(SetError::InconsistentValue(format!(
                            "smLaunchStorageType {st} cannot be set (volatile or nonVolatile)"
                        )));
                    }
                }
                true
            }
            LaunchCol::RowExpireTime(v) => {
                let t = time_interval("smLaunchRowExpireTime", *v)?;
                if self.expired {
                    return Err(SetError::InconsistentValue(
                        "the launch button has expired".into(),
                    ));
                }
                self.row_expire.set(t, at);
                // Not a change of the entry (smLaunchLastChange).
                false
            }
            LaunchCol::Start(_) | LaunchCol::Control(_) | LaunchCol::RowStatus(_) => {
                unreachable!("applied by the set engine")
            }
        };
        if change {
            self.last_change = Some(now);
        }
        Ok(())
    }

    /// smLaunchOperStatus, given whether its script is active and enabled and whether it
    /// has rows in the smRunTable.
    pub fn oper(&self, script_enabled: bool, has_runs: bool) -> LaunchOper {
        if self.expired {
            LaunchOper::Expired
        } else if self.row_status == RowStatus::Active
            && self.admin_status != LaunchAdmin::Disabled
            && script_enabled
        {
            LaunchOper::Enabled
        } else {
            // "`disabled' requires that there are no entries in the smRunTable": a row
            // with runs but no longer usable reads disabled too; it cannot start more.
            let _ = has_runs;
            LaunchOper::Disabled
        }
    }

    /// Whether the row may leave `active` (notInService, destroy) now.
    pub fn may_take_down(&self, oper: LaunchOper) -> Result<(), SetError> {
        if oper == LaunchOper::Enabled {
            return Err(SetError::InconsistentValue(
                "the launch button is enabled: set smLaunchAdminStatus to disabled first".into(),
            ));
        }
        if matches!(
            self.storage_type,
            StorageType::Permanent | StorageType::ReadOnly
        ) {
            return Err(SetError::InconsistentValue(format!(
                "the row is {}",
                self.storage_type
            )));
        }
        Ok(())
    }
}
