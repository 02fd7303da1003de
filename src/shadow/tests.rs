//! Unit tests of the shadow document rules (no I/O).

use serde_json::{json, Value};

use super::document::*;

const LIMITS: Limits = Limits { max_document_bytes: 8192 };

fn req(v: Value) -> UpdateRequest {
    parse_update(v.to_string().as_bytes(), LIMITS).unwrap()
}

fn rejected(v: &[u8]) -> Rejection {
    parse_update(v, LIMITS).unwrap_err()
}

fn apply(s: &Shadow, v: Value, now: u64) -> Result<Updated, Rejection> {
    s.update(s.version > 0, &req(v), now, LIMITS, true)
}

#[test]
fn partial_updates_deep_merge_and_stamp_leaves() {
    let s = Shadow::empty(0);
    let u = apply(
        &s,
        json!({"state": {"reported": {"light": {"on": true, "lvl": 3}, "fw": "1.0"}}}),
        100,
    )
    .unwrap();
    assert_eq!(u.shadow.version, 1);
    let u = apply(&u.shadow, json!({"state": {"reported": {"light": {"lvl": 5}}}}), 200).unwrap();
    let s = u.shadow;
    assert_eq!(s.version, 2);
    assert_eq!(s.state["reported"], json!({"light": {"on": true, "lvl": 5}, "fw": "1.0"}));
    assert_eq!(s.metadata["reported"]["light"]["on"], json!({"timestamp": 100}));
    assert_eq!(s.metadata["reported"]["light"]["lvl"], json!({"timestamp": 200}));
    // The accepted reply carries the request's state and metadata for what it wrote.
    assert_eq!(u.accepted["state"], json!({"reported": {"light": {"lvl": 5}}}));
    assert_eq!(u.accepted["metadata"], json!({"reported": {"light": {"lvl": {"timestamp": 200}}}}));
    assert_eq!(u.accepted["version"], 2);
    assert_eq!(u.accepted["timestamp"], 200);
}

#[test]
fn null_deletes_a_key_its_metadata_or_a_whole_section() {
    let s =
        apply(&Shadow::empty(0), json!({"state": {"desired": {"a": 1, "b": {"c": 2, "d": 3}}}}), 1)
            .unwrap()
            .shadow;
    let s =
        apply(&s, json!({"state": {"desired": {"a": null, "b": {"c": null}}}}), 2).unwrap().shadow;
    assert_eq!(s.state["desired"], json!({"b": {"d": 3}}));
    assert_eq!(s.metadata["desired"], json!({"b": {"d": {"timestamp": 1}}}));
    let s = apply(&s, json!({"state": {"desired": null}}), 3).unwrap().shadow;
    assert!(s.state.get("desired").is_none());
    assert!(s.metadata.get("desired").is_none());
}

#[test]
fn arrays_replace_whole_with_metadata_per_element() {
    let s = apply(&Shadow::empty(0), json!({"state": {"reported": {"l": [1, 2, 3]}}}), 1)
        .unwrap()
        .shadow;
    let s = apply(&s, json!({"state": {"reported": {"l": [9]}}}), 2).unwrap().shadow;
    assert_eq!(s.state["reported"]["l"], json!([9]));
    assert_eq!(s.metadata["reported"]["l"], json!([{"timestamp": 2}]));
}

#[test]
fn version_must_match_when_given() {
    let s = apply(&Shadow::empty(0), json!({"state": {"reported": {"a": 1}}}), 1).unwrap().shadow;
    let err =
        apply(&s, json!({"state": {"reported": {"a": 2}}, "version": 7, "clientToken": "t1"}), 2)
            .unwrap_err();
    assert_eq!((err.code, err.message.as_str()), (409, "Version conflict"));
    assert_eq!(err.client_token.as_deref(), Some("t1"));
    assert_eq!(err.payload(2)["clientToken"], "t1");
    let ok = apply(&s, json!({"state": {"reported": {"a": 2}}, "version": 1}), 2).unwrap();
    assert_eq!(ok.shadow.version, 2);
}

#[test]
fn delta_holds_differing_desired_keys_never_reported_only_ones() {
    let s = apply(
        &Shadow::empty(0),
        json!({"state": {"reported": {"color": "red", "temp": 20, "extra": 1, "cfg": {"a": 1, "b": 2}}}}),
        1,
    )
    .unwrap()
    .shadow;
    let u = apply(
        &s,
        json!({"state": {"desired": {"color": "green", "temp": 20, "cfg": {"a": 1, "b": 3}, "new": true}},
               "clientToken": "c"}),
        2,
    )
    .unwrap();
    let want = json!({"color": "green", "cfg": {"b": 3}, "new": true});
    let delta = u.delta.expect("desired differs");
    assert_eq!(delta["state"], want);
    assert_eq!(delta["metadata"]["color"], json!({"timestamp": 2}));
    assert_eq!(delta["metadata"]["cfg"], json!({"b": {"timestamp": 2}}));
    assert_eq!(delta["version"], 2);
    assert_eq!(delta["clientToken"], "c");
    let got = u.shadow.get_response(5, Some("g"));
    assert_eq!(got["state"]["delta"], want);
    assert_eq!(got["clientToken"], "g");
    // A reported update that matches desired leaves only the rest; it publishes no delta.
    let u = apply(&u.shadow, json!({"state": {"reported": {"color": "green"}}}), 3).unwrap();
    assert!(u.delta.is_none());
    assert_eq!(Value::Object(u.shadow.delta()), json!({"cfg": {"b": 3}, "new": true}));
    // Desired equal to reported: no delta message.
    let u = apply(&u.shadow, json!({"state": {"desired": {"temp": 20}}}), 4).unwrap();
    assert!(u.delta.is_none());
    // A get with no difference has no delta node.
    let s =
        apply(&Shadow::empty(0), json!({"state": {"desired": {"a": 1}, "reported": {"a": 1}}}), 1)
            .unwrap()
            .shadow;
    assert!(s.get_response(1, None)["state"].get("delta").is_none());
}

