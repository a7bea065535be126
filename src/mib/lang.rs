//! smLangTable and smExtsnTable (RFC 3165 section 5.1): one row per runtime the host
//! offers, and the language extensions each one lists in its configuration.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;

use super::types::Oid;

/// One smLangTable row.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct LangRow {
    /// smLangIndex: stable across restarts and reloads (kept by runtime name).
    pub index: u32,
    /// The runtime that executes scripts of this language (host-internal).
    pub runtime: String,
    /// smLangLanguage.
    pub language: Oid,
    pub version: String,
    pub vendor: Oid,
    pub revision: String,
    pub descr: String,
}

/// One smExtsnTable row.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ExtsnRow {
    /// smLangIndex of the language it extends.
    pub lang: u32,
    /// smExtsnIndex (1.. in configuration order).
    pub index: u32,
    pub extension: Oid,
    pub version: String,
    pub vendor: Oid,
    pub revision: String,
    pub descr: String,
}

/// Gives every runtime of `config` an smLangIndex: the one it had (in `known`), else the
/// next unused one. Indexes of runtimes no longer configured stay reserved, so a later
/// runtime never takes over a script's language. Returns whether `known` changed.
pub fn assign_indexes(config: &Config, known: &mut BTreeMap<String, u32>) -> bool {
    let mut changed = false;
    for rt in &config.runtimes {
        if !known.contains_key(&rt.name.0) {
            let next = known.values().max().copied().unwrap_or(0) + 1;
            known.insert(rt.name.0.clone(), next);
            changed = true;
        }
    }
    changed
}

/// The smLangTable and smExtsnTable of `config`, by smLangIndex.
pub fn tables(config: &Config, known: &BTreeMap<String, u32>) -> (Vec<LangRow>, Vec<ExtsnRow>) {
    let mut langs = Vec::new();
    let mut extsns = Vec::new();
    for rt in &config.runtimes {
        let Some(&index) = known.get(&rt.name.0) else {
            continue;
        };
        langs.push(LangRow {
            index,
            runtime: rt.name.0.clone(),
            language: rt.language.clone().unwrap_or_else(Oid::zero_dot_zero),
            version: rt.version.0.clone(),
            vendor: rt.vendor.clone().unwrap_or_else(Oid::zero_dot_zero),
            revision: rt.revision.0.clone(),
            descr: super::types::cut(&rt.description, 255).to_owned(),
        });
        for (i, e) in rt.language_extensions.iter().enumerate() {
            extsns.push(ExtsnRow {
                lang: index,
                index: i as u32 + 1,
                extension: e.oid.clone(),
                version: e.version.0.clone(),
                vendor: e.vendor.clone().unwrap_or_else(Oid::zero_dot_zero),
                revision: e.revision.0.clone(),
                descr: e.description.0.clone(),
            });
        }
    }
    langs.sort_by_key(|l| l.index);
    extsns.sort_by_key(|e| (e.lang, e.index));
    (langs, extsns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_stable_and_never_reused() {
        let c = Config::embedded();
        let mut known = BTreeMap::new();
        assert!(assign_indexes(&c, &mut known));
        let first = known.clone();
        assert!(!assign_indexes(&c, &mut known), "same config, same indexes");
        // A runtime that went away keeps its index; a new one gets a fresh one.
        let mut c2 = Config::embedded();
        c2.extend(
            "[[runtime]]\nname = \"lua\"\ncommand = [\"lua\"]\nlanguage = \"1.3.6.1.4.1.99.1\"\n\
             version = \"5.4\"\n[[runtime.language_extensions]]\noid = \"1.3.6.1.4.1.99.2\"\ndescription = \"lpeg\"\n",
            "t.toml",
            None,
        )
        .unwrap();
        known.remove("exec");
        known.insert("gone".into(), 99);
        assign_indexes(&c2, &mut known);
        assert_eq!(known["python"], first["python"]);
        assert!(known["lua"] >= 100 && known["exec"] >= 100, "{known:?}");
        assert_ne!(known["lua"], known["exec"]);
        let (langs, ext) = tables(&c2, &known);
        let lua = langs.iter().find(|l| l.runtime == "lua").unwrap();
        assert_eq!(lua.language.to_string(), "1.3.6.1.4.1.99.1");
        assert_eq!(lua.vendor, Oid::zero_dot_zero(), "{{0 0}} if unknown");
        assert_eq!(ext.len(), 1);
        assert_eq!((ext[0].lang, ext[0].index), (lua.index, 1));
    }
}
