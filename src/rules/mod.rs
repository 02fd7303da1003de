//! The rule engine: rule SQL (parsing, planning and evaluating rules over MQTT messages
//! and broker events: pure, no I/O), the definitions kept in the meta group
//! ([`store`]), and the node's engine that runs them on the publish path ([`engine`]).
//! Both
//! dialects users bring parse with one parser ([`parser`]) and compile to one plan
//! ([`eval::Plan`]); they differ in how names resolve and when WHERE runs:
//!
//! - [`Dialect::Emqx`] (default): bare names are message columns (`clientid`, `topic`,
//!   `payload`, ...), `payload.a.b` reads the JSON payload, `arr[1]` is 1-based, SELECT
//!   runs first so WHERE sees its aliases, `FROM "t/#", "a/+"`.
//! - [`Dialect::Aws`]: bare names are top-level payload fields, `topic(n)`, `clientid()`
//!   and `timestamp()` are functions, `get(arr, 0)` and `arr[0]` are 0-based, WHERE runs
//!   before SELECT and sees no aliases.
//!
//! A missing field is Undefined: a condition on it is false and it is left out of the
//! output. The payload is JSON-decoded at most once per message ([`Input`]), however
//! many rules read it.

pub mod ast;
pub mod engine;
pub mod eval;
pub mod functions;
pub mod index;
pub mod lexer;
pub mod parser;
pub mod store;
pub mod template;
pub mod value;

use std::cell::OnceCell;

pub use eval::Plan;
pub use value::Value;

/// Which vendor's conventions a rule is written in.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    #[default]
    Emqx,
    Aws,
}

/// A rule that cannot be compiled, or a row that cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    /// Where in the statement (1-based line and column, byte offset) and what is wrong.
    #[error("line {line}, column {column}: {message}")]
    At { offset: usize, line: usize, column: usize, message: String },
    /// Evaluation failed (a function given values it cannot take, in the EMQX dialect).
    #[error("{0}")]
    Eval(String),
}

impl RuleError {
    pub fn at(sql: &str, offset: usize, message: String) -> RuleError {
        let offset = offset.min(sql.len());
        let before = &sql.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
        RuleError::At { offset, line, column, message }
    }

    pub fn syntax(sql: &str, offset: usize, expected: &str, found: &str) -> RuleError {
        RuleError::at(sql, offset, format!("expected {expected}, found {found}"))
    }
}

/// Reads a device's shadow for `get_thing_shadow(thing[, name])`: the document as JSON.
pub trait ShadowReader {
    fn shadow(&self, thing: &str, name: Option<&str>) -> Option<serde_json::Value>;
}

/// What a rule reads: a message (or an event) and its columns. The payload's JSON is
/// decoded on first use and kept for every other rule evaluated on the same input.
pub struct Input<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub clientid: &'a str,
    pub username: Option<&'a str>,
    pub qos: u8,
    pub retain: bool,
    /// The message id (hex), as EMQX's `id`.
    pub id: &'a str,
    /// When the message entered the broker, ms since the epoch.
    pub timestamp_ms: i64,
    pub peerhost: Option<&'a str>,
    pub node: &'a str,
    /// MQTT 5 user properties, in order.
    pub user_props: &'a [(String, String)],
    /// An event's own columns (`reason`, `peername`, ...).
    pub extra: &'a [(&'a str, Value)],
    /// The time `now_*` functions see, ms since the epoch.
    pub now_ms: i64,
    pub shadows: Option<&'a dyn ShadowReader>,
    json: OnceCell<Option<serde_json::Value>>,
}

impl<'a> Input<'a> {
    /// A message on `topic`; the other columns are empty until set.
    pub fn message(topic: &'a str, payload: &'a [u8]) -> Input<'a> {
        Input {
            topic,
            payload,
            clientid: "",
            username: None,
            qos: 0,
            retain: false,
            id: "",
            timestamp_ms: 0,
            peerhost: None,
            node: "",
            user_props: &[],
            extra: &[],
            now_ms: 0,
            shadows: None,
            json: OnceCell::new(),
        }
    }

    /// The payload as JSON, decoded once; None if it is not JSON.
    pub fn json(&self) -> Option<&serde_json::Value> {
        self.json.get_or_init(|| serde_json::from_slice(self.payload).ok()).as_ref()
    }

    /// Whether the payload has been decoded (for tests of the decode-once promise).
    pub fn decoded(&self) -> bool {
        self.json.get().is_some()
    }
}

/// A compiled rule: its statement, dialect and plan.
#[derive(Debug, Clone)]
pub struct Rule {
    pub sql: String,
    pub dialect: Dialect,
    pub plan: Plan,
}

impl Rule {
    /// Parses and plans `sql`; errors point at the position.
    pub fn compile(sql: &str, dialect: Dialect) -> Result<Rule, RuleError> {
        let st = parser::parse(sql)?;
        let plan = Plan::new(&st, dialect);
        Ok(Rule { sql: sql.to_string(), dialect, plan })
    }

    /// The topic filters and event sources the rule reads.
    pub fn sources(&self) -> &[String] {
        &self.plan.from
    }

    /// The rows `input` produces: none when WHERE is not true; one for SELECT; one per
    /// element for FOREACH.
    pub fn eval(&self, input: &Input<'_>) -> Result<Vec<Value>, RuleError> {
        self.plan.eval(input)
    }
}
