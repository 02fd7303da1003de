//! The registry over the admin API: things with attributes (paging, attribute filter,
//! merge and replace, version checks), groups and membership, job targets by group, and
//! a restart.

mod common;

use common::*;
use serde_json::{json, Value};

fn v(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn things_groups_and_group_targets() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path()).await;
    let a = node.admin_addr.unwrap();
    for (i, model) in ["m1", "m2", "m1", "m1"].iter().enumerate() {
        let body = json!({"thingName": format!("dev-{i}"), "attributes": {"model": model}});
        let (status, resp) = http(a, "POST", "/api/things", &body.to_string()).await;
        assert_eq!(status, 201, "{resp}");
    }
    let (status, _) = http(a, "POST", "/api/things", r#"{"thingName":"dev-0"}"#).await;
    assert_eq!(status, 409);
    let (status, resp) = http(a, "POST", "/api/things", r#"{"thingName":"bad name"}"#).await;
    assert_eq!(status, 400);
    assert!(resp.contains("thingName"), "{resp}");
    let (status, resp) =
        http(a, "POST", "/api/things", r#"{"thingName":"x","attributes":{"k":1}}"#).await;
    assert_eq!(status, 400);
    assert!(resp.contains("attributes.k"), "{resp}");

    // Paging and the attribute filter.
    let (_, page) = http_get(a, "/api/things?limit=2").await;
    let page = v(&page);
    assert_eq!(page["things"].as_array().unwrap().len(), 2);
    assert_eq!(page["nextToken"], "dev-1");
    let (_, rest) = http_get(a, "/api/things?limit=2&next=dev-1").await;
    let rest = v(&rest);
    let names: Vec<_> =
        rest["things"].as_array().unwrap().iter().map(|t| t["thingName"].clone()).collect();
    assert_eq!(names, vec![json!("dev-2"), json!("dev-3")]);
    assert!(rest["nextToken"].is_null());
    let (_, m1) = http_get(a, "/api/things?attribute=model=m1").await;
    assert_eq!(v(&m1)["things"].as_array().unwrap().len(), 3);

    // Merge, replace, and a stale expected version.
    let (status, t) =
        http(a, "PATCH", "/api/things/dev-0", r#"{"attributes":{"site":"lab"}}"#).await;
    assert_eq!(status, 200);
    assert_eq!(v(&t)["attributes"], json!({"model": "m1", "site": "lab"}));
    let (status, t) =
        http(a, "PATCH", "/api/things/dev-0", r#"{"attributes":{"site":"yard"},"merge":false}"#)
            .await;
    assert_eq!(status, 200);
    assert_eq!(v(&t)["attributes"], json!({"site": "yard"}));
    let (status, _) =
        http(a, "PATCH", "/api/things/dev-0", r#"{"attributes":{},"expectedVersion":1}"#).await;
    assert_eq!(status, 409);

    // Groups and membership.
    let (status, _) =
        http(a, "POST", "/api/groups", r#"{"groupName":"fleet-a","description":"first"}"#).await;
    assert_eq!(status, 201);
    for t in ["dev-1", "dev-3"] {
        let (status, resp) = http(a, "PUT", &format!("/api/groups/fleet-a/things/{t}"), "").await;
        assert_eq!(status, 200, "{resp}");
    }
    let (status, _) = http(a, "PUT", "/api/groups/nope/things/dev-1", "").await;
    assert_eq!(status, 404);
    let (_, g) = http_get(a, "/api/groups/fleet-a").await;
    assert_eq!(v(&g)["things"], json!(["dev-1", "dev-3"]));
    let (status, _) = http(a, "DELETE", "/api/groups/fleet-a", "").await;
    assert_eq!(status, 409, "a group with things is not deleted");

    // A job for a group targets its members at creation.
    let job = json!({"jobId": "g-job", "document": {}, "targets": ["group/fleet-a", "dev-0"]});
    let (status, resp) = http(a, "POST", "/api/jobs", &job.to_string()).await;
    assert_eq!(status, 201, "{resp}");
    let (_, j) = http_get(a, "/api/jobs/g-job").await;
    assert_eq!(v(&j)["job"]["targets"], json!(["dev-1", "dev-3", "dev-0"]));
    let (status, resp) =
        http(a, "POST", "/api/jobs", r#"{"jobId":"g2","document":{},"targets":["group/none"]}"#)
            .await;
    assert_eq!(status, 400);
    assert!(resp.contains("no group none"), "{resp}");

    // Leaving the group and deleting things; all of it survives a restart.
    let (status, _) = http(a, "DELETE", "/api/groups/fleet-a/things/dev-3", "").await;
    assert_eq!(status, 200);
    let (status, _) = http(a, "DELETE", "/api/things/dev-2", "").await;
    assert_eq!(status, 200);
    let (status, _) = http(a, "DELETE", "/api/things/dev-2", "").await;
    assert_eq!(status, 404);
    node.shutdown().await.unwrap();
    let node = start(dir.path()).await;
    let a = node.admin_addr.unwrap();
    let (_, g) = http_get(a, "/api/groups/fleet-a").await;
    assert_eq!(v(&g)["things"], json!(["dev-1"]));
    let (status, t) = http_get(a, "/api/things/dev-1").await;
    assert_eq!(status, 200);
    assert_eq!(v(&t)["groups"], json!(["fleet-a"]));
    let (status, _) = http_get(a, "/api/things/dev-2").await;
    assert_eq!(status, 404);
    node.shutdown().await.unwrap();
}
