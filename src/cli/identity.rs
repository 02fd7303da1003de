//! `homeport ctl` for identity and access: device credentials, policies and their
//! attachments, CA and device certificates, admin tokens and the audit log.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::ctl::{call, cell, parse_object, table, CtlArgs};

#[derive(clap::Subcommand)]
pub enum CredentialCmd {
    /// Give a thing a secret (generated unless --secret) or, with --public-key, a
    /// public key for JWT passwords.
    Add {
        thing: String,
        #[arg(long, conflicts_with = "public_key")]
        secret: Option<String>,
        /// PEM file of a P-256 or Ed25519 public key.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Milliseconds since the Unix epoch after which it stops working.
        #[arg(long)]
        expires_at: Option<u64>,
    },
    List {
        thing: String,
    },
    /// Remove a credential; connections that used it are closed.
    Delete {
        thing: String,
        id: String,
    },
}

#[derive(clap::Subcommand)]
pub enum PolicyCmd {
    /// Create or replace a policy from a JSON document (inline or @FILE).
    Put {
        name: String,
        document: String,
    },
    List,
    Get {
        name: String,
    },
    Delete {
        name: String,
    },
    /// Attach to a target: `thing/NAME`, `group/NAME` or `certificate/ID`.
    Attach {
        name: String,
        target: String,
    },
    Detach {
        name: String,
        target: String,
    },
    /// Policies attached to a target (`thing/NAME`, `group/NAME`, `certificate/ID`).
    Attached {
        target: String,
    },
}

#[derive(clap::Subcommand)]
pub enum CertCmd {
    /// Register a CA certificate (PEM file).
    RegisterCa {
        file: PathBuf,
        /// Register the certificates it issued at their first connect.
        #[arg(long)]
        auto_register: bool,
        /// JSON provisioning template (inline or @FILE) for auto-registration.
        #[arg(long)]
        template: Option<String>,
    },
    ListCas,
    /// Set a CA's status: ACTIVE, INACTIVE or REVOKED.
    SetCaStatus {
        id: String,
        status: String,
    },
    /// Register a device certificate (PEM file) issued by a registered CA.
    Register {
        file: PathBuf,
        #[arg(long)]
        thing: Option<String>,
    },
    List,
    /// Set a device certificate's status: ACTIVE, INACTIVE or REVOKED (final).
    SetStatus {
        id: String,
        status: String,
    },
    /// Cluster certificates for development (written locally, no node involved): a CA
    /// and one certificate per node, `node-{id}.{cluster}`, in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Nodes 1..=N get a certificate.
        #[arg(long)]
        nodes: u64,
        /// The cluster's name (`cluster.name`).
        #[arg(long, default_value = "homeport")]
        cluster: String,
    },
    /// One more node certificate from the CA in DIR (`ca.pem`, `ca.key`).
    Node {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: u64,
        #[arg(long, default_value = "homeport")]
        cluster: String,
    },
}

