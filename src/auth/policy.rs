//! Authorization policies: documents of allow and deny statements over topic patterns
//! with variables, compiled per connection, and the decisions made from them. Pure; no
//! I/O.
//!
//! A document:
//! `{"statements":[{"effect":"allow","actions":["publish","subscribe","receive"],"topics":["devices/${clientid}/#"]}]}`.
//! A topic pattern is an MQTT filter (`+`, `#`). Variables: `${clientid}`,
//! `${thing.name}`, `${thing.attributes[NAME]}`, `${cert.subject.cn}` (and `.o`, `.ou`,
//! `.c`, `.st`, `.l`). A pattern whose variable has no value for the connection (no such
//! attribute, no certificate) matches nothing, and so does one whose value holds `+`, `#`
//! or NUL, so a value can never widen a pattern.
//!
//! Publish and receive check a topic; subscribe checks a filter, which an allow pattern
//! must *cover* (every topic the filter matches, the pattern matches). A deny that
//! matches wins over any allow; with no allow, the answer is deny.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Longest policy document.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;

/// An action a policy statement governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish = 1,
    Subscribe = 2,
    Receive = 4,
}

impl Action {
    pub fn label(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Receive => "receive",
        }
    }
}

/// Why a policy document was refused; names the statement and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    statements: Vec<Statement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Statement {
    effect: String,
    actions: Vec<String>,
    topics: Vec<String>,
}

/// A parsed, checked document: statements with their variables still in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    statements: Vec<Parsed>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    allow: bool,
    actions: u8,
    topics: Vec<String>,
}

/// What a connection's variables resolve to.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub client_id: String,
    /// The registered thing, if any: its name and attributes.
    pub thing: Option<(String, BTreeMap<String, String>)>,
    /// Certificate subject fields by short name (`cn`, `o`, `ou`, `c`, `st`, `l`).
    pub cert: BTreeMap<String, String>,
}

const CERT_FIELDS: [&str; 6] = ["cn", "o", "ou", "c", "st", "l"];

/// Checks that `name` is a known variable.
fn known_variable(name: &str) -> bool {
    name == "clientid"
        || name == "thing.name"
        || name
            .strip_prefix("thing.attributes[")
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|a| !a.is_empty())
        || name.strip_prefix("cert.subject.").is_some_and(|f| CERT_FIELDS.contains(&f))
}

fn resolve<'a>(name: &str, s: &'a Subject) -> Option<&'a str> {
    if name == "clientid" {
        return Some(&s.client_id);
    }
    if name == "thing.name" {
        return s.thing.as_ref().map(|(n, _)| n.as_str());
    }
    if let Some(a) = name.strip_prefix("thing.attributes[").and_then(|r| r.strip_suffix(']')) {
        return s.thing.as_ref().and_then(|(_, attrs)| attrs.get(a)).map(String::as_str);
    }
    name.strip_prefix("cert.subject.").and_then(|f| s.cert.get(f)).map(String::as_str)
}

/// Substitutes variables; `None` if one has no usable value.
fn substitute(pattern: &str, s: &Subject) -> Option<String> {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}')? + i;
        let v = resolve(&rest[i + 2..end], s)?;
        if v.is_empty() || v.contains(['+', '#', '\0']) {
            return None;
        }
        out.push_str(v);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Checks a pattern's variables and filter syntax.
fn check_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > 1024 {
        return Err("a topic pattern must be 1 to 1024 bytes".into());
    }
    let mut rest = p;
    let mut plain = String::new();
    while let Some(i) = rest.find("${") {
        plain.push_str(&rest[..i]);
        let end = rest[i..].find('}').ok_or("unclosed ${")? + i;
        let name = &rest[i + 2..end];
        if !known_variable(name) {
            return Err(format!("unknown variable ${{{name}}}"));
        }
        plain.push('v');
        rest = &rest[end + 1..];
    }
    plain.push_str(rest);
    let levels: Vec<&str> = plain.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        let bad = (l.contains('#') && (*l != "#" || i + 1 != levels.len()))
            || (l.contains('+') && *l != "+");
        if bad {
            return Err(format!("{p:?} is not a valid topic filter"));
        }
    }
    Ok(())
}

