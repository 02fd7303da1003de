//! `/api/openapi.json`: the admin API's OpenAPI document is served, lists every endpoint,
//! and what the endpoints answer has exactly the fields their documented schemas name.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};

fn v(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON ({e}): {body}"))
}

/// The property names of a component schema, following `allOf` (flattened structs).
fn props(doc: &Value, name: &str) -> BTreeSet<String> {
    let schema = &doc["components"]["schemas"][name];
    assert!(schema.is_object(), "schema {name} documented");
    let mut out = BTreeSet::new();
    let mut parts = vec![schema.clone()];
    while let Some(s) = parts.pop() {
        if let Some(r) = s["$ref"].as_str() {
            let n = r.rsplit('/').next().unwrap();
            parts.push(doc["components"]["schemas"][n].clone());
        }
        if let Some(all) = s["allOf"].as_array() {
            parts.extend(all.iter().cloned());
        }
        if let Some(p) = s["properties"].as_object() {
            out.extend(p.keys().cloned());
        }
    }
    out
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_lists_every_endpoint_and_matches_the_answers() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let a = node.admin_addr.unwrap();
    let (status, body) = http_get(a, "/api/openapi.json").await;
    assert_eq!(status, 200);
    let doc = v(&body);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);

    let want = [
        ("/metrics", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/api/things", "get"),
        ("/api/things", "post"),
        ("/api/things/{thing}", "get"),
        ("/api/things/{thing}", "patch"),
        ("/api/things/{thing}", "delete"),
        ("/api/things/{thing}/shadow", "get"),
        ("/api/things/{thing}/shadow", "post"),
        ("/api/things/{thing}/shadow", "delete"),
        ("/api/things/{thing}/jobs", "get"),
        ("/api/groups", "get"),
        ("/api/groups", "post"),
        ("/api/groups/{group}", "get"),
        ("/api/groups/{group}", "delete"),
        ("/api/groups/{group}/things/{thing}", "put"),
        ("/api/groups/{group}/things/{thing}", "delete"),
        ("/api/jobs", "get"),
        ("/api/jobs", "post"),
        ("/api/jobs/{id}", "get"),
        ("/api/jobs/{id}/cancel", "post"),
        ("/api/jobs/{id}/executions", "get"),
        ("/api/things/{thing}/credentials", "get"),
        ("/api/things/{thing}/credentials", "post"),
        ("/api/things/{thing}/credentials/{id}", "delete"),
        ("/api/policies", "get"),
        ("/api/policies/{name}", "get"),
        ("/api/policies/{name}", "put"),
        ("/api/policies/{name}", "delete"),
        ("/api/policies/{name}/attachments/{kind}/{target}", "put"),
        ("/api/policies/{name}/attachments/{kind}/{target}", "delete"),
        ("/api/attachments/{kind}/{target}", "get"),
        ("/api/cas", "get"),
        ("/api/cas", "post"),
        ("/api/cas/{id}", "patch"),
        ("/api/certificates", "get"),
        ("/api/certificates", "post"),
        ("/api/certificates/{id}", "get"),
        ("/api/certificates/{id}", "patch"),
        ("/api/provisioning-templates", "get"),
        ("/api/provisioning-templates/{name}", "get"),
        ("/api/provisioning-templates/{name}", "put"),
        ("/api/provisioning-templates/{name}", "delete"),
        ("/api/tokens", "get"),
        ("/api/tokens", "post"),
        ("/api/tokens/{id}", "delete"),
        ("/api/audit", "get"),
        ("/api/cluster", "get"),
        ("/api/cluster/members", "get"),
        ("/api/cluster/shards", "get"),
        ("/api/cluster/digests", "get"),
        ("/api/cluster/init", "post"),
        ("/api/cluster/join", "post"),
        ("/api/cluster/members/{id}", "delete"),
        ("/api/cluster/members/{id}/drain", "post"),
        ("/api/cluster/members/{id}/undrain", "post"),
        ("/api/cluster/faults", "get"),
        ("/api/cluster/faults", "put"),
        ("/api/cluster/faults", "delete"),
        ("/api/rules", "get"),
        ("/api/rules", "post"),
        ("/api/rules/test", "post"),
        ("/api/rules/{rule}", "get"),
        ("/api/rules/{rule}", "put"),
        ("/api/rules/{rule}", "delete"),
    ];
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| ops.as_object().unwrap().keys().map(move |m| (p.clone(), m.clone())))
        .filter(|(_, m)| m != "parameters")
        .collect();
    let want: BTreeSet<(String, String)> =
        want.iter().map(|(p, m)| (p.to_string(), m.to_string())).collect();
    assert_eq!(documented, want);

    // Answers carry the documented fields, no more and no fewer.
    let thing = json!({"thingName": "doc-1", "attributes": {"k": "v"}}).to_string();
    let (status, body) = http(a, "POST", "/api/things", &thing).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(keys(&v(&body)), props(&doc, "ThingView"));
    let (_, body) = http(a, "POST", "/api/groups", r#"{"groupName":"g1"}"#).await;
    assert_eq!(keys(&v(&body)), props(&doc, "GroupCreated"));
    http(a, "PUT", "/api/groups/g1/things/doc-1", "").await;
    let (_, body) = http_get(a, "/api/groups/g1").await;
    assert_eq!(keys(&v(&body)), props(&doc, "GroupView"));
    let (_, body) = http_get(a, "/api/things?limit=1").await;
    assert_eq!(keys(&v(&body)), props(&doc, "ThingList"));

    let policy = json!({"document": {"statements": [
        {"effect": "allow", "actions": ["publish"], "topics": ["a/#"]}]}});
    let (status, body) = http(a, "PUT", "/api/policies/p1", &policy.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&v(&body)), props(&doc, "PolicyView"));
    let (_, body) = http_get(a, "/api/policies").await;
    assert_eq!(keys(&v(&body)), props(&doc, "PolicyList"));
    http(a, "PUT", "/api/policies/p1/attachments/thing/doc-1", "").await;
    let (_, body) = http_get(a, "/api/attachments/thing/doc-1").await;
    assert_eq!(keys(&v(&body)), props(&doc, "AttachedPolicies"));
    let (status, body) =
        http(a, "POST", "/api/things/doc-1/credentials", r#"{"type":"secret"}"#).await;
    assert_eq!(status, 201, "{body}");
    let mut shown = props(&doc, "CredentialView");
    // Only public keys have an algorithm; this one has no expiry.
    shown.remove("algorithm");
    shown.remove("expiresAt");
    assert_eq!(keys(&v(&body)), shown);

    let job = json!({"jobId": "j1", "document": {"op": "x"}, "targets": ["doc-1"]}).to_string();
    let (status, body) = http(a, "POST", "/api/jobs", &job).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(keys(&v(&body)), props(&doc, "JobCreated"));
    let (_, body) = http_get(a, "/api/jobs/j1").await;
    let described = v(&body);
    assert_eq!(keys(&described), props(&doc, "JobDescription"));
    assert_eq!(keys(&described["job"]), props(&doc, "JobDetail"));
    assert_eq!(keys(&described["job"]["jobProcessDetails"]), props(&doc, "JobProcessDetails"));

    let (status, body) = http(a, "POST", "/api/things", r#"{"thingName": 5}"#).await;
    assert_eq!(status, 400);
    let err = v(&body);
    assert_eq!(keys(&err), props(&doc, "ApiError"));
    assert!(err["message"].as_str().unwrap().starts_with("thingName:"), "{err}");
    let (status, body) = http(a, "POST", "/api/jobs", "{not json").await;
    assert_eq!(status, 400);
    assert_eq!(v(&body)["message"], "body: not valid JSON");
    node.shutdown().await.unwrap();
}