#[derive(clap::Subcommand)]
pub enum TokenCmd {
    /// Create a token (shown once): --role viewer, operator or admin.
    Create {
        name: String,
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    List,
    Revoke {
        id: String,
    },
}

type Out = (Value, String);

fn read(flag: &str, path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
}

fn target_path(target: &str) -> anyhow::Result<String> {
    match target.split_once('/') {
        Some((k @ ("thing" | "group" | "certificate"), n)) if !n.is_empty() => {
            Ok(format!("{k}/{n}"))
        }
        _ => bail!("target {target}: expected thing/NAME, group/NAME or certificate/ID"),
    }
}

fn status(s: &str) -> anyhow::Result<Value> {
    let up = s.to_ascii_uppercase();
    match up.as_str() {
        "ACTIVE" | "INACTIVE" | "REVOKED" => Ok(json!({ "status": up })),
        _ => bail!("status {s}: expected ACTIVE, INACTIVE or REVOKED"),
    }
}

fn rows(v: &Value, list: &str, fields: &[&str]) -> Vec<Vec<String>> {
    v[list]
        .as_array()
        .map(|a| a.iter().map(|e| fields.iter().map(|f| cell(&e[*f])).collect()).collect())
        .unwrap_or_default()
}

pub fn credentials(a: &CtlArgs, c: &CredentialCmd) -> anyhow::Result<Out> {
    Ok(match c {
        CredentialCmd::Add { thing, secret, public_key, expires_at } => {
            let body = match public_key {
                Some(p) => json!({"type": "publicKey", "publicKeyPem": read("--public-key", p)?,
                    "expiresAt": expires_at}),
                None => json!({"type": "secret", "secret": secret, "expiresAt": expires_at}),
            };
            let v = call(a, "POST", &format!("/api/things/{thing}/credentials"), Some(&body))?;
            let mut t = format!("credential {} added to {thing}", cell(&v["credentialId"]));
            if let Some(s) = v["secret"].as_str() {
                t.push_str(&format!("\nsecret (shown once): {s}"));
            }
            (v, t)
        }
        CredentialCmd::List { thing } => {
            let v = call(a, "GET", &format!("/api/things/{thing}/credentials"), None)?;
            let r = rows(
                &v,
                "credentials",
                &["credentialId", "type", "algorithm", "createdAt", "expiresAt"],
            );
            let t = table(&["ID", "TYPE", "ALGORITHM", "CREATED", "EXPIRES"], &r);
            (v, t)
        }
        CredentialCmd::Delete { thing, id } => {
            let v = call(a, "DELETE", &format!("/api/things/{thing}/credentials/{id}"), None)?;
            (v, format!("deleted credential {id} of {thing}"))
        }
    })
}

pub fn policies(a: &CtlArgs, c: &PolicyCmd) -> anyhow::Result<Out> {
    let policy_rows = |v: &Value| rows(v, "policies", &["policyName", "version", "createdAt"]);
    Ok(match c {
        PolicyCmd::Put { name, document } => {
            let text = match document.strip_prefix('@') {
                Some(f) => read("document", &PathBuf::from(f))?,
                None => document.clone(),
            };
            let doc = parse_object("document", &text)?;
            let v =
                call(a, "PUT", &format!("/api/policies/{name}"), Some(&json!({"document": doc})))?;
            let t = format!("policy {name} at version {}", cell(&v["version"]));
            (v, t)
        }
        PolicyCmd::List => {
            let v = call(a, "GET", "/api/policies", None)?;
            let t = table(&["POLICY", "VERSION", "CREATED"], &policy_rows(&v));
            (v, t)
        }
        PolicyCmd::Get { name } => {
            let v = call(a, "GET", &format!("/api/policies/{name}"), None)?;
            let t = super::ctl::pretty(&v["document"]);
            (v, t)
        }
        PolicyCmd::Delete { name } => {
            let v = call(a, "DELETE", &format!("/api/policies/{name}"), None)?;
            (v, format!("deleted policy {name}"))
        }
        PolicyCmd::Attach { name, target } | PolicyCmd::Detach { name, target } => {
            let attach = matches!(c, PolicyCmd::Attach { .. });
            let path = format!("/api/policies/{name}/attachments/{}", target_path(target)?);
            let v = call(a, if attach { "PUT" } else { "DELETE" }, &path, None)?;
            let verb = if attach { "attached to" } else { "detached from" };
            (v, format!("policy {name} {verb} {target}"))
        }
        PolicyCmd::Attached { target } => {
            let v = call(a, "GET", &format!("/api/attachments/{}", target_path(target)?), None)?;
            let names: Vec<Vec<String>> = v["policyNames"]
                .as_array()
                .map(|n| n.iter().map(|p| vec![cell(p)]).collect())
                .unwrap_or_default();
            let t = table(&["POLICY"], &names);
            (v, t)
        }
    })
}

fn check_cluster_name(name: &str) -> anyhow::Result<()> {
    let cfg = homeport::config::ClusterConfig { name: name.to_string(), ..Default::default() };
    cfg.check_name().map_err(|e| anyhow::anyhow!("--cluster: {e}"))
}

pub fn certs(a: &CtlArgs, c: &CertCmd) -> anyhow::Result<Out> {
    let cert_fields = ["certificateId", "status", "subject", "thingName"];
    Ok(match c {
        CertCmd::Init { dir, nodes, cluster } => {
            if *nodes == 0 || *nodes > 1000 {
                anyhow::bail!("--nodes: between 1 and 1000");
            }
            check_cluster_name(cluster)?;
            if dir.join("ca.key").exists() {
                anyhow::bail!(
                    "--dir {}: holds a CA already (ca.key); use `ctl certs node`",
                    dir.display()
                );
            }
            let ids: Vec<u64> = (1..=*nodes).collect();
            let g = homeport::cluster::certs::generate(cluster, &ids)?;
            let files = homeport::cluster::certs::write_dir(dir, &g)?;
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            let t = format!(
                "cluster {cluster:?}: CA and {nodes} node certificates\n{}",
                names.join("\n")
            );
            (json!({"cluster": cluster, "files": names}), t)
        }
        CertCmd::Node { dir, id, cluster } => {
            if *id == 0 {
                anyhow::bail!("--id: must not be 0");
            }
            check_cluster_name(cluster)?;
            let ca = read("--dir (ca.pem)", &dir.join("ca.pem"))?;
            let key = read("--dir (ca.key)", &dir.join("ca.key"))?;
            let (c, k) = homeport::cluster::certs::issue(&ca, &key, cluster, *id)?;
            let g = homeport::cluster::certs::Generated {
                ca_cert: String::new(),
                ca_key: String::new(),
                nodes: vec![(*id, c, k)],
            };
            let files = homeport::cluster::certs::write_dir(dir, &g)?;
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            (json!({"cluster": cluster, "files": names}), names.join("\n"))
        }
        CertCmd::RegisterCa { file, auto_register, template } => {
            let template = match template {
                Some(t) => Some(match t.strip_prefix('@') {
                    Some(f) => parse_object("--template", &read("--template", &PathBuf::from(f))?)?,
                    None => parse_object("--template", t)?,
                }),
                None => None,
            };
            let body = json!({"caCertificatePem": read("file", file)?,
                "autoRegister": auto_register, "provisioningTemplate": template});
            let v = call(a, "POST", "/api/cas", Some(&body))?;
            let t = format!("registered CA {}", cell(&v["certificateId"]));
            (v, t)
        }
        CertCmd::ListCas => {
            let v = call(a, "GET", "/api/cas", None)?;
            let r =
                rows(&v, "certificates", &["certificateId", "status", "subject", "autoRegister"]);
            let t = table(&["ID", "STATUS", "SUBJECT", "AUTO-REGISTER"], &r);
            (v, t)
        }
        CertCmd::SetCaStatus { id, status: s } => {
            let v = call(a, "PATCH", &format!("/api/cas/{id}"), Some(&status(s)?))?;
            (v, format!("CA {id} is {}", s.to_ascii_uppercase()))
        }
        CertCmd::Register { file, thing } => {
            let body = json!({"certificatePem": read("file", file)?, "thingName": thing});
            let v = call(a, "POST", "/api/certificates", Some(&body))?;
            let t = format!("registered certificate {}", cell(&v["certificateId"]));
            (v, t)
        }
        CertCmd::List => {
            let v = call(a, "GET", "/api/certificates", None)?;
            let t = table(
                &["ID", "STATUS", "SUBJECT", "THING"],
                &rows(&v, "certificates", &cert_fields),
            );
            (v, t)
        }
        CertCmd::SetStatus { id, status: s } => {
            let v = call(a, "PATCH", &format!("/api/certificates/{id}"), Some(&status(s)?))?;
            (v, format!("certificate {id} is {}", s.to_ascii_uppercase()))
        }
    })
}

pub fn tokens(a: &CtlArgs, c: &TokenCmd) -> anyhow::Result<Out> {
    Ok(match c {
        TokenCmd::Create { name, role } => {
            let role = role.to_ascii_lowercase();
            if !matches!(role.as_str(), "viewer" | "operator" | "admin") {
                bail!("--role {role}: expected viewer, operator or admin");
            }
            let v = call(a, "POST", "/api/tokens", Some(&json!({"name": name, "role": role})))?;
            let t = format!(
                "token {} ({role})\ntoken (shown once): {}",
                cell(&v["tokenId"]),
                cell(&v["token"])
            );
            (v, t)
        }
        TokenCmd::List => {
            let v = call(a, "GET", "/api/tokens", None)?;
            let r = rows(&v, "tokens", &["tokenId", "name", "role", "revoked", "createdAt"]);
            let t = table(&["ID", "NAME", "ROLE", "REVOKED", "CREATED"], &r);
            (v, t)
        }
        TokenCmd::Revoke { id } => {
            let v = call(a, "DELETE", &format!("/api/tokens/{id}"), None)?;
            (v, format!("revoked token {id}"))
        }
    })
}

pub fn audit(a: &CtlArgs, after: Option<u64>, limit: Option<usize>) -> anyhow::Result<Out> {
    let mut path = format!("/api/audit?after={}", after.unwrap_or(0));
    if let Some(l) = limit {
        path.push_str(&format!("&limit={l}"));
    }
    let v = call(a, "GET", &path, None)?;
    let r = rows(&v, "entries", &["seq", "atMs", "actor", "method", "path", "status"]);
    let mut t = table(&["SEQ", "AT_MS", "ACTOR", "METHOD", "PATH", "STATUS"], &r);
    if let Some(n) = v["nextAfter"].as_u64() {
        t.push_str(&format!("\nmore: --after {n}"));
    }
    Ok((v, t))
}
