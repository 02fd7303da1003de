//! `homeport ctl rules`: create, list, show, update, enable, disable, delete and try
//! rules (`/api/rules`).

use serde_json::{json, Value};

use super::ctl::{call, cell, table, CtlArgs};

#[derive(clap::Subcommand)]
pub enum RuleCmd {
    /// Create a rule; each --republish adds a republish action.
    Create {
        name: String,
        /// The statement: SELECT ... FROM "filter" [WHERE ...], or FOREACH ...
        #[arg(long)]
        sql: String,
        /// emqx (default) or aws.
        #[arg(long)]
        dialect: Option<String>,
        /// Topic template of a republish action (`alerts/${clientid}`).
        #[arg(long)]
        republish: Vec<String>,
        /// QoS of the republish actions.
        #[arg(long, default_value_t = 0)]
        qos: u8,
        #[arg(long)]
        retain: bool,
        /// Payload template of the republish actions (default: the row as JSON).
        #[arg(long)]
        payload: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Store it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// Every rule, with this node's counters.
    List,
    /// One rule.
    Get {
        name: String,
    },
    /// Change a rule's statement or dialect.
    Update {
        name: String,
        #[arg(long)]
        sql: Option<String>,
        #[arg(long)]
        dialect: Option<String>,
    },
    Enable {
        name: String,
    },
    Disable {
        name: String,
    },
    Delete {
        name: String,
    },
    /// What a statement outputs for one message (nothing stored, no action run).
    Test {
        #[arg(long)]
        sql: String,
        #[arg(long)]
        dialect: Option<String>,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value = "")]
        payload: String,
        #[arg(long)]
        clientid: Option<String>,
    },
}

fn rule_rows(rules: &[Value]) -> Vec<Vec<String>> {
    rules
        .iter()
        .map(|r| {
            let m = &r["metrics"];
            vec![
                cell(&r["name"]),
                cell(&r["enabled"]),
                cell(&r["dialect"]),
                format!("{}/{}/{}", cell(&m["matched"]), cell(&m["passed"]), cell(&m["failed"])),
                cell(&r["sql"]),
            ]
        })
        .collect()
}

const HEAD: [&str; 5] = ["RULE", "ENABLED", "DIALECT", "MATCHED/PASSED/FAILED", "SQL"];

pub fn run(a: &CtlArgs, c: &RuleCmd) -> anyhow::Result<(Value, String)> {
    Ok(match c {
        RuleCmd::Create {
            name,
            sql,
            dialect,
            republish,
            qos,
            retain,
            payload,
            description,
            disabled,
        } => {
            let actions: Vec<Value> = republish
                .iter()
                .map(|t| json!({"republish": {"topic": t, "qos": qos, "retain": retain, "payload": payload}}))
                .collect();
            let body = json!({"name": name, "sql": sql, "dialect": dialect, "actions": actions,
                "description": description, "enabled": !disabled});
            let v = call(a, "POST", "/api/rules", Some(&body))?;
            (v, format!("created rule {name}"))
        }
        RuleCmd::List => {
            let v = call(a, "GET", "/api/rules", None)?;
            let t = table(
                &HEAD,
                &rule_rows(v["rules"].as_array().map(Vec::as_slice).unwrap_or_default()),
            );
            (v, t)
        }
        RuleCmd::Get { name } => {
            let v = call(a, "GET", &format!("/api/rules/{name}"), None)?;
            let t = table(&HEAD, &rule_rows(std::slice::from_ref(&v)));
            (v, t)
        }
        RuleCmd::Update { name, sql, dialect } => {
            let v = call(
                a,
                "PUT",
                &format!("/api/rules/{name}"),
                Some(&json!({"sql": sql, "dialect": dialect})),
            )?;
            (v, format!("updated rule {name}"))
        }
        RuleCmd::Enable { name } | RuleCmd::Disable { name } => {
            let on = matches!(c, RuleCmd::Enable { .. });
            let v = call(a, "PUT", &format!("/api/rules/{name}"), Some(&json!({"enabled": on})))?;
            (v, format!("rule {name} {}", if on { "enabled" } else { "disabled" }))
        }
        RuleCmd::Delete { name } => {
            call(a, "DELETE", &format!("/api/rules/{name}"), None)?;
            (Value::Null, format!("deleted rule {name}"))
        }
        RuleCmd::Test { sql, dialect, topic, payload, clientid } => {
            let body = json!({"sql": sql, "dialect": dialect, "topic": topic, "payload": payload,
                "clientid": clientid});
            let v = call(a, "POST", "/api/rules/test", Some(&body))?;
            let rows = v["rows"].as_array().map(Vec::as_slice).unwrap_or_default();
            let t = if rows.is_empty() {
                "no rows (WHERE was not true)".to_string()
            } else {
                rows.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n")
            };
            (v, t)
        }
    })
}
