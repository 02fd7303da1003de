//! Admin API access control through real HTTP: bearer tokens with roles (a root token
//! from the configuration, tokens created and revoked with `homeport ctl`), 401/403 as
//! JSON, open health and metrics endpoints, and the audit log of mutating requests.

mod common;

use std::process::Command;

use common::*;
use homeport::node::Node;
use serde_json::{json, Value};

async fn call(
    node: &Node,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let (status, text) =
        http_as(node.admin_addr.unwrap(), token, method, path, &body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn ctl(node: &Node, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["ctl".to_string(), "--admin".into(), node.admin_addr.unwrap().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let token = token.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_homeport"))
            .args(&all)
            .env("HOMEPORT_TOKEN", token)
            .output()
            .expect("binary runs")
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_guard_the_api_and_every_change_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (root, hash) = homeport::auth::tokens::new_root_token().unwrap();
    let mut cfg = config(dir.path());
    cfg.admin.require_token = true;
    cfg.admin.root_token_sha256 = Some(hash);
    let node = Node::start(cfg).await.unwrap();

    // Open endpoints need no token; everything else does, and says so in JSON.
    assert_eq!(http_get(node.admin_addr.unwrap(), "/healthz").await.0, 200);
    assert_eq!(http_get(node.admin_addr.unwrap(), "/metrics").await.0, 200);
    let (s, b) = call(&node, None, "GET", "/api/things", json!({})).await;
    assert_eq!((s, b["code"].as_str()), (401, Some("unauthorized")));
    let (s, _) =
        call(&node, Some("hpt_nope.nope"), "POST", "/api/things", json!({"thingName": "x"})).await;
    assert_eq!(s, 401);

    // Tokens come from the CLI with the root token; each is shown once.
    let (ok, out, err) =
        ctl(&node, &root, &["--json", "tokens", "create", "dashboard", "--role", "viewer"]).await;
    assert!(ok, "{err}");
    let viewer =
        serde_json::from_str::<Value>(&out).unwrap()["token"].as_str().unwrap().to_string();
    let (ok, out, err) =
        ctl(&node, &root, &["--json", "tokens", "create", "deployer", "--role", "operator"]).await;
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let operator = created["token"].as_str().unwrap().to_string();
    let operator_id = created["tokenId"].as_str().unwrap().to_string();
    let (ok, _, err) = ctl(&node, &root, &["tokens", "create", "x", "--role", "god"]).await;
    assert!(!ok && err.contains("--role god"), "{err}");

    // A viewer reads; an operator also changes devices; only admins touch identity.
    assert_eq!(call(&node, Some(&viewer), "GET", "/api/things", json!({})).await.0, 200);
    let (s, b) =
        call(&node, Some(&viewer), "POST", "/api/things", json!({"thingName": "t1"})).await;
    assert_eq!((s, b["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(
        call(&node, Some(&operator), "POST", "/api/things", json!({"thingName": "t1"})).await.0,
        201
    );
    let doc = json!({"document": {"statements": [{"effect": "allow", "actions": ["publish"], "topics": ["a"]}]}});
    assert_eq!(call(&node, Some(&operator), "PUT", "/api/policies/p", doc.clone()).await.0, 403);
    assert_eq!(call(&node, Some(&operator), "GET", "/api/tokens", json!({})).await.0, 403);
    assert_eq!(call(&node, Some(&root), "PUT", "/api/policies/p", doc).await.0, 200);
    let (ok, out, err) = ctl(&node, &operator, &["credentials", "add", "t1"]).await;
    assert!(!ok && err.contains("403 forbidden"), "{out} {err}");
    let (ok, out, err) = ctl(&node, &root, &["credentials", "add", "t1"]).await;
    assert!(ok && out.contains("secret (shown once): "), "{err}");
    let (ok, out, _) = ctl(&node, &root, &["policies", "attach", "p", "thing/t1"]).await;
    assert!(ok, "{out}");
    let (ok, out, _) = ctl(&node, &viewer, &["policies", "attached", "thing/t1"]).await;
    assert!(ok && out.contains('p'), "{out}");

    // Revoked, a token stops working at once.
    let (ok, _, err) = ctl(&node, &root, &["tokens", "revoke", &operator_id]).await;
    assert!(ok, "{err}");
    assert_eq!(call(&node, Some(&operator), "GET", "/api/things", json!({})).await.0, 401);
    let (ok, out, _) = ctl(&node, &root, &["tokens", "list"]).await;
    assert!(ok && out.contains("deployer") && out.contains("true"), "{out}");

    // The audit log has every mutating request: who, what, result; reads are not in it.
    let (s, b) = call(&node, Some(&root), "GET", "/api/audit?limit=1000", json!({})).await;
    assert_eq!(s, 200);
    let entries = b["entries"].as_array().unwrap();
    let seen = |actor: &str, method: &str, path: &str, status: u64| {
        entries.iter().any(|e| {
            e["actor"].as_str().unwrap().contains(actor)
                && e["method"] == method
                && e["path"] == path
                && e["status"] == status
        })
    };
    assert!(seen("unauthenticated", "POST", "/api/things", 401));
    assert!(seen("dashboard", "POST", "/api/things", 403));
    assert!(seen("deployer", "POST", "/api/things", 201));
    assert!(seen("root", "PUT", "/api/policies/p", 200));
    assert!(seen("root", "DELETE", &format!("/api/tokens/{operator_id}"), 200));
    assert!(entries.iter().all(|e| e["method"] != "GET"));
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    let (ok, out, _) = ctl(&node, &root, &["audit", "--limit", "2"]).await;
    assert!(ok && out.contains("more: --after"), "{out}");
    assert!(
        metric(&node, "homeport_admin_requests_denied_total{reason=\"forbidden\"}").await >= 3.0
    );
    node.shutdown().await.unwrap();
}