#[test]
fn documents_carry_previous_and_current() {
    let first = apply(&Shadow::empty(0), json!({"state": {"reported": {"a": 1}}}), 1).unwrap();
    assert!(first.documents.as_ref().unwrap().get("previous").is_none());
    assert_eq!(first.documents.as_ref().unwrap()["current"]["version"], 1);
    let second = apply(&first.shadow, json!({"state": {"reported": {"a": 2}}}), 2).unwrap();
    assert_eq!(second.documents.as_ref().unwrap()["previous"]["state"]["reported"]["a"], 1);
    assert_eq!(second.documents.as_ref().unwrap()["previous"]["version"], 1);
    assert_eq!(second.documents.as_ref().unwrap()["current"]["state"]["reported"]["a"], 2);
    assert_eq!(second.documents.as_ref().unwrap()["current"]["version"], 2);
}

#[test]
fn bad_requests_get_aws_codes_and_messages() {
    assert_eq!(rejected(b"{not json").message, "Invalid JSON");
    assert_eq!(rejected(b"[1]").code, 400);
    assert_eq!(rejected(b"{}").message, "Missing required node: state");
    assert_eq!(rejected(br#"{"state": 1}"#).message, "State node must be an object");
    assert_eq!(rejected(br#"{"state": {"desired": 1}}"#).message, "Desired node must be an object");
    assert_eq!(
        rejected(br#"{"state": {"reported": "x"}}"#).message,
        "Reported node must be an object"
    );
    assert_eq!(
        rejected(br#"{"state": {"delta": {}}}"#).message,
        "State contains an invalid node: 'delta'"
    );
    assert_eq!(
        rejected(br#"{"state": {"reported": {}}, "version": "1"}"#).message,
        "Invalid version"
    );
    let long = format!(r#"{{"state": {{"reported": {{}}}}, "clientToken": "{}"}}"#, "x".repeat(65));
    assert_eq!(rejected(long.as_bytes()).code, 400);
    let ok = format!(r#"{{"state": {{"reported": {{}}}}, "clientToken": "{}"}}"#, "x".repeat(64));
    assert!(parse_update(ok.as_bytes(), LIMITS).is_ok());
    assert_eq!(rejected(b"\xff\xfe").code, 415);
    // Six levels are allowed, seven are not.
    let six = json!({"state": {"desired": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}});
    assert!(parse_update(six.to_string().as_bytes(), LIMITS).is_ok());
    let seven = json!({"state": {"desired": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}});
    let err = rejected(seven.to_string().as_bytes());
    assert_eq!(err.message, "JSON contains too many levels of nesting; maximum is 6");
    // The token is echoed on rejections that come after it was read.
    let err = rejected(br#"{"clientToken": "tok"}"#);
    assert_eq!(err.client_token.as_deref(), Some("tok"));
}

#[test]
fn size_limits_give_413() {
    let small = Limits { max_document_bytes: 300 };
    let big = json!({"state": {"reported": {"blob": "x".repeat(400)}}}).to_string();
    assert_eq!(parse_update(big.as_bytes(), small).unwrap_err().code, 413);
    // A request within the limit whose result would exceed it.
    let s = Shadow::empty(0);
    let mut s = s
        .update(
            false,
            &parse_update(
                br#"{"state":{"reported":{"a":"0123456789012345678901234567890123456789"}}}"#,
                small,
            )
            .unwrap(),
            1,
            small,
            true,
        )
        .unwrap()
        .shadow;
    let mut last = Ok(());
    for i in 0..10 {
        let r = format!(
            r#"{{"state":{{"reported":{{"k{i}":"0123456789012345678901234567890123456789"}}}}}}"#
        );
        match s.update(true, &parse_update(r.as_bytes(), small).unwrap(), 1, small, true) {
            Ok(u) => s = u.shadow,
            Err(e) => {
                last = Err(e);
                break;
            }
        }
    }
    assert_eq!(last.unwrap_err().code, 413);
    assert!(s.to_stored().len() <= 300);
}

#[test]
fn stored_form_round_trips() {
    let s = apply(
        &Shadow::empty(0),
        json!({"state": {"desired": {"a": [1, {"b": 2}]}, "reported": {"x": null, "y": "z"}}}),
        9,
    )
    .unwrap()
    .shadow;
    let back = Shadow::from_stored(s.version, &s.to_stored()).unwrap();
    assert_eq!(back, s);
    assert_eq!(s.state["reported"], json!({"y": "z"}));
    assert_eq!(s.metadata["desired"]["a"], json!([{"timestamp": 9}, {"b": {"timestamp": 9}}]));
}

#[test]
fn get_and_delete_tokens() {
    assert_eq!(parse_token(b"").unwrap(), None);
    assert_eq!(parse_token(br#"{"clientToken": "abc"}"#).unwrap().as_deref(), Some("abc"));
    assert_eq!(parse_token(b"nope").unwrap_err().message, "Invalid JSON");
    let r = Rejection::not_found("thing1", "");
    assert_eq!((r.code, r.message.as_str()), (404, "No shadow exists with name: 'thing1'"));
    assert_eq!(Rejection::not_found("thing1", "cfg").message, "No shadow exists with name: 'cfg'");
}