impl Policy {
    /// Parses and checks a document; the error names the statement and field.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(PolicyError(format!("document: at most {MAX_DOCUMENT_BYTES} bytes")));
        }
        let doc: Document =
            serde_json::from_str(text).map_err(|e| PolicyError(format!("document: {e}")))?;
        if doc.statements.is_empty() {
            return Err(PolicyError("statements: at least one is required".into()));
        }
        let mut statements = Vec::new();
        for (i, s) in doc.statements.into_iter().enumerate() {
            let at = |f: &str, m: String| PolicyError(format!("statements[{i}].{f}: {m}"));
            let allow = match s.effect.as_str() {
                "allow" => true,
                "deny" => false,
                other => return Err(at("effect", format!("{other:?} is not allow or deny"))),
            };
            if s.actions.is_empty() {
                return Err(at("actions", "at least one is required".into()));
            }
            let mut actions = 0u8;
            for a in &s.actions {
                actions |= match a.as_str() {
                    "publish" => Action::Publish as u8,
                    "subscribe" => Action::Subscribe as u8,
                    "receive" => Action::Receive as u8,
                    other => {
                        return Err(at(
                            "actions",
                            format!("{other:?} is not publish, subscribe or receive"),
                        ))
                    }
                };
            }
            if s.topics.is_empty() {
                return Err(at("topics", "at least one is required".into()));
            }
            for t in &s.topics {
                check_pattern(t).map_err(|m| at("topics", m))?;
            }
            statements.push(Parsed { allow, actions, topics: s.topics });
        }
        Ok(Policy { statements })
    }

    /// The device default: its own topics only.
    pub fn device_default() -> Policy {
        Policy {
            statements: vec![Parsed {
                allow: true,
                actions: Action::Publish as u8 | Action::Subscribe as u8 | Action::Receive as u8,
                topics: vec!["devices/${clientid}/#".into(), "$aws/things/${clientid}/#".into()],
            }],
        }
    }

    /// A fleet provisioning claim: the provisioning requests and their answers only.
    pub fn claim() -> Policy {
        let requests = [
            "$aws/certificates/create/json",
            "$aws/certificates/create-from-csr/json",
            "$aws/provisioning-templates/+/provision/json",
        ];
        Policy {
            statements: vec![
                Parsed {
                    allow: true,
                    actions: Action::Publish as u8,
                    topics: requests.iter().map(|t| t.to_string()).collect(),
                },
                Parsed {
                    allow: true,
                    actions: Action::Subscribe as u8 | Action::Receive as u8,
                    topics: requests.iter().map(|t| format!("{t}/+")).collect(),
                },
            ],
        }
    }

    /// Everything allowed (anonymous clients of the quick-start configuration).
    pub fn allow_all() -> Policy {
        Policy { statements: vec![Parsed { allow: true, actions: 7, topics: vec!["#".into()] }] }
    }
}

/// One compiled rule: actions and filter levels.
#[derive(Debug, Clone)]
struct Rule {
    actions: u8,
    levels: Vec<String>,
}

/// A connection's compiled policies.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

impl Rules {
    /// Compiles `policies` for `subject`.
    pub fn compile<'a>(policies: impl IntoIterator<Item = &'a Policy>, s: &Subject) -> Rules {
        let mut r = Rules::default();
        for p in policies {
            for st in &p.statements {
                for t in &st.topics {
                    let Some(t) = substitute(t, s) else { continue };
                    let rule = Rule {
                        actions: st.actions,
                        levels: t.split('/').map(String::from).collect(),
                    };
                    if st.allow {
                        r.allow.push(rule);
                    } else {
                        r.deny.push(rule);
                    }
                }
            }
        }
        r
    }

    /// Whether `action` on `topic` (a filter for subscribe) is allowed.
    pub fn allows(&self, action: Action, topic: &str) -> bool {
        let bit = action as u8;
        let check = |rule: &Rule| {
            rule.actions & bit != 0
                && match action {
                    Action::Subscribe => covers(&rule.levels, subscribe_filter(topic)),
                    _ => matches(&rule.levels, topic),
                }
        };
        !self.deny.iter().any(check) && self.allow.iter().any(check)
    }
}

/// The filter part of a shared subscription (`$share/{group}/{filter}`).
fn subscribe_filter(f: &str) -> &str {
    f.strip_prefix("$share/").and_then(|r| r.split_once('/')).map_or(f, |(_, f)| f)
}

