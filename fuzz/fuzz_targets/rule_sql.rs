//! Fuzz target for rule SQL: arbitrary text through the parser, and whatever parses is
//! printed and parsed back to the same tree, compiled in both dialects and evaluated on
//! a JSON and a non-JSON message. Nothing may panic.
#![no_main]

use homeport::rules::{parser, Dialect, Input, Rule, RuleError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let Ok(st) = parser::parse(sql) else { return };
    let printed = st.to_string();
    match parser::parse(&printed) {
        Ok(back) => assert_eq!(back, st, "{printed}"),
        // Printing parenthesises every operation: a long chain may nest too deep.
        Err(RuleError::At { message, .. }) if message.contains("at most") => {}
        Err(e) => panic!("printed statement does not parse: {printed}: {e}"),
    }
    for dialect in [Dialect::Emqx, Dialect::Aws] {
        let Ok(rule) = Rule::compile(sql, dialect) else { continue };
        for payload in [&br#"{"a": 1, "b": [1, "x", {"c": null}], "s": "text", "t": 1.5}"#[..], b"\xff raw"] {
            let mut input = Input::message("t/a/b", payload);
            input.clientid = "c1";
            let _ = rule.eval(&input);
        }
    }
});
