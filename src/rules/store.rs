//! Rule definitions: the record kept in the meta group (replicated with it in a
//! cluster), its validation on write, and the reads and compare-and-set writes the admin
//! API uses. A definition that is stored has compiled: every node compiles the same set.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::template::Template;
use super::{Dialect, Rule, RuleError};
use crate::raft::{machine, Command, Groups, Response};

/// Most rules one cluster holds.
pub const MAX_RULES: usize = 1000;
/// Most actions of one rule.
pub const MAX_ACTIONS: usize = 16;

/// A rule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleDef {
    pub name: String,
    pub sql: String,
    pub dialect: Dialect,
    pub enabled: bool,
    pub description: Option<String>,
    pub actions: Vec<ActionDef>,
    /// Seconds since the epoch.
    pub created_at: u64,
    pub updated_at: u64,
    pub version: u64,
}

/// What a rule does with each row it outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ActionDef {
    /// Publishes the row (or `payload` rendered) to `topic` rendered, as the broker.
    Republish { topic: String, qos: u8, retain: bool, payload: Option<String> },
}

/// A write refused, or the store unavailable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleStoreError {
    /// A field is wrong; `field` names it and `at` is the position in it, if known.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String, at: Option<(usize, usize)> },
    #[error("rule {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("rule storage: {0}")]
    Storage(String),
}

fn invalid(field: &str, e: RuleError) -> RuleStoreError {
    match e {
        RuleError::At { line, column, message, .. } => RuleStoreError::Invalid {
            field: field.into(),
            message: format!("line {line}, column {column}: {message}"),
            at: Some((line, column)),
        },
        RuleError::Eval(m) => RuleStoreError::Invalid { field: field.into(), message: m, at: None },
    }
}

fn bad(field: &str, message: impl Into<String>) -> RuleStoreError {
    RuleStoreError::Invalid { field: field.into(), message: message.into(), at: None }
}

/// A rule name: 1 to 128 letters, digits, `_` or `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A definition compiled, with its actions' templates.
pub struct Compiled {
    pub def: RuleDef,
    pub rule: Rule,
    pub actions: Vec<CompiledAction>,
}

pub enum CompiledAction {
    Republish { topic: Template, qos: crate::mqtt::QoS, retain: bool, payload: Option<Template> },
}

/// Checks a definition and compiles it; errors name the field (`sql`,
/// `actions[0].topic`, ...) and the position in it.
pub fn compile(def: &RuleDef) -> Result<Compiled, RuleStoreError> {
    if !valid_name(&def.name) {
        return Err(bad("name", "1 to 128 letters, digits, '_' or '-'"));
    }
    if def.description.as_ref().is_some_and(|d| d.len() > 1024) {
        return Err(bad("description", "at most 1024 bytes"));
    }
    let rule = Rule::compile(&def.sql, def.dialect).map_err(|e| invalid("sql", e))?;
    if def.actions.len() > MAX_ACTIONS {
        return Err(bad("actions", format!("at most {MAX_ACTIONS}")));
    }
    let mut actions = Vec::with_capacity(def.actions.len());
    for (i, a) in def.actions.iter().enumerate() {
        match a {
            ActionDef::Republish { topic, qos, retain, payload } => {
                let field = |f: &str| format!("actions[{i}].republish.{f}");
                let qos = crate::mqtt::QoS::from_u8(*qos)
                    .ok_or_else(|| bad(&field("qos"), "0, 1 or 2"))?;
                let t =
                    Template::parse(topic, def.dialect).map_err(|e| invalid(&field("topic"), e))?;
                if let Some(lit) = t.literal() {
                    if crate::mqtt::topic::validate_name(&lit).is_err() {
                        return Err(bad(&field("topic"), "not a valid topic name"));
                    }
                    // A rule that republishes into its own sources would feed itself.
                    if let Some(f) =
                        rule.sources().iter().find(|f| crate::mqtt::topic::matches(f, &lit))
                    {
                        return Err(bad(
                            &field("topic"),
                            format!("{lit:?} matches the rule's own source {f:?}: it would loop"),
                        ));
                    }
                } else if topic.is_empty() {
                    return Err(bad(&field("topic"), "empty"));
                }
                let payload = payload
                    .as_deref()
                    .map(|p| {
                        Template::parse(p, def.dialect).map_err(|e| invalid(&field("payload"), e))
                    })
                    .transpose()?;
                actions.push(CompiledAction::Republish { topic: t, qos, retain: *retain, payload });
            }
        }
    }
    Ok(Compiled { def: def.clone(), rule, actions })
}

