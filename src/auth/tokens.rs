//! Admin API access: bearer tokens with roles (a root token from the configuration, and
//! tokens created through the API, kept hashed in the meta group), the role each request
//! needs, and the audit log of mutating requests.

use base64::Engine;
use ring::digest::{digest, SHA256};

use super::records::{self, AdminToken, AuditEntry, AuthKey, AuthRecord, Role};
use super::{secret, storage, Auth, AuthError};
use crate::broker::now_ms;
use crate::raft::Command;

/// Prefix of every token this node issues.
const TOKEN_PREFIX: &str = "hpt_";

/// The role a request needs; `None` for the open endpoints (health, readiness, metrics,
/// the OpenAPI document).
pub fn required_role(method: &str, path: &str) -> Option<Role> {
    if matches!(path, "/healthz" | "/readyz" | "/metrics" | "/api/openapi.json") {
        return None;
    }
    let admin_only = ["/api/tokens", "/api/audit"].iter().any(|p| path.starts_with(p));
    // Identity records and cluster membership (and its fault injection) are the admin's.
    let identity = [
        "/api/cluster",
        "/api/policies",
        "/api/attachments",
        "/api/cas",
        "/api/certificates",
        "/api/provisioning-templates",
    ]
    .iter()
    .any(|p| path.starts_with(p))
        || path.contains("/credentials");
    let read = matches!(method, "GET" | "HEAD");
    Some(match (read, admin_only, identity) {
        (_, true, _) | (false, _, true) => Role::Admin,
        (true, _, _) => Role::Viewer,
        (false, _, false) => Role::Operator,
    })
}

/// SHA-256 of a token, lower-case hex (the form `admin.root_token_sha256` takes).
pub fn sha256_hex(token: &str) -> String {
    digest(&SHA256, token.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two hex digests without an early exit.
pub fn same_hex(a: &str, b: &str) -> bool {
    same(a.as_bytes(), b.as_bytes())
}

/// Compares without an early exit.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh root token and the SHA-256 line for the configuration.
pub fn new_root_token() -> Result<(String, String), AuthError> {
    let t = format!("{TOKEN_PREFIX}root.{}", secret::generate().map_err(storage)?);
    let h = sha256_hex(&t);
    Ok((t, h))
}

impl Auth {
    /// Who a bearer token is and its role; `None` if it is not a live token.
    pub fn admin_identity(&self, token: &str) -> Option<(String, Role)> {
        if let Some(root) = &self.root_token_sha256 {
            if same(sha256_hex(token).as_bytes(), root.as_bytes()) {
                return Some(("root".into(), Role::Admin));
            }
        }
        let (id, secret_part) = token.strip_prefix(TOKEN_PREFIX)?.split_once('.')?;
        let Ok(Some(AuthRecord::Token(t))) = self.read(&AuthKey::Token(id.into())) else {
            return None;
        };
        (!t.revoked && secret::verify(&t.hash, secret_part.as_bytes()))
            .then(|| (format!("{}:{}", t.id, t.name), t.role))
    }

    /// Creates a token; the answer carries it once (only its hash is kept).
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
    ) -> Result<(AdminToken, String), AuthError> {
        if name.is_empty() || name.len() > 64 || name.contains(['.', '\0']) {
            return Err(AuthError::Invalid("name: 1 to 64 characters, no '.'".into()));
        }
        let raw = secret::generate().map_err(storage)?;
        let id: String = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(&raw.as_bytes()[..12])
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        let secret_part = secret::generate().map_err(storage)?;
        let t = AdminToken {
            id: id.clone(),
            name: name.into(),
            role,
            hash: secret::hash(&secret_part, self.cfg.secret_iterations).map_err(storage)?,
            created_ms: now_ms(),
            revoked: false,
            version: 1,
        };
        self.put(AuthKey::Token(id.clone()), None, Some(AuthRecord::Token(t.clone())), "token")
            .await?;
        Ok((t, format!("{TOKEN_PREFIX}{id}.{secret_part}")))
    }

    pub fn tokens(&self) -> Result<Vec<AdminToken>, AuthError> {
        self.list("token", |r| match r {
            AuthRecord::Token(t) => Some(t),
            _ => None,
        })
    }

    /// Revokes a token: it stops working at once, and stays listed as revoked.
    pub async fn revoke_token(&self, id: &str) -> Result<AdminToken, AuthError> {
        let Some(AuthRecord::Token(mut t)) = self.read(&AuthKey::Token(id.into()))? else {
            return Err(AuthError::NotFound(format!("token {id}")));
        };
        let expect = Some(t.version);
        t.revoked = true;
        t.version += 1;
        self.put(AuthKey::Token(id.into()), expect, Some(AuthRecord::Token(t.clone())), "token")
            .await?;
        Ok(t)
    }

    /// Appends to the audit log (meta group), keeping the last `admin.audit_keep`.
    pub async fn audit(&self, entry: AuditEntry) -> Result<(), AuthError> {
        let cmd = Command::Audit { entry, keep: self.audit_keep };
        self.groups.write(0, cmd).await.map(|_| ()).map_err(storage)
    }

    /// Audit entries after sequence `after`, oldest first, at most `limit`.
    pub fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, AuthError> {
        let mut out = Vec::new();
        for kv in self.meta()?.range(records::audit_key(after + 1)..) {
            let (k, v) = kv.map_err(storage)?;
            if !k.starts_with(records::AUDIT_PREFIX) || out.len() == limit {
                break;
            }
            out.push(crate::store::decode(&v).map_err(storage)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_path_and_method() {
        assert_eq!(required_role("GET", "/metrics"), None);
        assert_eq!(required_role("GET", "/healthz"), None);
        assert_eq!(required_role("GET", "/api/things"), Some(Role::Viewer));
        assert_eq!(required_role("POST", "/api/things"), Some(Role::Operator));
        assert_eq!(required_role("POST", "/api/jobs"), Some(Role::Operator));
        assert_eq!(required_role("POST", "/api/things/t/credentials"), Some(Role::Admin));
        assert_eq!(required_role("GET", "/api/things/t/credentials"), Some(Role::Viewer));
        assert_eq!(required_role("PUT", "/api/policies/p"), Some(Role::Admin));
        assert_eq!(required_role("GET", "/api/policies"), Some(Role::Viewer));
        assert_eq!(required_role("GET", "/api/tokens"), Some(Role::Admin));
        assert_eq!(required_role("GET", "/api/audit"), Some(Role::Admin));
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }

    #[test]
    fn root_tokens_hash_to_their_config_line() {
        let (t, h) = new_root_token().unwrap();
        assert!(t.starts_with("hpt_root."));
        assert_eq!(sha256_hex(&t), h);
        assert!(same(h.as_bytes(), h.as_bytes()));
        assert!(!same(h.as_bytes(), sha256_hex("x").as_bytes()));
    }
}
