//! The golden corpus of rule SQL (tests/data/rules_corpus.json): rules from EMQX's and
//! AWS IoT's documentation, each with an input message and the rows it must produce.

use homeport::rules::{Dialect, Input, Rule, Value};
use serde_json::Value as Json;

#[test]
fn every_rule_of_the_corpus_gives_its_rows() {
    let corpus: Vec<Json> =
        serde_json::from_str(include_str!("data/rules_corpus.json")).expect("corpus is JSON");
    assert!(corpus.len() >= 30, "{} cases", corpus.len());
    let (mut emqx, mut aws) = (0, 0);
    let mut failures = Vec::new();
    for case in &corpus {
        let doc = case["doc"].as_str().unwrap();
        let sql = case["sql"].as_str().unwrap();
        let dialect = match case["dialect"].as_str() {
            Some("aws") => {
                aws += 1;
                Dialect::Aws
            }
            _ => {
                emqx += 1;
                Dialect::Emqx
            }
        };
        let rule = Rule::compile(sql, dialect).unwrap_or_else(|e| panic!("{doc}: {sql}: {e}"));
        let payload = match (&case["payload"], &case["json"]) {
            (Json::String(s), _) => s.clone().into_bytes(),
            (_, j) if !j.is_null() => j.to_string().into_bytes(),
            _ => Vec::new(),
        };
        let props: Vec<(String, String)> = case["user_props"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
                    .collect()
            })
            .unwrap_or_default();
        let extra_owned: Vec<(String, Value)> = case["extra"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), Value::from_json(v))).collect())
            .unwrap_or_default();
        let extra: Vec<(&str, Value)> =
            extra_owned.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let topic = case["topic"].as_str().unwrap();
        let mut input = Input::message(topic, &payload);
        input.clientid = "c1";
        input.username = case["username"].as_str();
        input.qos = case["qos"].as_u64().unwrap_or(0) as u8;
        input.retain = case["retain"].as_bool().unwrap_or(false);
        input.timestamp_ms = case["timestamp"].as_i64().unwrap_or(0);
        input.user_props = &props;
        input.extra = &extra;
        let rows: Vec<Json> = match rule.eval(&input) {
            Ok(rows) => rows.iter().filter_map(Value::to_json).collect(),
            Err(e) => {
                failures.push(format!("{doc}: {e}"));
                continue;
            }
        };
        let want = case["rows"].as_array().unwrap();
        if &rows != want {
            failures.push(format!("{doc}:\n  sql:  {sql}\n  got:  {rows:?}\n  want: {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n")
    );
    assert!(emqx >= 15 && aws >= 15, "both dialects: {emqx} EMQX, {aws} AWS");
}
