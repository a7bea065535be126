//! smScriptTable and smCodeTable (RFC 3165 sections 5.2, 5.3): the scripts a manager
//! installed, their status, and the code fragments of scripts pushed over SNMP.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::types::{
    RowStatus, ScriptAdmin, ScriptOper, SetError, StorageType, admin_string, check_len,
};

/// smCodeText is at most 1024 octets a fragment.
pub const MAX_CODE_TEXT: usize = 1024;

/// One smScriptTable row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptRow {
    /// smScriptOwner.
    pub owner: String,
    /// smScriptName.
    pub name: String,
    /// smScriptDescr.
    pub descr: String,
    /// smScriptLanguage: an smLangIndex (0: hard-wired, not runnable here).
    pub language: u32,
    /// smScriptSource: a URL, or empty for code from smCodeTable or the local storage.
    pub source: String,
    pub admin_status: ScriptAdmin,
    pub oper_status: ScriptOper,
    pub storage_type: StorageType,
    pub row_status: RowStatus,
    /// smScriptError.
    pub error: String,
    /// smScriptLastChange (`None`: not modified since created).
    #[serde(with = "super::opt_time")]
    pub last_change: Option<SystemTime>,
    /// The script's file in the host's script storage, once it was enabled.
    #[serde(rename = "file", default)]
    pub stored: Option<String>,
    /// smScriptLanguage was given (it is required for `active`).
    #[serde(skip, default = "yes")]
    pub language_set: bool,
}

fn yes() -> bool {
    true
}

/// One column of an smScriptTable row, as a manager sets it.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptCol {
    Descr(Vec<u8>),
    Language(i64),
    Source(Vec<u8>),
    AdminStatus(i64),
    StorageType(i64),
    RowStatus(i64),
}

impl ScriptCol {
    /// The MIB name of the column.
    pub fn name(&self) -> &'static str {
        match self {
            ScriptCol::Descr(_) => "smScriptDescr",
            ScriptCol::Language(_) => "smScriptLanguage",
            ScriptCol::Source(_) => "smScriptSource",
            ScriptCol::AdminStatus(_) => "smScriptAdminStatus",
            ScriptCol::StorageType(_) => "smScriptStorageType",
            ScriptCol::RowStatus(_) => "smScriptRowStatus",
        }
    }
}

impl ScriptRow {
    /// A row as `createAndGo`/`createAndWait` makes it: the MIB's DEFVALs.
    pub fn new(owner: &str, name: &str) -> ScriptRow {
        ScriptRow {
            owner: owner.to_owned(),
            name: name.to_owned(),
            descr: String::new(),
            language: 0,
            source: String::new(),
            admin_status: ScriptAdmin::Disabled,
            oper_status: ScriptOper::Disabled,
            storage_type: StorageType::Volatile,
            row_status: RowStatus::NotReady,
            error: String::new(),
            last_change: None,
            stored: None,
            language_set: false,
        }
    }

    /// The required column still missing for `active`, if any.
    pub fn missing(&self) -> Option<&'static str> {
        (!self.language_set).then_some("smScriptLanguage")
    }

    /// Applies one column (not the RowStatus), with the rules of its DESCRIPTION.
    pub fn set(&mut self, col: &ScriptCol, now: SystemTime) -> Result<(), SetError> {
        let read_only_storage = matches!(
            self.storage_type,
            StorageType::Permanent | StorageType::ReadOnly
        );
        match col {
            ScriptCol::Descr(v) => self.descr = admin_string("smScriptDescr", v, 0, 255)?,
            ScriptCol::Language(v) => {
                let v = u32::try_from(*v)
                    .ok()
                    .filter(|v| *v <= i32::MAX as u32)
                    .ok_or_else(|| {
                        SetError::WrongValue("smScriptLanguage is 0..2147483647".into())
                    })?;
                if matches!(
                    self.oper_status,
                    ScriptOper::Enabled | ScriptOper::Compiling
                ) {
                    return Err(SetError::InconsistentValue(
                        "smScriptLanguage cannot change while the script is enabled or compiling"
                            .into(),
                    ));
                }
                self.language = v;
                self.language_set = true;
            }
            ScriptCol::Source(v) => {
                check_len("smScriptSource", v, 0, 255)?;
                if !v.iter().all(|b| (0x20..0x7f).contains(b)) {
                    return Err(SetError::WrongValue(
                        "smScriptSource is a DisplayString holding a URL (printable ASCII)".into(),
                    ));
                }
                if self.oper_status.holds_source() && self.row_status == RowStatus::Active {
                    return Err(SetError::InconsistentValue(format!(
                        "smScriptSource cannot change while the script is {}",
                        self.oper_status
                    )));
                }
                self.source = String::from_utf8_lossy(v).into_owned();
            }
            ScriptCol::AdminStatus(v) => {
                self.admin_status = ScriptAdmin::from_number(*v).ok_or_else(|| {
                    SetError::WrongValue(
                        "smScriptAdminStatus is enabled(1), disabled(2) or editing(3)".into(),
                    )
                })?;
            }
            ScriptCol::StorageType(v) => {
                let st = StorageType::from_number(*v)
                    .ok_or_else(|| SetError::WrongValue("smScriptStorageType is 1..5".into()))?;
                if read_only_storage {
                    return Err(SetError::InconsistentValue(format!(
                        "the row is {}: its storage type cannot change",
                        self.storage_type
                    )));
                }
                match st {
                    StorageType::Volatile | StorageType::NonVolatile => self.storage_type = st,
                    // "Attempts to set this object to permanent will always fail."
                    _ => {
                        return Err(SetError::InconsistentValue(format!(
                            "smScriptStorageType {st} cannot be set (volatile or nonVolatile)"
                        )));
                    }
                }
            }
            ScriptCol::RowStatus(_) => unreachable!("RowStatus is applied by the set engine"),
        }
        self.last_change = Some(now);
        Ok(())
    }

    /// Whether the row may leave `active` (notInService, destroy) now.
    pub fn may_take_down(&self) -> Result<(), SetError> {
        if self.row_status == RowStatus::Active && self.oper_status == ScriptOper::Enabled {
            return Err(SetError::InconsistentValue(
                "the script is enabled: set smScriptAdminStatus to disabled first".into(),
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

/// One smCodeTable row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeRow {
    pub owner: String,
    pub name: String,
    /// smCodeIndex.
    pub index: u32,
    /// smCodeText (1..1024 octets once set; empty means not set yet).
    #[serde(with = "super::octets_text")]
    pub text: Vec<u8>,
    pub row_status: RowStatus,
}

/// One column of an smCodeTable row.
#[derive(Debug, Clone, PartialEq)]
pub enum CodeCol {
    Text(Vec<u8>),
    RowStatus(i64),
}

impl CodeRow {
    pub fn new(owner: &str, name: &str, index: u32) -> CodeRow {
        CodeRow {
            owner: owner.to_owned(),
            name: name.to_owned(),
            index,
            text: Vec::new(),
            row_status: RowStatus::NotReady,
        }
    }

    pub fn missing(&self) -> Option<&'static str> {
        self.text.is_empty().then_some("smCodeText")
    }

    pub fn set_text(&mut self, v: &[u8]) -> Result<(), SetError> {
        check_len("smCodeText", v, 1, MAX_CODE_TEXT)?;
        self.text = v.to_vec();
        Ok(())
    }
}

/// Splits a script into smCodeText fragments.
pub fn fragments(content: &[u8]) -> impl Iterator<Item = &[u8]> {
    content.chunks(MAX_CODE_TEXT)
}