/// Rule definitions in the meta group.
pub struct RuleStore {
    groups: Arc<Groups>,
}

fn storage(e: impl std::fmt::Display) -> RuleStoreError {
    RuleStoreError::Storage(e.to_string())
}

impl RuleStore {
    pub fn new(groups: Arc<Groups>) -> RuleStore {
        RuleStore { groups }
    }

    pub fn groups(&self) -> &Arc<Groups> {
        &self.groups
    }

    fn meta(&self) -> Result<&sled::Tree, RuleStoreError> {
        self.groups.data(0).ok_or_else(|| storage("no meta group"))
    }

    pub fn get(&self, name: &str) -> Result<Option<RuleDef>, RuleStoreError> {
        machine::read_rule(self.meta()?, name).map_err(storage)
    }

    /// Every rule, by name.
    pub fn all(&self) -> Result<Vec<RuleDef>, RuleStoreError> {
        let mut out = Vec::new();
        for kv in self.meta()?.scan_prefix(machine::RULE_PREFIX) {
            let (_, v) = kv.map_err(storage)?;
            out.push(crate::store::decode(&v).map_err(storage)?);
        }
        Ok(out)
    }

    /// Writes `def` if the stored version is still `expect` (`None`: a new rule).
    pub async fn put(&self, def: RuleDef, expect: Option<u64>) -> Result<(), RuleStoreError> {
        compile(&def)?;
        if expect.is_none() && self.all()?.len() >= MAX_RULES {
            return Err(bad("name", format!("at most {MAX_RULES} rules")));
        }
        let name = def.name.clone();
        self.write(Command::PutRule { name: name.clone(), expect, value: Some(def) }, &name).await
    }

    pub async fn delete(&self, name: &str, expect: u64) -> Result<(), RuleStoreError> {
        self.write(Command::PutRule { name: name.into(), expect: Some(expect), value: None }, name)
            .await
    }

    async fn write(&self, cmd: Command, name: &str) -> Result<(), RuleStoreError> {
        match self.groups.write(0, cmd).await {
            Ok(Response::Applied) => Ok(()),
            Ok(Response::Conflict { found: None }) => Err(RuleStoreError::NotFound(name.into())),
            Ok(_) => Err(RuleStoreError::Conflict(format!(
                "rule {name} changed meanwhile or already exists"
            ))),
            Err(e) => Err(storage(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(sql: &str, topic: &str) -> RuleDef {
        RuleDef {
            name: "r1".into(),
            sql: sql.into(),
            dialect: Dialect::Emqx,
            enabled: true,
            description: None,
            actions: vec![ActionDef::Republish {
                topic: topic.into(),
                qos: 1,
                retain: false,
                payload: None,
            }],
            created_at: 0,
            updated_at: 0,
            version: 1,
        }
    }

    fn err(d: &RuleDef) -> String {
        compile(d).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn validation_names_the_field_and_position() {
        assert!(compile(&def("SELECT * FROM \"t/#\"", "out/${clientid}")).is_ok());
        assert_eq!(
            err(&def("SELECT * FRM \"t/#\"", "out")),
            "sql: line 1, column 10: expected `FROM`, found `FRM`"
        );
        assert_eq!(
            err(&def("SELECT * FROM \"t/#\"", "out/${nope()}")),
            "actions[0].republish.topic: line 1, column 7: unknown function `nope`"
        );
        assert_eq!(err(&def("SELECT * FROM \"t/#\"", "t/loop")), "actions[0].republish.topic: \"t/loop\" matches the rule's own source \"t/#\": it would loop");
        assert_eq!(
            err(&def("SELECT * FROM \"t/#\"", "a/+")),
            "actions[0].republish.topic: not a valid topic name"
        );
        let mut d = def("SELECT * FROM \"t/#\"", "out");
        d.name = "has space".into();
        assert!(err(&d).starts_with("name:"));
    }
}
