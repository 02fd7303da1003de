//! Jobs through real sockets: jobs created over the admin API, devices (rumqttc) taking
//! them on the AWS IoT reserved topics; timeouts, retries, cancel, abort, rollout rate and
//! a restart. Job "minutes" are shortened by `jobs.minute_ms`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use homeport::node::Node;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

async fn start_jobs(dir: &Path, minute_ms: u64) -> Node {
    let mut cfg = config(dir);
    cfg.jobs.scheduler_interval_ms = 50;
    cfg.jobs.minute_ms = minute_ms;
    Node::start(cfg).await.expect("node starts")
}

async fn device(node: &Node, thing: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(thing, "127.0.0.1", port(node));
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut ev) = AsyncClient::new(o, 100);
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())).await;
    c.subscribe(format!("$aws/things/{thing}/jobs/notify-next"), QoS::AtLeastOnce).await.unwrap();
    until(&mut ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_))).then_some(())).await;
    (c, ev)
}

/// Waits for notify-next to name `job_id` as the next execution.
async fn next_is(ev: &mut rumqttc::EventLoop, job_id: &str) -> Value {
    until(ev, |e| match e {
        Event::Incoming(Packet::Publish(p)) if p.topic.ends_with("/jobs/notify-next") => {
            let v: Value = serde_json::from_slice(&p.payload).expect("JSON");
            (v["execution"]["jobId"] == job_id).then_some(v)
        }
        _ => None,
    })
    .await
}

/// The next PUBLISH whose topic ends with `suffix`: its JSON payload.
async fn next_on(ev: &mut rumqttc::EventLoop, suffix: &str) -> Value {
    until(ev, |e| match e {
        Event::Incoming(Packet::Publish(p)) if p.topic.ends_with(suffix) => {
            Some(serde_json::from_slice(&p.payload).expect("JSON"))
        }
        _ => None,
    })
    .await
}

async fn request(
    c: &AsyncClient,
    ev: &mut rumqttc::EventLoop,
    topic: String,
    body: Value,
) -> (bool, Value) {
    c.publish(topic.clone(), QoS::AtLeastOnce, false, body.to_string()).await.unwrap();
    let (ok, rej) = (format!("{topic}/accepted"), format!("{topic}/rejected"));
    until(ev, |e| match e {
        Event::Incoming(Packet::Publish(p)) if p.topic == ok || p.topic == rej => {
            Some((p.topic == ok, serde_json::from_slice(&p.payload).expect("JSON")))
        }
        _ => None,
    })
    .await
}

async fn create(node: &Node, body: Value) {
    let (status, resp) =
        http(node.admin_addr.unwrap(), "POST", "/api/jobs", &body.to_string()).await;
    assert_eq!(status, 201, "{resp}");
}