/// Whether pattern levels match a topic name.
fn matches(pattern: &[String], topic: &str) -> bool {
    let mut t = topic.split('/');
    for p in pattern {
        match p.as_str() {
            "#" => return true,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            lit => {
                if t.next() != Some(lit) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

/// Whether pattern levels match every topic `filter` matches.
fn covers(pattern: &[String], filter: &str) -> bool {
    let mut f = filter.split('/');
    for p in pattern {
        match p.as_str() {
            "#" => return true,
            "+" => match f.next() {
                Some("#") | None => return false,
                Some(_) => {}
            },
            lit => {
                if f.next() != Some(lit) {
                    return false;
                }
            }
        }
    }
    f.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(id: &str) -> Subject {
        Subject {
            client_id: id.into(),
            thing: Some((id.into(), [("site".to_string(), "s1".to_string())].into())),
            cert: [("cn".to_string(), id.to_string())].into(),
        }
    }

    #[test]
    fn the_default_policy_allows_only_own_topics() {
        let r = Rules::compile([&Policy::device_default()], &subject("d1"));
        assert!(r.allows(Action::Publish, "devices/d1/telemetry"));
        assert!(r.allows(Action::Publish, "$aws/things/d1/shadow/update"));
        assert!(!r.allows(Action::Publish, "devices/d2/telemetry"));
        // `#` also matches the parent level (MQTT 4.7.1.2), but not a longer id.
        assert!(r.allows(Action::Publish, "devices/d1"));
        assert!(!r.allows(Action::Publish, "devices/d10/x"));
        assert!(r.allows(Action::Subscribe, "devices/d1/#"));
        assert!(r.allows(Action::Subscribe, "devices/d1/+/x"));
        assert!(r.allows(Action::Subscribe, "$share/g/devices/d1/cmd"));
        assert!(!r.allows(Action::Subscribe, "devices/+/cmd"));
        assert!(!r.allows(Action::Subscribe, "#"));
        assert!(!r.allows(Action::Receive, "$aws/things/d2/shadow/update/accepted"));
    }

    #[test]
    fn variables_resolve_or_the_pattern_matches_nothing() {
        let p = Policy::parse(
            r#"{"statements":[{"effect":"allow","actions":["publish"],
                "topics":["sites/${thing.attributes[site]}/${thing.name}","c/${cert.subject.cn}","x/${thing.attributes[none]}"]}]}"#,
        )
        .unwrap();
        let r = Rules::compile([&p], &subject("d1"));
        assert!(r.allows(Action::Publish, "sites/s1/d1"));
        assert!(r.allows(Action::Publish, "c/d1"));
        assert!(!r.allows(Action::Publish, "x/"));
        assert!(!r.allows(Action::Publish, "x/anything"));
        // A client id holding a wildcard does not widen the pattern.
        let r = Rules::compile([&Policy::device_default()], &subject("#"));
        assert!(!r.allows(Action::Publish, "devices/x/y"));
    }

    #[test]
    fn deny_wins_and_actions_are_separate() {
        let p = Policy::parse(
            r#"{"statements":[
                {"effect":"allow","actions":["publish","subscribe","receive"],"topics":["fleet/#"]},
                {"effect":"deny","actions":["publish"],"topics":["fleet/admin/+"]},
                {"effect":"deny","actions":["subscribe","receive"],"topics":["fleet/secret/#"]}]}"#,
        )
        .unwrap();
        let r = Rules::compile([&p], &subject("d"));
        assert!(r.allows(Action::Publish, "fleet/a"));
        assert!(!r.allows(Action::Publish, "fleet/admin/x"));
        assert!(r.allows(Action::Receive, "fleet/admin/x"));
        assert!(!r.allows(Action::Subscribe, "fleet/secret/k"));
        // A wider filter is allowed; what it would receive from the denied part is
        // stopped at delivery.
        assert!(r.allows(Action::Subscribe, "fleet/#"));
        assert!(!r.allows(Action::Receive, "fleet/secret/k"));
    }

    #[test]
    fn bad_documents_name_the_field() {
        let e = |t: &str| Policy::parse(t).unwrap_err().0;
        assert!(e("{}").contains("statements"));
        assert!(e(r#"{"statements":[{"effect":"maybe","actions":["publish"],"topics":["a"]}]}"#)
            .contains("statements[0].effect"));
        assert!(e(r#"{"statements":[{"effect":"allow","actions":["connect"],"topics":["a"]}]}"#)
            .contains("statements[0].actions"));
        assert!(e(
            r#"{"statements":[{"effect":"allow","actions":["publish"],"topics":["a/#/b"]}]}"#
        )
        .contains("statements[0].topics"));
        assert!(e(
            r#"{"statements":[{"effect":"allow","actions":["publish"],"topics":["${who}"]}]}"#
        )
        .contains("unknown variable"));
    }

    #[test]
    fn covering_is_stricter_than_overlapping() {
        let lv = |p: &str| p.split('/').map(String::from).collect::<Vec<_>>();
        assert!(covers(&lv("a/+"), "a/b"));
        assert!(covers(&lv("a/+"), "a/+"));
        assert!(!covers(&lv("a/+"), "a/#"));
        assert!(covers(&lv("a/#"), "a/#"));
        assert!(covers(&lv("#"), "x/+/#"));
        assert!(!covers(&lv("a/b"), "a/+"));
        assert!(matches(&lv("a/#"), "a"));
        assert!(!matches(&lv("a/+"), "a"));
    }
}
