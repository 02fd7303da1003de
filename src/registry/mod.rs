//! The registry: things (name, attributes, groups) and thing groups, in the meta group.
//! Writes are compare-and-set on the record's version; reads come from the meta group's
//! applied state.
//!
//! Owns: registry records and their validation. Must not touch: device sessions or
//! shadows (a thing need not be registered to connect or to have a shadow until device
//! identity, a later issue, requires it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::raft::{machine, Command, Groups, Response};

/// A registered thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thing {
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    pub groups: BTreeSet<String>,
    pub created_at: u64,
    pub version: u64,
}

/// A thing group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub description: Option<String>,
    pub created_at: u64,
    pub version: u64,
}

/// Registry failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("registry storage: {0}")]
    Storage(String),
}

/// Most attributes on one thing (AWS allows 50).
pub const MAX_ATTRIBUTES: usize = 50;

/// Attribute names: 1 to 128 of letters, digits, `_.,@/:#-`; values: up to 800 of those
/// plus `=` and space, as AWS allows.
pub fn check_attributes(a: &BTreeMap<String, String>) -> Result<(), RegistryError> {
    if a.len() > MAX_ATTRIBUTES {
        return Err(RegistryError::Invalid(format!("attributes: at most {MAX_ATTRIBUTES}")));
    }
    let ok_char = |c: char, extra: &str| {
        c.is_ascii_alphanumeric() || "_.,@/:#-".contains(c) || extra.contains(c)
    };
    for (k, v) in a {
        if k.is_empty() || k.len() > 128 || !k.chars().all(|c| ok_char(c, "")) {
            return Err(RegistryError::Invalid(format!("attributes: bad name {k:?}")));
        }
        if v.len() > 800 || !v.chars().all(|c| ok_char(c, "= ")) {
            return Err(RegistryError::Invalid(format!("attributes.{k}: bad value")));
        }
    }
    Ok(())
}

/// The node's registry.
pub struct Registry {
    groups: Arc<Groups>,
}

fn storage(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Storage(e.to_string())
}

impl Registry {
    pub fn new(groups: Arc<Groups>) -> Self {
        Registry { groups }
    }

    fn meta(&self) -> Result<&sled::Tree, RegistryError> {
        self.groups.data(0).ok_or_else(|| storage("no meta group"))
    }

    pub fn thing(&self, name: &str) -> Result<Option<Thing>, RegistryError> {
        machine::read_thing(self.meta()?, name).map_err(storage)
    }

    pub fn group(&self, name: &str) -> Result<Option<Group>, RegistryError> {
        machine::read_group(self.meta()?, name).map_err(storage)
    }