async fn describe(node: &Node, id: &str) -> Value {
    let (status, body) = http_get(node.admin_addr.unwrap(), &format!("/api/jobs/{id}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["job"].clone()
}

/// Polls the job until `pred` holds.
async fn job_until(node: &Node, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let j = describe(node, id).await;
        if pred(&j) {
            return j;
        }
        assert!(tokio::time::Instant::now() < deadline, "job {id} never got there: {j}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

fn count(j: &Value, k: &str) -> u64 {
    j["jobProcessDetails"][k].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_takes_a_job_to_success_and_state_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_jobs(dir.path(), 60_000).await;
    let (dev, mut ev) = device(&node, "pump-1").await;
    create(&node, json!({"jobId": "fw-1", "document": {"url": "https://x/fw.bin"}, "targets": ["pump-1", "pump-2"]})).await;

    // Connected: notify-next brings the execution with its document.
    let n = next_on(&mut ev, "/jobs/notify-next").await;
    assert_eq!(n["execution"]["jobId"], "fw-1");
    assert_eq!(n["execution"]["status"], "QUEUED");
    assert_eq!(n["execution"]["jobDocument"]["url"], "https://x/fw.bin");

    let t = |s: &str| format!("$aws/things/pump-1/jobs/{s}");
    let (ok, pending) = request(&dev, &mut ev, t("get"), json!({"clientToken": "c1"})).await;
    assert!(ok);
    assert_eq!(pending["queuedJobs"][0]["jobId"], "fw-1");
    assert_eq!(pending["clientToken"], "c1");

    let (ok, started) =
        request(&dev, &mut ev, t("start-next"), json!({"statusDetails": {"step": "download"}}))
            .await;
    assert!(ok, "{started}");
    let e = &started["execution"];
    assert_eq!((e["status"].as_str(), e["versionNumber"].as_u64()), (Some("IN_PROGRESS"), Some(2)));
    assert_eq!(e["statusDetails"]["step"], "download");

    // A stale expectedVersion is refused with the current state.
    let (ok, rej) = request(
        &dev,
        &mut ev,
        t("fw-1/update"),
        json!({"status": "SUCCEEDED", "expectedVersion": 1}),
    )
    .await;
    assert!(!ok);
    assert_eq!(rej["code"], "VersionMismatch");
    assert_eq!(rej["executionState"]["versionNumber"], 2);
    // Devices may not set service-only states.
    let (ok, rej) = request(&dev, &mut ev, t("fw-1/update"), json!({"status": "CANCELED"})).await;
    assert!(!ok);
    assert_eq!(rej["code"], "InvalidRequest");
    let (ok, rej) = request(&dev, &mut ev, t("fw-1/update"), json!({"status": "DONE"})).await;
    assert!(!ok);
    assert_eq!(rej["code"], "InvalidRequest");
    // Bad JSON is InvalidJson.
    dev.publish(t("fw-1/update"), QoS::AtLeastOnce, false, "{nope").await.unwrap();
    assert_eq!(next_on(&mut ev, "/fw-1/update/rejected").await["code"], "InvalidJson");

    let (ok, done) = request(
        &dev,
        &mut ev,
        t("fw-1/update"),
        json!({"status": "SUCCEEDED", "expectedVersion": 2, "includeJobExecutionState": true, "includeJobDocument": true}),
    )
    .await;
    assert!(ok, "{done}");
    assert_eq!(done["executionState"]["status"], "SUCCEEDED");
    assert_eq!(done["jobDocument"]["url"], "https://x/fw.bin");
    // Nothing is pending any more: notify-next without an execution.
    let n = next_on(&mut ev, "/jobs/notify-next").await;
    assert!(n.get("execution").is_none(), "{n}");
    let (ok, rej) = request(&dev, &mut ev, t("fw-1/update"), json!({"status": "FAILED"})).await;
    assert!(!ok);
    assert_eq!(rej["code"], "TerminalStateReached");
    let (ok, rej) = request(&dev, &mut ev, t("nope/get"), json!({})).await;
    assert!(!ok);
    assert_eq!(rej["code"], "ResourceNotFound");

    let j = job_until(&node, "fw-1", |j| {
        count(j, "numberOfSucceededThings") == 1 && count(j, "numberOfQueuedThings") == 1
    })
    .await;
    assert_eq!(j["status"], "IN_PROGRESS");
    drop((dev, ev));
    node.shutdown().await.unwrap();

    // After a restart the offline thing finds its queued execution.
    let node = start_jobs(dir.path(), 60_000).await;
    let (dev2, mut ev2) = device(&node, "pump-2").await;
    let (ok, next) =
        request(&dev2, &mut ev2, "$aws/things/pump-2/jobs/$next/get".into(), json!({})).await;
    assert!(ok, "{next}");
    assert_eq!(next["execution"]["status"], "QUEUED");
    let (ok, _) = request(
        &dev2,
        &mut ev2,
        "$aws/things/pump-2/jobs/fw-1/update".into(),
        json!({"status": "REJECTED"}),
    )
    .await;
    assert!(ok);
    let j = job_until(&node, "fw-1", |j| j["status"] == "COMPLETED").await;
    assert_eq!(count(&j, "numberOfRejectedThings"), 1);
    let (status, body) = http_get(node.admin_addr.unwrap(), "/api/things/pump-1/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["executionSummaries"][0]
            ["jobExecutionSummary"]["status"],
        "SUCCEEDED"
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    // A job "minute" is 300 ms here.
    let node = start_jobs(dir.path(), 300).await;
    let (dev, mut ev) = device(&node, "valve-1").await;
    create(&node, json!({
        "jobId": "slow",
        "document": {},
        "targets": ["valve-1"],
        "timeoutConfig": {"inProgressTimeoutInMinutes": 1},
        "jobExecutionsRetryConfig": {"criteriaList": [{"failureType": "TIMED_OUT", "numberOfRetries": 1}]},
    }))
    .await;
    next_on(&mut ev, "/jobs/notify-next").await;
    let t = |s: &str| format!("$aws/things/valve-1/jobs/{s}");
    let (ok, started) = request(&dev, &mut ev, t("start-next"), json!({})).await;
    assert!(ok);
    assert_eq!(started["execution"]["executionNumber"], 1);
    // It times out and is queued again as execution 2.
    let n = next_on(&mut ev, "/jobs/notify-next").await;
    assert_eq!(n["execution"]["status"], "QUEUED", "{n}");
    assert_eq!(n["execution"]["executionNumber"], 2);
    let (ok, started) = request(&dev, &mut ev, t("start-next"), json!({})).await;
    assert!(ok);
    assert_eq!(started["execution"]["executionNumber"], 2);
    // The retry budget is spent: the second timeout is final and the job completes.
    let j = job_until(&node, "slow", |j| j["status"] == "COMPLETED").await;
    assert_eq!(count(&j, "numberOfTimedOutThings"), 1);

    // A step timeout (shorter than the job's) applies too.
    create(
        &node,
        json!({"jobId": "step", "document": {}, "targets": ["valve-1"],
        "timeoutConfig": {"inProgressTimeoutInMinutes": 100}}),
    )
    .await;
    next_is(&mut ev, "step").await;
    let (ok, _) = request(
        &dev,
        &mut ev,
        t("step/update"),
        json!({"status": "IN_PROGRESS", "stepTimeoutInMinutes": 1}),
    )
    .await;
    assert!(ok);
    job_until(&node, "step", |j| count(j, "numberOfTimedOutThings") == 1).await;

    // FAILED with a FAILED retry: queued again once, then final.
    create(&node, json!({"jobId": "flaky", "document": {}, "targets": ["valve-1"],
        "jobExecutionsRetryConfig": {"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]}})).await;
    next_is(&mut ev, "flaky").await;
    let (ok, _) = request(&dev, &mut ev, t("flaky/update"), json!({"status": "FAILED"})).await;
    assert!(ok);
    let (ok, e) = request(&dev, &mut ev, t("flaky/get"), json!({})).await;
    assert!(ok);
    assert_eq!(
        (e["execution"]["status"].as_str(), e["execution"]["executionNumber"].as_u64()),
        (Some("QUEUED"), Some(2))
    );
    let (ok, _) = request(&dev, &mut ev, t("flaky/update"), json!({"status": "FAILED"})).await;
    assert!(ok);
    let j = job_until(&node, "flaky", |j| j["status"] == "COMPLETED").await;
    assert_eq!(count(&j, "numberOfFailedThings"), 1);
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_abort_and_rollout_rate() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_jobs(dir.path(), 6_000).await;
    let admin = node.admin_addr.unwrap();
    let (dev, mut ev) = device(&node, "cam-1").await;
    create(&node, json!({"jobId": "c1", "document": {}, "targets": ["cam-1", "cam-2"]})).await;
    next_on(&mut ev, "/jobs/notify-next").await;
    let (ok, _) =
        request(&dev, &mut ev, "$aws/things/cam-1/jobs/start-next".into(), json!({})).await;
    assert!(ok);
    job_until(&node, "c1", |j| count(j, "numberOfQueuedThings") == 1).await;
    // Cancel without force: the queued one is canceled, the one in progress goes on.
    let (status, body) = http(admin, "POST", "/api/jobs/c1/cancel", "{}").await;
    assert_eq!(status, 200, "{body}");
    let j = job_until(&node, "c1", |j| count(j, "numberOfCanceledThings") == 1).await;
    assert_eq!(
        (j["status"].as_str(), count(&j, "numberOfInProgressThings")),
        (Some("CANCELED"), 1)
    );
    let (status, _) = http(admin, "POST", "/api/jobs/c1/cancel", "{}").await;
    assert_eq!(status, 409);
    // Force cancel reaches executions in progress.
    create(&node, json!({"jobId": "c2", "document": {}, "targets": ["cam-1"]})).await;
    job_until(&node, "c2", |j| count(j, "numberOfQueuedThings") == 1).await;
    let (ok, _) = request(
        &dev,
        &mut ev,
        "$aws/things/cam-1/jobs/c2/update".into(),
        json!({"status": "IN_PROGRESS"}),
    )
    .await;
    assert!(ok);
    let (status, _) = http(admin, "POST", "/api/jobs/c2/cancel", r#"{"force": true}"#).await;
    assert_eq!(status, 200);
    job_until(&node, "c2", |j| count(j, "numberOfCanceledThings") == 1).await;
    let (ok, rej) = request(
        &dev,
        &mut ev,
        "$aws/things/cam-1/jobs/c2/update".into(),
        json!({"status": "SUCCEEDED"}),
    )
    .await;
    assert!(!ok);
    assert_eq!(rej["code"], "TerminalStateReached");

    // Abort: one failure out of one finished crosses 50%; the rest is canceled.
    create(&node, json!({"jobId": "a1", "document": {}, "targets": ["cam-1", "cam-3", "cam-4"],
        "abortConfig": {"criteriaList": [{"failureType": "ALL", "action": "CANCEL", "thresholdPercentage": 50, "minNumberOfExecutedThings": 1}]}})).await;
    job_until(&node, "a1", |j| count(j, "numberOfQueuedThings") == 3).await;
    let (ok, _) = request(
        &dev,
        &mut ev,
        "$aws/things/cam-1/jobs/a1/update".into(),
        json!({"status": "FAILED"}),
    )
    .await;
    assert!(ok);
    let j = job_until(&node, "a1", |j| count(j, "numberOfCanceledThings") == 2).await;
    assert_eq!(j["status"], "CANCELED");
    assert!(j["reasonCode"].as_str().unwrap().starts_with("ABORTED"));

    // Rollout: 6 per "minute" of 6 s is one a second (a burst of at most two).
    let targets: Vec<String> = (0..5).map(|i| format!("lamp-{i}")).collect();
    create(
        &node,
        json!({"jobId": "r1", "document": {}, "targets": targets,
        "jobExecutionsRolloutConfig": {"maximumPerMinute": 6}}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let j = describe(&node, "r1").await;
    let queued = count(&j, "numberOfQueuedThings");
    assert!((1..=4).contains(&queued), "rate not held: {queued} of 5 after 1.5 s");
    assert_eq!(count(&j, "numberOfPendingRollout"), 5 - queued);
    job_until(&node, "r1", |j| count(j, "numberOfQueuedThings") == 5).await;

    // Bad definitions get a 400 naming the field; duplicates a 409.
    for (body, field) in [
        (json!({"jobId": "x y", "document": {}, "targets": ["a"]}), "jobId"),
        (json!({"jobId": "x", "document": 3, "targets": ["a"]}), "document"),
        (json!({"jobId": "x", "document": {}, "targets": []}), "targets"),
        (
            json!({"jobId": "x", "document": {}, "targets": ["a"], "jobExecutionsRolloutConfig": {"maximumPerMinute": 0}}),
            "jobExecutionsRolloutConfig",
        ),
    ] {
        let (status, resp) = http(admin, "POST", "/api/jobs", &body.to_string()).await;
        assert_eq!(status, 400, "{resp}");
        assert!(resp.contains(field), "{resp}");
    }
    let (status, _) = http(
        admin,
        "POST",
        "/api/jobs",
        &json!({"jobId": "r1", "document": {}, "targets": ["a"]}).to_string(),
    )
    .await;
    assert_eq!(status, 409);
    let (status, body) = http_get(admin, "/api/jobs?limit=2").await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(page["nextToken"], "c1");
    node.shutdown().await.unwrap();
}
