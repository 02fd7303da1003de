//! What the meta group stores for identity and access: credentials, CA and device
//! certificates, policies and their attachments, admin tokens and the audit log. Keys,
//! record types and the pure apply logic of `Command::PutAuth` and `Command::Audit`.

use serde::{Deserialize, Serialize};

use super::jwt::DeviceKey;
use super::secret::SecretHash;
use crate::raft::machine::{Kv, Write};
use crate::raft::Response;
use crate::store::{decode, encode, StoreError};

/// A device credential, attached to one thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub id: String,
    pub thing: String,
    pub kind: CredentialKind,
    pub created_ms: u64,
    /// After this the credential no longer authenticates.
    pub expires_ms: Option<u64>,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CredentialKind {
    /// The MQTT password is this secret.
    Secret(SecretHash),
    /// The MQTT password is a JWT signed with this key's private half.
    Key(DeviceKey),
}

/// Lifecycle of a CA or device certificate (AWS IoT's states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CertStatus {
    Active,
    Inactive,
    /// Final: a revoked certificate cannot be activated again.
    Revoked,
}

/// A registered CA certificate: client certificates chaining to an active one are
/// accepted over mTLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    /// SHA-256 of the DER, lower-case hex.
    pub id: String,
    pub pem: String,
    pub subject: String,
    pub status: CertStatus,
    /// Just-in-time registration: a valid certificate it issued registers itself (and
    /// its thing) at first connect.
    pub auto_register: bool,
    /// What just-in-time registration creates (default: the thing named by the common
    /// name, nothing else).
    pub template: Option<super::jit::JitTemplate>,
    pub created_ms: u64,
    pub version: u64,
}

/// A registered device certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// SHA-256 of the DER, lower-case hex.
    pub id: String,
    pub pem: String,
    pub subject: String,
    /// The registered CA it chains to.
    pub ca_id: Option<String>,
    /// The thing it is attached to (its identity).
    pub thing: Option<String>,
    pub status: CertStatus,
    /// A fleet provisioning claim certificate: any client id may use it, and it may use
    /// only the provisioning topics.
    pub claim: bool,
    /// SHA-256 (hex) of the ownership token of a certificate issued by fleet
    /// provisioning and not provisioned yet.
    pub ownership: Option<String>,
    pub created_ms: u64,
    pub version: u64,
}

/// A named policy document (JSON text, see `auth::policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub name: String,
    pub document: String,
    pub created_ms: u64,
    pub version: u64,
}

/// Roles of admin API tokens, each including the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads, and writes to things, groups, shadows and jobs.
    Operator,
    /// Everything, including credentials, certificates, policies, tokens and the audit log.
    Admin,
}

/// An admin API bearer token (the token itself is shown once, at creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub hash: SecretHash,
    pub created_ms: u64,
    pub revoked: bool,
    pub version: u64,
}

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Assigned when applied; 0 in the command.
    pub seq: u64,
    pub at_ms: u64,
    /// The token's id and name, or `anonymous`.
    pub actor: String,
    pub method: String,
    pub path: String,
    /// HTTP status of the answer.
    pub status: u16,
}

/// A record under [`AuthKey`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthRecord {
    Credential(Credential),
    Ca(CaRecord),
    Cert(CertRecord),
    Policy(PolicyRecord),
    /// A policy attached to a target; no body.
    Attachment,
    Token(AdminToken),
    Template(super::fleet::ProvisioningTemplate),
}

impl AuthRecord {
    pub fn version(&self) -> u64 {
        match self {
            AuthRecord::Credential(c) => c.version,
            AuthRecord::Ca(c) => c.version,
            AuthRecord::Cert(c) => c.version,
            AuthRecord::Policy(p) => p.version,
            AuthRecord::Attachment => 0,
            AuthRecord::Token(t) => t.version,
            AuthRecord::Template(t) => t.version,
        }
    }
}

/// Where a policy is attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Thing(String),
    Group(String),
    Cert(String),
}

impl Target {
    fn tag(&self) -> (&'static str, &str) {
        match self {
            Target::Thing(n) => ("thing", n),
            Target::Group(n) => ("group", n),
            Target::Cert(n) => ("cert", n),
        }
    }
}

/// The key of an auth record. Typed, so a command cannot write outside its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthKey {
    Credential { thing: String, id: String },
    Ca(String),
    Cert(String),
    Policy(String),
    Attachment { target: Target, policy: String },
    Token(String),
    Template(String),
}

fn join(parts: &[&str]) -> Vec<u8> {
    let mut k = b"dauth".to_vec();
    for p in parts {
        k.push(0);
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// A prefix of keys: `parts` then the separator.
pub fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut k = join(parts);
    k.push(0);
    k
}

impl AuthKey {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            AuthKey::Credential { thing, id } => join(&["cred", thing, id]),
            AuthKey::Ca(id) => join(&["ca", id]),
            AuthKey::Cert(id) => join(&["cert", id]),
            AuthKey::Policy(n) => join(&["policy", n]),
            AuthKey::Attachment { target, policy } => {
                let (kind, name) = target.tag();
                join(&["attach", kind, name, policy])
            }
            AuthKey::Token(id) => join(&["token", id]),
            AuthKey::Template(n) => join(&["template", n]),
        }
    }
}