    /// Things in name order after `after`, at most `limit`, with `attribute` = value if
    /// given; and whether more follow.
    pub fn things(
        &self,
        after: Option<&str>,
        limit: usize,
        attribute: Option<(&str, &str)>,
    ) -> Result<(Vec<Thing>, bool), RegistryError> {
        let mut out = Vec::new();
        let start = match after {
            Some(a) => {
                let mut k = machine::thing_key(a);
                k.push(0);
                k
            }
            None => machine::THING_PREFIX.to_vec(),
        };
        for kv in self.meta()?.range(start..) {
            let (k, v) = kv.map_err(storage)?;
            if !k.starts_with(machine::THING_PREFIX) {
                break;
            }
            let t: Thing = crate::store::decode(&v).map_err(storage)?;
            if attribute
                .is_some_and(|(n, val)| t.attributes.get(n).map(String::as_str) != Some(val))
            {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(t);
        }
        Ok((out, false))
    }

    /// Every group.
    pub fn all_groups(&self) -> Result<Vec<Group>, RegistryError> {
        let mut out = Vec::new();
        for kv in self.meta()?.scan_prefix(machine::GROUP_PREFIX) {
            let (_, v) = kv.map_err(storage)?;
            out.push(crate::store::decode(&v).map_err(storage)?);
        }
        Ok(out)
    }

    /// Names of the things in a group.
    pub fn members(&self, group: &str) -> Result<Vec<String>, RegistryError> {
        let prefix = machine::member_prefix(group);
        let mut out = Vec::new();
        for kv in self.meta()?.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(storage)?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).to_string());
        }
        Ok(out)
    }

    async fn write(&self, cmd: Command, what: &str) -> Result<(), RegistryError> {
        match self.groups.write(0, cmd).await {
            Ok(Response::Applied) => Ok(()),
            Ok(_) => {
                Err(RegistryError::Conflict(format!("{what} changed meanwhile or already exists")))
            }
            Err(e) => Err(storage(e)),
        }
    }

    /// Creates a thing (409 if it exists).
    pub async fn create_thing(&self, t: Thing) -> Result<(), RegistryError> {
        check_attributes(&t.attributes)?;
        let name = t.name.clone();
        self.write(
            Command::PutThing { expect: None, value: Some(t), name: name.clone() },
            &format!("thing {name}"),
        )
        .await
    }

    /// Replaces a thing's attributes (`merge`: only the given ones, empty values removing).
    pub async fn update_attributes(
        &self,
        name: &str,
        attributes: BTreeMap<String, String>,
        merge: bool,
        expected_version: Option<u64>,
    ) -> Result<Thing, RegistryError> {
        let mut t =
            self.thing(name)?.ok_or_else(|| RegistryError::NotFound(format!("thing {name}")))?;
        if expected_version.is_some_and(|v| v != t.version) {
            return Err(RegistryError::Conflict(format!(
                "thing {name} is at version {}",
                t.version
            )));
        }
        let expect = Some(t.version);
        if merge {
            for (k, v) in attributes {
                if v.is_empty() {
                    t.attributes.remove(&k);
                } else {
                    t.attributes.insert(k, v);
                }
            }
        } else {
            t.attributes = attributes;
        }
        check_attributes(&t.attributes)?;
        t.version += 1;
        self.write(
            Command::PutThing { expect, value: Some(t.clone()), name: name.into() },
            &format!("thing {name}"),
        )
        .await?;
        Ok(t)
    }

    pub async fn delete_thing(&self, name: &str) -> Result<(), RegistryError> {
        let t =
            self.thing(name)?.ok_or_else(|| RegistryError::NotFound(format!("thing {name}")))?;
        self.write(
            Command::PutThing { expect: Some(t.version), value: None, name: name.into() },
            &format!("thing {name}"),
        )
        .await
    }

    pub async fn create_group(&self, g: Group) -> Result<(), RegistryError> {
        let name = g.name.clone();
        self.write(
            Command::PutGroup { expect: None, value: Some(g), name: name.clone() },
            &format!("group {name}"),
        )
        .await
    }

    /// Deletes an empty group.
    pub async fn delete_group(&self, name: &str) -> Result<(), RegistryError> {
        let g =
            self.group(name)?.ok_or_else(|| RegistryError::NotFound(format!("group {name}")))?;
        if !self.members(name)?.is_empty() {
            return Err(RegistryError::Conflict(format!("group {name} still has things")));
        }
        self.write(
            Command::PutGroup { expect: Some(g.version), value: None, name: name.into() },
            &format!("group {name}"),
        )
        .await
    }

    /// Adds (`add`) or removes a thing's membership of a group.
    pub async fn membership(
        &self,
        group: &str,
        thing: &str,
        add: bool,
    ) -> Result<Thing, RegistryError> {
        if self.group(group)?.is_none() {
            return Err(RegistryError::NotFound(format!("group {group}")));
        }
        let mut t =
            self.thing(thing)?.ok_or_else(|| RegistryError::NotFound(format!("thing {thing}")))?;
        let expect = Some(t.version);
        let changed = if add { t.groups.insert(group.into()) } else { t.groups.remove(group) };
        if !changed {
            return Ok(t);
        }
        t.version += 1;
        self.write(
            Command::PutThing { expect, value: Some(t.clone()), name: thing.into() },
            &format!("thing {thing}"),
        )
        .await?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_follow_aws_rules() {
        let ok: BTreeMap<_, _> = [("model".to_string(), "x-1 rev=2".to_string())].into();
        assert!(check_attributes(&ok).is_ok());
        let bad: BTreeMap<_, _> = [("a b".to_string(), "v".to_string())].into();
        assert!(check_attributes(&bad).is_err());
        let bad: BTreeMap<_, _> = [("a".to_string(), "v\n".to_string())].into();
        assert!(check_attributes(&bad).is_err());
        let many: BTreeMap<_, _> = (0..51).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert!(check_attributes(&many).is_err());
    }
}
