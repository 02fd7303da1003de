//! `homeport ctl`: the admin API from the command line. Things, groups, shadows and
//! jobs here; identity in `identity`, the cluster in `cluster`, rules in `rules`; readable
//! output by default, the API's JSON with `--json`. Errors name the field or repeat the
//! API's `{"code", "message"}`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct CtlArgs {
    /// Admin API address of a node.
    #[arg(long, env = "HOMEPORT_ADMIN", default_value = "127.0.0.1:8080", global = true)]
    admin: String,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Admin API bearer token (`homeport gen-token`, or `ctl tokens create`).
    #[arg(long, env = "HOMEPORT_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(clap::Subcommand)]
enum CtlCmd {
    /// Registered things.
    #[command(subcommand)]
    Things(ThingCmd),
    /// Thing groups.
    #[command(subcommand)]
    Groups(GroupCmd),
    /// Device shadows.
    #[command(subcommand)]
    Shadows(ShadowCmd),
    /// Jobs.
    #[command(subcommand)]
    Jobs(JobCmd),
    /// Device credentials (secrets and public keys).
    #[command(subcommand)]
    Credentials(super::identity::CredentialCmd),
    /// Authorization policies and their attachments.
    #[command(subcommand)]
    Policies(super::identity::PolicyCmd),
    /// CA and device certificates; cluster certificates for development (`certs init`).
    #[command(subcommand)]
    Certs(super::identity::CertCmd),
    /// Admin API tokens.
    #[command(subcommand)]
    Tokens(super::identity::TokenCmd),
    /// Rules: SQL over messages, and their actions.
    #[command(subcommand)]
    Rules(super::rules::RuleCmd),
    /// The cluster: status, members, shards, init, join, drain, remove, faults.
    #[command(subcommand)]
    Cluster(super::cluster::ClusterCmd),
    /// The audit log of mutating admin requests.
    Audit {
        /// Entries after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(clap::Subcommand)]
enum ThingCmd {
    /// Register a thing: `--attr model=x1` (repeatable).
    Create {
        name: String,
        #[arg(long = "attr")]
        attrs: Vec<String>,
    },
    /// List things, `--attribute model=x1` to filter.
    List {
        #[arg(long)]
        attribute: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        next: Option<String>,
    },
    /// Show a thing.
    Get { name: String },
    /// Set attributes (`--attr k=` removes k); `--replace` replaces them all.
    SetAttrs {
        name: String,
        #[arg(long = "attr")]
        attrs: Vec<String>,
        #[arg(long)]
        replace: bool,
    },
    /// Deregister a thing.
    Delete { name: String },
}

#[derive(clap::Subcommand)]
enum GroupCmd {
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
    },
    List,
    /// Show a group and its things.
    Get {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Add a thing to a group.
    Add {
        group: String,
        thing: String,
    },
    /// Remove a thing from a group.
    Remove {
        group: String,
        thing: String,
    },
}

fn attrs_json(flag: &str, attrs: &[String]) -> anyhow::Result<Value> {
    let mut m = serde_json::Map::new();
    for a in attrs {
        let (k, v) = a.split_once('=').ok_or_else(|| anyhow!("{flag} {a}: expected NAME=VALUE"))?;
        m.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(Value::Object(m))
}

fn thing_rows(things: &[Value]) -> Vec<Vec<String>> {
    things
        .iter()
        .map(|t| {
            let attrs = t["attributes"]
                .as_object()
                .map(|m| {
                    m.iter().map(|(k, v)| format!("{k}={}", cell(v))).collect::<Vec<_>>().join(",")
                })
                .unwrap_or_default();
            let groups = t["groups"]
                .as_array()
                .map(|g| g.iter().map(cell).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            vec![cell(&t["thingName"]), attrs, groups, cell(&t["version"])]
        })
        .collect()
}

#[derive(clap::Subcommand)]
enum ShadowCmd {
    /// Print a shadow document.
    Get {
        thing: String,
        /// A named shadow (the classic one if absent).
        #[arg(long)]
        name: Option<String>,
    },
    /// Update a shadow: `--desired '{"on":true}'` and/or `--reported '{...}'`.
    Update {
        thing: String,
        #[arg(long)]
        name: Option<String>,
        /// JSON object merged into desired (`null` values delete keys).
        #[arg(long)]
        desired: Option<String>,
        /// JSON object merged into reported.
        #[arg(long)]
        reported: Option<String>,
        /// Only apply if the shadow is at this version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Delete a shadow.
    Delete {
        thing: String,
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(clap::Subcommand)]
enum JobCmd {
    /// Create a job.
    Create {
        job_id: String,
        /// Thing names, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        targets: Vec<String>,
        /// The job document (a JSON object).
        #[arg(long, conflicts_with = "document_file")]
        document: Option<String>,
        /// Read the job document from a file.
        #[arg(long)]
        document_file: Option<std::path::PathBuf>,
        #[arg(long)]
        description: Option<String>,
        /// Rollout: executions created per minute.
        #[arg(long)]
        max_per_minute: Option<u32>,
        /// Executions in progress longer than this time out.
        #[arg(long)]
        timeout_minutes: Option<u32>,
        /// Retry criteria `TYPE:N` (TYPE: FAILED, TIMED_OUT or ALL), repeatable.
        #[arg(long)]
        retry: Vec<String>,
        /// Abort criteria `TYPE:PERCENT:MIN_EXECUTED` (TYPE: FAILED, REJECTED, TIMED_OUT
        /// or ALL), repeatable.
        #[arg(long)]
        abort: Vec<String>,
    },
    /// List jobs.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        /// Start after this job id (the previous page's next token).
        #[arg(long)]
        next: Option<String>,
    },
    /// A job with its progress counts.
    Describe { job_id: String },
    /// Cancel a job (`--force` also cancels executions in progress).
    Cancel {
        job_id: String,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Executions of a job, or of a thing with `--thing`.
    Executions {
        job_id: Option<String>,
        #[arg(long, conflicts_with = "job_id")]
        thing: Option<String>,
    },
}

/// One HTTP/1.1 request with `Connection: close`: (status, body).
fn request(
    admin: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let addr = admin
        .to_socket_addrs()
        .with_context(|| format!("--admin {admin}"))?
        .next()
        .ok_or_else(|| anyhow!("--admin {admin}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to the admin API at {admin}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).context("reading the admin API's answer")?;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("the admin API sent no HTTP header"))?;
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("the admin API sent no status"))?;
    let mut body = out[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end =
            b.windows(2).position(|w| w == b"\r\n").ok_or_else(|| anyhow!("bad chunk"))?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..line_end]).trim(), 16)?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Calls the API; a non-2xx answer becomes an error with the API's code and message.
pub(crate) fn call(
    a: &CtlArgs,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let (status, body) = request(&a.admin, a.token.as_deref(), method, path, body)?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        let code = v["code"].as_str().unwrap_or("error");
        let msg = v["message"].as_str().unwrap_or("");
        bail!("{status} {code}: {msg}");
    }
    Ok(v)
}

pub(crate) fn parse_object(flag: &str, text: &str) -> anyhow::Result<Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => bail!("{flag}: must be a JSON object"),
        Err(e) => bail!("{flag}: not valid JSON ({e})"),
    }
}

fn shadow_path(thing: &str, name: &Option<String>) -> String {
    match name {
        Some(n) => format!("/api/things/{thing}/shadow?name={n}"),
        None => format!("/api/things/{thing}/shadow"),
    }
}

pub(crate) fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A plain text table: a header row and aligned columns.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = line(header.to_vec()).trim_end().to_string();
    for r in rows {
        out.push('\n');
        out.push_str(line(r.iter().map(String::as_str).collect()).trim_end());
    }
    out
}

pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn criteria(flag: &str, specs: &[String], abort: bool) -> anyhow::Result<Vec<Value>> {
    specs
        .iter()
        .map(|s| {
            let parts: Vec<&str> = s.split(':').collect();
            match (abort, parts.as_slice()) {
                (false, [t, n]) => Ok(json!({"failureType": t,
                    "numberOfRetries": n.parse::<u64>().with_context(|| format!("{flag} {s}: N"))?})),
                (true, [t, p, m]) => Ok(json!({"failureType": t, "action": "CANCEL",
                    "thresholdPercentage": p.parse::<f64>().with_context(|| format!("{flag} {s}: PERCENT"))?,
                    "minNumberOfExecutedThings": m.parse::<u64>().with_context(|| format!("{flag} {s}: MIN_EXECUTED"))?})),
                (false, _) => bail!("{flag} {s}: expected TYPE:N"),
                (true, _) => bail!("{flag} {s}: expected TYPE:PERCENT:MIN_EXECUTED"),
            }
        })
        .collect()
}

pub fn main(a: CtlArgs) -> anyhow::Result<()> {
    let thing_head = ["THING", "ATTRIBUTES", "GROUPS", "VERSION"];
    let (out, table_out) = match &a.cmd {
        CtlCmd::Things(ThingCmd::Create { name, attrs }) => {
            let body = json!({"thingName": name, "attributes": attrs_json("--attr", attrs)?});
            let v = call(&a, "POST", "/api/things", Some(&body))?;
            (v, format!("created thing {name}"))
        }
        CtlCmd::Things(ThingCmd::List { attribute, limit, next }) => {
            let mut q = Vec::new();
            if let Some(x) = attribute {
                q.push(format!("attribute={x}"));
            }
            if let Some(l) = limit {
                q.push(format!("limit={l}"));
            }
            if let Some(n) = next {
                q.push(format!("next={n}"));
            }
            let path = if q.is_empty() {
                "/api/things".into()
            } else {
                format!("/api/things?{}", q.join("&"))
            };
            let v = call(&a, "GET", &path, None)?;
            let rows = thing_rows(v["things"].as_array().map(Vec::as_slice).unwrap_or_default());
            let mut t = table(&thing_head, &rows);
            if let Some(n) = v["nextToken"].as_str() {
                t.push_str(&format!("\nmore: --next {n}"));
            }
            (v, t)
        }
        CtlCmd::Things(ThingCmd::Get { name }) => {
            let v = call(&a, "GET", &format!("/api/things/{name}"), None)?;
            let t = table(&thing_head, &thing_rows(std::slice::from_ref(&v)));
            (v, t)
        }
        CtlCmd::Things(ThingCmd::SetAttrs { name, attrs, replace }) => {
            let body = json!({"attributes": attrs_json("--attr", attrs)?, "merge": !replace});
            let v = call(&a, "PATCH", &format!("/api/things/{name}"), Some(&body))?;
            let t = table(&thing_head, &thing_rows(std::slice::from_ref(&v)));
            (v, t)
        }
        CtlCmd::Things(ThingCmd::Delete { name }) => {
            let v = call(&a, "DELETE", &format!("/api/things/{name}"), None)?;
            (v, format!("deleted thing {name}"))
        }
        CtlCmd::Groups(GroupCmd::Create { name, description }) => {
            let body = json!({"groupName": name, "description": description});
            let v = call(&a, "POST", "/api/groups", Some(&body))?;
            (v, format!("created group {name}"))
        }
        CtlCmd::Groups(GroupCmd::List) => {
            let v = call(&a, "GET", "/api/groups", None)?;
            let rows: Vec<Vec<String>> = v["groups"]
                .as_array()
                .map(|g| {
                    g.iter().map(|g| vec![cell(&g["groupName"]), cell(&g["description"])]).collect()
                })
                .unwrap_or_default();
            let t = table(&["GROUP", "DESCRIPTION"], &rows);
            (v, t)
        }
        CtlCmd::Groups(GroupCmd::Get { name }) => {
            let v = call(&a, "GET", &format!("/api/groups/{name}"), None)?;
            let rows: Vec<Vec<String>> = v["things"]
                .as_array()
                .map(|t| t.iter().map(|t| vec![cell(t)]).collect())
                .unwrap_or_default();
            let t = table(&["THING"], &rows);
            (v, t)
        }
        CtlCmd::Groups(GroupCmd::Delete { name }) => {
            let v = call(&a, "DELETE", &format!("/api/groups/{name}"), None)?;
            (v, format!("deleted group {name}"))
        }
        CtlCmd::Groups(GroupCmd::Add { group, thing }) => {
            let v = call(&a, "PUT", &format!("/api/groups/{group}/things/{thing}"), None)?;
            (v, format!("{thing} is in {group}"))
        }
        CtlCmd::Groups(GroupCmd::Remove { group, thing }) => {
            let v = call(&a, "DELETE", &format!("/api/groups/{group}/things/{thing}"), None)?;
            (v, format!("{thing} left {group}"))
        }
        CtlCmd::Shadows(ShadowCmd::Get { thing, name }) => {
            let v = call(&a, "GET", &shadow_path(thing, name), None)?;
            let t = pretty(&v);
            (v, t)
        }
        CtlCmd::Shadows(ShadowCmd::Update { thing, name, desired, reported, version }) => {
            let mut state = serde_json::Map::new();
            if let Some(d) = desired {
                state.insert("desired".into(), parse_object("--desired", d)?);
            }
            if let Some(r) = reported {
                state.insert("reported".into(), parse_object("--reported", r)?);
            }
            if state.is_empty() {
                bail!("give --desired and/or --reported");
            }
            let mut body = json!({ "state": state });
            if let Some(v) = version {
                body["version"] = (*v).into();
            }
            let v = call(&a, "POST", &shadow_path(thing, name), Some(&body))?;
            let t = format!("updated {thing}: version {}", cell(&v["version"]));
            (v, t)
        }
        CtlCmd::Shadows(ShadowCmd::Delete { thing, name }) => {
            let v = call(&a, "DELETE", &shadow_path(thing, name), None)?;
            let t = format!("deleted {thing} at version {}", cell(&v["version"]));
            (v, t)
        }
        CtlCmd::Jobs(JobCmd::Create {
            job_id,
            targets,
            document,
            document_file,
            description,
            max_per_minute,
            timeout_minutes,
            retry,
            abort,
        }) => {
            let doc = match (document, document_file) {
                (Some(d), _) => parse_object("--document", d)?,
                (None, Some(f)) => {
                    let text = std::fs::read_to_string(f)
                        .with_context(|| format!("--document-file {}", f.display()))?;
                    parse_object("--document-file", &text)?
                }
                (None, None) => bail!("give --document or --document-file"),
            };
            let mut body = json!({"jobId": job_id, "document": doc, "targets": targets});
            if let Some(d) = description {
                body["description"] = d.clone().into();
            }
            if let Some(m) = max_per_minute {
                body["jobExecutionsRolloutConfig"] = json!({ "maximumPerMinute": m });
            }
            if let Some(t) = timeout_minutes {
                body["timeoutConfig"] = json!({ "inProgressTimeoutInMinutes": t });
            }
            if !retry.is_empty() {
                body["jobExecutionsRetryConfig"] =
                    json!({"criteriaList": criteria("--retry", retry, false)?});
            }
            if !abort.is_empty() {
                body["abortConfig"] = json!({"criteriaList": criteria("--abort", abort, true)?});
            }
            let v = call(&a, "POST", "/api/jobs", Some(&body))?;
            let t = format!("created job {job_id} for {} things", targets.len());
            (v, t)
        }
        CtlCmd::Jobs(JobCmd::List { status, limit, next }) => {
            let mut q = Vec::new();
            if let Some(s) = status {
                q.push(format!("status={s}"));
            }
            if let Some(l) = limit {
                q.push(format!("limit={l}"));
            }
            if let Some(n) = next {
                q.push(format!("next={n}"));
            }
            let path = if q.is_empty() {
                "/api/jobs".to_string()
            } else {
                format!("/api/jobs?{}", q.join("&"))
            };
            let v = call(&a, "GET", &path, None)?;
            let rows: Vec<Vec<String>> = v["jobs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|j| {
                            vec![
                                cell(&j["jobId"]),
                                cell(&j["status"]),
                                cell(&j["targets"]),
                                cell(&j["createdAt"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut t = table(&["JOB", "STATUS", "TARGETS", "CREATED"], &rows);
            if let Some(n) = v["nextToken"].as_str() {
                t.push_str(&format!("\nmore: --next {n}"));
            }
            (v, t)
        }
        CtlCmd::Jobs(JobCmd::Describe { job_id }) => {
            let v = call(&a, "GET", &format!("/api/jobs/{job_id}"), None)?;
            let j = &v["job"];
            let mut rows = vec![
                vec!["job".into(), cell(&j["jobId"])],
                vec!["status".into(), cell(&j["status"])],
                vec!["reason".into(), cell(&j["reasonCode"])],
                vec![
                    "targets".into(),
                    j["targets"].as_array().map(|a| a.len()).unwrap_or(0).to_string(),
                ],
            ];
            if let Some(p) = j["jobProcessDetails"].as_object() {
                for (k, n) in p {
                    rows.push(vec![k.clone(), cell(n)]);
                }
            }
            let t = table(&["FIELD", "VALUE"], &rows);
            (v, t)
        }
        CtlCmd::Jobs(JobCmd::Cancel { job_id, force, reason }) => {
            let mut body = json!({ "force": force });
            if let Some(r) = reason {
                body["reasonCode"] = r.clone().into();
            }
            let v = call(&a, "POST", &format!("/api/jobs/{job_id}/cancel"), Some(&body))?;
            let t = format!("canceled job {job_id}{}", if *force { " (forced)" } else { "" });
            (v, t)
        }
        CtlCmd::Jobs(JobCmd::Executions { job_id, thing }) => {
            let (path, first) = match (job_id, thing) {
                (Some(j), None) => (format!("/api/jobs/{j}/executions"), "thingName"),
                (None, Some(t)) => (format!("/api/things/{t}/jobs"), "jobId"),
                _ => bail!("give a job id or --thing"),
            };
            let v = call(&a, "GET", &path, None)?;
            let rows: Vec<Vec<String>> = v["executionSummaries"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| {
                            let s = &e["jobExecutionSummary"];
                            vec![
                                cell(&e[first]),
                                cell(&s["status"]),
                                cell(&s["executionNumber"]),
                                cell(&s["lastUpdatedAt"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            let head = if first == "jobId" { "JOB" } else { "THING" };
            (v.clone(), table(&[head, "STATUS", "EXECUTION", "UPDATED"], &rows))
        }
        CtlCmd::Credentials(c) => super::identity::credentials(&a, c)?,
        CtlCmd::Policies(c) => super::identity::policies(&a, c)?,
        CtlCmd::Certs(c) => super::identity::certs(&a, c)?,
        CtlCmd::Tokens(c) => super::identity::tokens(&a, c)?,
        CtlCmd::Audit { after, limit } => super::identity::audit(&a, *after, *limit)?,
        CtlCmd::Cluster(c) => super::cluster::run(&a, c)?,
        CtlCmd::Rules(c) => super::rules::run(&a, c)?,
    };
    if a.json {
        println!("{}", pretty(&out));
    } else {
        println!("{table_out}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_chunks_decode() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(), b"abcde");
        assert!(dechunk(b"9\r\nab\r\n").is_err());
        let c = criteria("--abort", &["ALL:50:10".into()], true).unwrap();
        assert_eq!(c[0]["minNumberOfExecutedThings"], 10);
        assert!(criteria("--retry", &["FAILED".into()], false).is_err());
    }
}
