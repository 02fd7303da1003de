//! `homeport ctl` (the binary) against a node's admin API: things, groups, shadows and
//! jobs, tables and `--json`, and errors that name the field or repeat the API's code.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// Runs `homeport ctl --admin ADDR args...`: (success, stdout, stderr).
async fn ctl(admin: std::net::SocketAddr, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["ctl".to_string(), "--admin".into(), admin.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_homeport")).args(&all).output().expect("binary runs")
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
async fn ctl_drives_shadows_and_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let admin = node.admin_addr.unwrap();

    let (ok, out, err) =
        ctl(admin, &["shadows", "update", "fan-1", "--desired", r#"{"speed":3}"#]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "updated fan-1: version 1");
    let (ok, out, _) = ctl(admin, &["--json", "shadows", "get", "fan-1"]).await;
    assert!(ok);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["state"]["desired"]["speed"], 3);
    assert_eq!(doc["state"]["delta"]["speed"], 3);
    // Errors: a bad flag value is named; an API error repeats its status and code.
    let (ok, _, err) = ctl(admin, &["shadows", "update", "fan-1", "--desired", "{oops"]).await;
    assert!(!ok);
    assert!(err.contains("--desired: not valid JSON"), "{err}");
    let (ok, _, err) = ctl(admin, &["shadows", "get", "nobody"]).await;
    assert!(!ok);
    assert!(err.contains("404 not_found"), "{err}");
    let (ok, _, err) =
        ctl(admin, &["shadows", "update", "fan-1", "--reported", "{}", "--version", "9"]).await;
    assert!(!ok);
    assert!(err.contains("409 version_conflict"), "{err}");

    let (ok, out, err) = ctl(
        admin,
        &[
            "jobs",
            "create",
            "j-ctl",
            "--targets",
            "fan-1,fan-2",
            "--document",
            r#"{"op":"x"}"#,
            "--max-per-minute",
            "100",
            "--retry",
            "FAILED:1",
            "--abort",
            "ALL:50:5",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "created job j-ctl for 2 things");
    let (ok, out, _) = ctl(admin, &["jobs", "list"]).await;
    assert!(ok);
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("JOB"));
    assert!(lines.next().unwrap().starts_with("j-ctl"));
    let (ok, out, _) = ctl(admin, &["jobs", "describe", "j-ctl"]).await;
    assert!(ok);
    assert!(out.contains("numberOfPendingRollout"), "{out}");
    let (ok, _, err) = ctl(admin, &["jobs", "cancel", "j-ctl", "--force"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = ctl(admin, &["jobs", "cancel", "j-ctl"]).await;
    assert!(!ok);
    assert!(err.contains("409"), "{err}");
    let (ok, out, _) = ctl(admin, &["--json", "jobs", "executions", "j-ctl"]).await;
    assert!(ok);
    assert!(serde_json::from_str::<Value>(&out).unwrap()["executionSummaries"].is_array());
    let (ok, _, err) = ctl(
        admin,
        &["jobs", "create", "j2", "--targets", "a", "--document", "{}", "--retry", "FAILED"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("--retry FAILED: expected TYPE:N"), "{err}");

    // Things and groups.
    let (ok, _, err) =
        ctl(admin, &["things", "create", "fan-1", "--attr", "model=f2", "--attr", "site=a"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = ctl(admin, &["groups", "create", "fans"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = ctl(admin, &["groups", "add", "fans", "fan-1"]).await;
    assert!(ok, "{err}");
    let (ok, out, _) = ctl(admin, &["things", "list", "--attribute", "model=f2"]).await;
    assert!(ok);
    assert_eq!(
        out.lines().nth(1).unwrap().split_whitespace().collect::<Vec<_>>(),
        ["fan-1", "model=f2,site=a", "fans", "2"]
    );
    let (ok, _, err) = ctl(admin, &["things", "set-attrs", "fan-1", "--attr", "bad"]).await;
    assert!(!ok);
    assert!(err.contains("--attr bad: expected NAME=VALUE"), "{err}");
    let (ok, out, _) = ctl(admin, &["groups", "get", "fans"]).await;
    assert!(ok);
    assert_eq!(out.trim(), "THING\nfan-1");
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_manages_rules() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let admin = node.admin_addr.unwrap();
    let sql = r#"SELECT payload.t AS t FROM "s/#" WHERE t > 1"#;
    let (ok, out, err) =
        ctl(admin, &["rules", "create", "hot", "--sql", sql, "--republish", "out/${clientid}"])
            .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "created rule hot");
    let (ok, out, _) = ctl(admin, &["rules", "list"]).await;
    assert!(ok);
    assert!(out.contains("hot") && out.contains("0/0/0"), "{out}");
    let (ok, out, err) =
        ctl(admin, &["rules", "test", "--sql", sql, "--topic", "s/1", "--payload", r#"{"t": 5}"#])
            .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), r#"{"t":5}"#);
    let (ok, _, err) = ctl(admin, &["rules", "create", "bad", "--sql", "SELECT FROM 's'"]).await;
    assert!(!ok);
    assert!(err.contains("400 bad_request: sql: line 1, column 8"), "{err}");
    let (ok, out, _) = ctl(admin, &["rules", "disable", "hot"]).await;
    assert!(ok);
    assert_eq!(out.trim(), "rule hot disabled");
    let (ok, out, _) = ctl(admin, &["--json", "rules", "get", "hot"]).await;
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["enabled"].as_bool(), v["version"].as_u64()), (Some(false), Some(2)));
    let (ok, _, _) = ctl(admin, &["rules", "delete", "hot"]).await;
    assert!(ok);
    let (ok, _, err) = ctl(admin, &["rules", "get", "hot"]).await;
    assert!(!ok);
    assert!(err.contains("404 not_found"), "{err}");
    node.shutdown().await.unwrap();
}