/// Prefix of the policies attached to a target.
pub fn attachment_prefix(target: &Target) -> Vec<u8> {
    let (kind, name) = target.tag();
    prefix(&["attach", kind, name])
}

/// Reads one record.
pub fn read(kv: &impl Kv, key: &AuthKey) -> Result<Option<AuthRecord>, StoreError> {
    kv.get(&key.bytes())?.map(|v| decode(&v)).transpose()
}

const AUDIT_NEXT: &[u8] = b"dauditn";
/// Prefix of audit entries (big-endian sequence follows).
pub const AUDIT_PREFIX: &[u8] = b"daudit\0";

pub fn audit_key(seq: u64) -> Vec<u8> {
    let mut k = AUDIT_PREFIX.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `PutAuth`: compare-and-set on the record's version (`None`: no record).
pub fn put(
    kv: &impl Kv,
    key: &AuthKey,
    expect: Option<u64>,
    value: Option<&AuthRecord>,
) -> Result<(Vec<Write>, Response), StoreError> {
    let found = read(kv, key)?.map(|r| r.version());
    if found != expect {
        return Ok((Vec::new(), Response::Conflict { found }));
    }
    let v = value.map(encode).transpose()?;
    Ok((vec![(key.bytes(), v)], Response::Applied))
}

/// `Audit`: appends under the next sequence number and drops the entry `keep` behind.
pub fn audit(
    kv: &impl Kv,
    entry: &AuditEntry,
    keep: u64,
) -> Result<(Vec<Write>, Response), StoreError> {
    let seq = match kv.get(AUDIT_NEXT)? {
        Some(v) => u64::from_be_bytes(
            v.as_slice().try_into().map_err(|_| StoreError::Codec("audit counter".into()))?,
        ),
        None => 1,
    };
    let mut e = entry.clone();
    e.seq = seq;
    let mut writes = vec![
        (audit_key(seq), Some(encode(&e)?)),
        (AUDIT_NEXT.to_vec(), Some((seq + 1).to_be_bytes().to_vec())),
    ];
    if keep > 0 && seq > keep {
        writes.push((audit_key(seq - keep), None));
    }
    Ok((writes, Response::Applied))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    type Map = BTreeMap<Vec<u8>, Vec<u8>>;

    fn run(
        kv: &mut Map,
        f: impl Fn(&Map) -> Result<(Vec<Write>, Response), StoreError>,
    ) -> Response {
        let r = f(kv).unwrap();
        for (k, v) in r.0 {
            match v {
                Some(v) => kv.insert(k, v),
                None => kv.remove(&k),
            };
        }
        r.1
    }

    fn policy(version: u64) -> AuthRecord {
        AuthRecord::Policy(PolicyRecord {
            name: "p".into(),
            document: "{}".into(),
            created_ms: 1,
            version,
        })
    }

    #[test]
    fn puts_are_compare_and_set() {
        let mut kv = BTreeMap::new();
        let k = AuthKey::Policy("p".into());
        assert_eq!(run(&mut kv, |kv| put(kv, &k, None, Some(&policy(1)))), Response::Applied);
        assert_eq!(
            run(&mut kv, |kv| put(kv, &k, None, Some(&policy(1)))),
            Response::Conflict { found: Some(1) }
        );
        assert_eq!(run(&mut kv, |kv| put(kv, &k, Some(1), Some(&policy(2)))), Response::Applied);
        assert_eq!(run(&mut kv, |kv| put(kv, &k, Some(2), None)), Response::Applied);
        assert_eq!(read(&kv, &k).unwrap(), None);
    }

    #[test]
    fn keys_of_kinds_and_targets_do_not_collide() {
        let a = AuthKey::Attachment { target: Target::Thing("x".into()), policy: "p".into() };
        let b = AuthKey::Attachment { target: Target::Group("x".into()), policy: "p".into() };
        assert_ne!(a.bytes(), b.bytes());
        assert!(a.bytes().starts_with(&attachment_prefix(&Target::Thing("x".into()))));
        assert!(!a.bytes().starts_with(&attachment_prefix(&Target::Thing("".into()))));
        assert_ne!(AuthKey::Ca("x".into()).bytes(), AuthKey::Cert("x".into()).bytes());
    }

    #[test]
    fn the_audit_log_numbers_entries_and_keeps_the_last_ones() {
        let mut kv = BTreeMap::new();
        let e = AuditEntry {
            seq: 0,
            at_ms: 5,
            actor: "t1".into(),
            method: "POST".into(),
            path: "/api/things".into(),
            status: 201,
        };
        for _ in 0..5 {
            run(&mut kv, |kv| audit(kv, &e, 3));
        }
        let seqs: Vec<u64> = kv
            .iter()
            .filter(|(k, _)| k.starts_with(AUDIT_PREFIX))
            .map(|(_, v)| decode::<AuditEntry>(v).unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![3, 4, 5]);
    }
}
