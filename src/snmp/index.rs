//! Instance identifiers of the Script MIB's tables (RFC 2578 section 7.7): how a row's
//! INDEX values become the sub-identifiers after a column's OID, and back.
//!
//! SnmpAdminString indexes (smScriptOwner, smLaunchName, ...) are variable-length OCTET
//! STRINGs without IMPLIED: their length, then one sub-identifier per octet. Owner "noc",
//! name "hi" → `.3.110.111.99.2.104.105`. Integer indexes are one sub-identifier.

/// DISMAN-SCRIPT-MIB: `scriptMIB ::= { mib-2 64 }`.
pub const SCRIPT_MIB: [u32; 7] = [1, 3, 6, 1, 2, 1, 64];

/// Appends an SnmpAdminString index component.
pub fn push_string(out: &mut Vec<u32>, s: &str) {
    out.push(s.len() as u32);
    out.extend(s.bytes().map(u32::from));
}

/// The index of an (owner, name) row: smScriptTable, smLaunchTable.
pub fn owner_name(owner: &str, name: &str) -> Vec<u32> {
    let mut v = Vec::with_capacity(owner.len() + name.len() + 3);
    push_string(&mut v, owner);
    push_string(&mut v, name);
    v
}

/// The index of an (owner, name, n) row: smCodeTable, smRunTable.
pub fn owner_name_n(owner: &str, name: &str, n: u32) -> Vec<u32> {
    let mut v = owner_name(owner, name);
    v.push(n);
    v
}

/// Reads one SnmpAdminString component of at most `max` octets: the text and the rest.
/// `None` if the sub-identifiers are not a length and that many octets of UTF-8.
pub fn take_string(sub: &[u32], max: usize) -> Option<(String, &[u32])> {
    let (&len, rest) = sub.split_first()?;
    let len = usize::try_from(len).ok().filter(|l| *l <= max)?;
    if rest.len() < len {
        return None;
    }
    let (octets, rest) = rest.split_at(len);
    let bytes: Option<Vec<u8>> = octets.iter().map(|&o| u8::try_from(o).ok()).collect();
    String::from_utf8(bytes?).ok().map(|s| (s, rest))
}

/// An exact (owner, name) index, each at most 32 octets (RFC 3165 smScriptOwner etc.).
pub fn parse_owner_name(sub: &[u32]) -> Option<(String, String)> {
    let (owner, rest) = take_string(sub, 32)?;
    let (name, rest) = take_string(rest, 32)?;
    rest.is_empty().then_some((owner, name))
}

/// An exact (owner, name, n) index.
pub fn parse_owner_name_n(sub: &[u32]) -> Option<(String, String, u32)> {
    let (owner, rest) = take_string(sub, 32)?;
    let (name, rest) = take_string(rest, 32)?;
    match rest {
        [n] => Some((owner, name, *n)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_string_index_is_length_prefixed() {
        // agentx.md: owner "noc", name "hi" → .3.110.111.99.2.104.105
        assert_eq!(owner_name("noc", "hi"), vec![3, 110, 111, 99, 2, 104, 105]);
        assert_eq!(owner_name_n("", "x", 7), vec![0, 1, 120, 7]);
        assert_eq!(
            parse_owner_name(&[3, 110, 111, 99, 2, 104, 105]),
            Some(("noc".into(), "hi".into()))
        );
        assert_eq!(
            parse_owner_name_n(&[0, 1, 120, 7]),
            Some((String::new(), "x".into(), 7))
        );
    }

    #[test]
    fn malformed_indexes_name_no_row() {
        let rows: [&[u32]; 6] = [
            &[],
            &[3, 110, 111],             // short
            &[1, 256, 1, 120],          // not an octet
            &[1, 0xff, 1, 120],         // not UTF-8
            &[3, 110, 111, 99, 2, 104], // name short
            &[33; 40],                  // owner longer than 32
        ];
        for r in rows {
            assert_eq!(parse_owner_name(r), None, "{r:?}");
        }
        assert_eq!(parse_owner_name(&[0, 1, 120, 5]), None, "trailing sub-id");
        assert_eq!(parse_owner_name_n(&[0, 1, 120]), None, "no run index");
    }
}
