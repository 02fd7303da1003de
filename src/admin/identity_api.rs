//! Request and response bodies of the identity and access endpoints (credentials,
//! policies, CA and device certificates). Field names follow AWS IoT (camelCase).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::records::{
    CaRecord, CertRecord, CertStatus, Credential, CredentialKind, PolicyRecord,
};

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum CredentialType {
    /// A device secret, the MQTT password.
    Secret,
    /// An ES256 or Ed25519 public key; the MQTT password is a JWT signed with it.
    PublicKey,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateCredential {
    #[serde(rename = "type")]
    pub kind: Option<CredentialType>,
    /// For `secret`: the secret to set (16 to 256 characters); omitted, one is generated.
    pub secret: Option<String>,
    /// For `publicKey`: a PEM `PUBLIC KEY` (P-256 or Ed25519).
    pub public_key_pem: Option<String>,
    /// Milliseconds since the Unix epoch after which it no longer authenticates.
    pub expires_at: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialView {
    pub credential_id: String,
    pub thing_name: String,
    /// `secret` or `publicKey`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For public keys: `ES256` or `EdDSA`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Only in the answer that created a secret: it is not stored and cannot be read again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl From<&Credential> for CredentialView {
    fn from(c: &Credential) -> Self {
        let (kind, algorithm) = match &c.kind {
            CredentialKind::Secret(_) => ("secret", None),
            CredentialKind::Key(k) => ("publicKey", Some(k.alg.jwt_name().to_string())),
        };
        CredentialView {
            credential_id: c.id.clone(),
            thing_name: c.thing.clone(),
            kind: kind.into(),
            algorithm,
            created_at: c.created_ms,
            expires_at: c.expires_ms,
            secret: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialList {
    pub credentials: Vec<CredentialView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PutPolicy {
    /// `{"statements":[{"effect":"allow"|"deny","actions":["publish"|"subscribe"|"receive"],"topics":["devices/${clientid}/#"]}]}`
    #[schema(value_type = Object)]
    pub document: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub policy_name: String,
    #[schema(value_type = Object)]
    pub document: serde_json::Value,
    pub version: u64,
    pub created_at: u64,
}

impl From<&PolicyRecord> for PolicyView {
    fn from(p: &PolicyRecord) -> Self {
        PolicyView {
            policy_name: p.name.clone(),
            document: serde_json::from_str(&p.document).unwrap_or(serde_json::Value::Null),
            version: p.version,
            created_at: p.created_ms,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyList {
    pub policies: Vec<PolicyView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttachedPolicies {
    pub policy_names: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterCa {
    pub ca_certificate_pem: Option<String>,
    /// Just-in-time registration of the device certificates it issued.
    pub auto_register: Option<bool>,
    /// What just-in-time registration creates.
    pub provisioning_template: Option<crate::auth::jit::JitTemplate>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaView {
    pub certificate_id: String,
    pub subject: String,
    pub status: CertStatus,
    pub auto_register: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioning_template: Option<crate::auth::jit::JitTemplate>,
    pub created_at: u64,
    pub certificate_pem: String,
}

impl From<&CaRecord> for CaView {
    fn from(c: &CaRecord) -> Self {
        CaView {
            certificate_id: c.id.clone(),
            subject: c.subject.clone(),
            status: c.status,
            auto_register: c.auto_register,
            provisioning_template: c.template.clone(),
            created_at: c.created_ms,
            certificate_pem: c.pem.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaList {
    pub certificates: Vec<CaView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterCert {
    pub certificate_pem: Option<String>,
    /// The thing it authenticates; default: the identity it names (common name).
    pub thing_name: Option<String>,
    /// Default `ACTIVE`.
    pub status: Option<CertStatus>,
    /// A fleet provisioning claim certificate: any client id, provisioning topics only.
    pub claim: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetStatus {
    pub status: Option<CertStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertView {
    pub certificate_id: String,
    pub subject: String,
    pub status: CertStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificate_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thing_name: Option<String>,
    pub claim: bool,
    pub created_at: u64,
    pub certificate_pem: String,
}

impl From<&CertRecord> for CertView {
    fn from(c: &CertRecord) -> Self {
        CertView {
            certificate_id: c.id.clone(),
            subject: c.subject.clone(),
            status: c.status,
            ca_certificate_id: c.ca_id.clone(),
            thing_name: c.thing.clone(),
            claim: c.claim,
            created_at: c.created_ms,
            certificate_pem: c.pem.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertList {
    pub certificates: Vec<CertView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateToken {
    /// Who or what uses it (shown in the audit log).
    pub name: Option<String>,
    pub role: Option<crate::auth::records::Role>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    pub token_id: String,
    pub name: String,
    pub role: crate::auth::records::Role,
    pub created_at: u64,
    pub revoked: bool,
    /// Only in the answer that created it: `Authorization: Bearer <token>`. It is not
    /// stored and cannot be read again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl From<&crate::auth::records::AdminToken> for TokenView {
    fn from(t: &crate::auth::records::AdminToken) -> Self {
        TokenView {
            token_id: t.id.clone(),
            name: t.name.clone(),
            role: t.role,
            created_at: t.created_ms,
            revoked: t.revoked,
            token: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditList {
    pub entries: Vec<crate::auth::records::AuditEntry>,
    /// Pass as `after` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateList {
    pub templates: Vec<crate::auth::fleet::ProvisioningTemplate>,
}
