//! Fleet provisioning by claim, AWS IoT compatible on the wire. A device connects with a
//! shared *claim* certificate, which may use only these topics, and asks for its own:
//! `$aws/certificates/create/json` (the broker makes a key pair and a certificate) or
//! `$aws/certificates/create-from-csr/json` (the broker signs the device's CSR), then
//! `$aws/provisioning-templates/{template}/provision/json` with the certificate ownership
//! token and its parameters. The template decides the thing name, attributes, groups and
//! policies; the certificate is activated for that thing. Certificates are issued by the
//! CA configured under `[provisioning]` (rcgen).

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::records::{AuthKey, AuthRecord, CertRecord, CertStatus};
use super::{secret, x509, Auth, AuthError};
use crate::broker::now_ms;

/// Request topics.
pub const CREATE: &str = "$aws/certificates/create/json";
pub const CREATE_FROM_CSR: &str = "$aws/certificates/create-from-csr/json";
const TEMPLATES: &str = "$aws/provisioning-templates/";
const PROVISION_SUFFIX: &str = "/provision/json";

/// What a publish under the provisioning topics asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Create,
    CreateFromCsr,
    Provision { template: String },
}

/// Whether a topic belongs to the fleet provisioning API (requests and replies).
pub fn is_fleet_topic(topic: &str) -> bool {
    topic.starts_with("$aws/certificates/") || topic.starts_with(TEMPLATES)
}

/// The request a topic names; `None` for replies and unknown topics.
pub fn parse(topic: &str) -> Option<Request> {
    match topic {
        CREATE => Some(Request::Create),
        CREATE_FROM_CSR => Some(Request::CreateFromCsr),
        t => {
            let name = t.strip_prefix(TEMPLATES)?.strip_suffix(PROVISION_SUFFIX)?;
            (!name.is_empty() && !name.contains('/'))
                .then(|| Request::Provision { template: name.into() })
        }
    }
}

/// The topic a request's answer goes to (`accepted` or `rejected`).
pub fn reply_topic(request_topic: &str, accepted: bool) -> String {
    format!("{request_topic}/{}", if accepted { "accepted" } else { "rejected" })
}

/// A provisioning template (stored in the meta group). Strings may use `${Name}` for the
/// request's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProvisioningTemplate {
    #[serde(default)]
    pub name: String,
    /// The thing to create (or reuse), e.g. `sensor-${SerialNumber}`.
    pub thing_name: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Existing thing groups the thing joins.
    #[serde(default)]
    pub thing_groups: Vec<String>,
    /// Existing policies attached to the thing.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Returned to the device as `deviceConfiguration` (strings filled in).
    #[serde(default)]
    pub device_configuration: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub version: u64,
}

fn yes() -> bool {
    true
}

/// A rejected request: AWS's `statusCode`, `errorCode` and `errorMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn json(&self) -> Value {
        json!({"statusCode": self.status, "errorCode": self.code, "errorMessage": self.message})
    }
}

fn reject(status: u16, code: &'static str, message: impl Into<String>) -> Rejection {
    Rejection { status, code, message: message.into() }
}

fn internal(e: impl std::fmt::Display) -> Rejection {
    reject(500, "InternalError", e.to_string())
}

/// Fills `${Name}` from the parameters; the name of a missing one otherwise.
fn fill(text: &str, params: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').ok_or_else(|| text.to_string())? + i;
        let name = &rest[i + 2..end];
        out.push_str(params.get(name).ok_or_else(|| name.to_string())?);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The issuing CA: its certificate (PEM) and the rcgen issuer.
pub struct FleetCa {
    pub pem: String,
    pub der: Vec<u8>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl FleetCa {
    /// Loads `[provisioning] ca_cert` and `ca_key`.
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<FleetCa, AuthError> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map_err(|e| AuthError::Invalid(format!("{}: {e}", p.display())))
        };
        let pem = read(cert)?;
        let parsed = x509::parse_pem(&pem)
            .map_err(|e| AuthError::Invalid(format!("provisioning.ca_cert: {e}")))?;
        let kp = rcgen::KeyPair::from_pem(&read(key)?)
            .map_err(|e| AuthError::Invalid(format!("provisioning.ca_key: {e}")))?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&pem, kp)
            .map_err(|e| AuthError::Invalid(format!("provisioning.ca_cert: {e}")))?;
        Ok(FleetCa { pem, der: parsed.der, issuer })
    }
}

/// Certificates issued by the fleet CA carry this common name until provisioned; the
/// thing they are attached to is their identity.
const ISSUED_CN: &str = "homeport provisioned device";

impl Auth {
    fn fleet_ca(&self) -> Result<&FleetCa, Rejection> {
        self.fleet.as_ref().ok_or_else(|| {
            reject(503, "ServiceUnavailable", "fleet provisioning is not configured on this node")
        })
    }

    /// Registers an issued certificate, inactive and without a thing, with an ownership
    /// token; returns the token.
    async fn register_issued(&self, der: &[u8], pem: &str) -> Result<(String, String), Rejection> {
        let parsed = x509::parse_der(der).map_err(internal)?;
        let token_secret = secret::generate().map_err(internal)?;
        let rec = CertRecord {
            id: parsed.id.clone(),
            pem: pem.into(),
            subject: parsed.subject,
            ca_id: None,
            thing: None,
            status: CertStatus::Inactive,
            claim: false,
            ownership: Some(super::tokens::sha256_hex(&token_secret)),
            created_ms: now_ms(),
            version: 1,
        };
        self.put(AuthKey::Cert(rec.id.clone()), None, Some(AuthRecord::Cert(rec)), "certificate")
            .await
            .map_err(internal)?;
        Ok((parsed.id.clone(), format!("{}.{token_secret}", parsed.id)))
    }

    /// `$aws/certificates/create/json`: a new key pair and a certificate for it.
    pub async fn fleet_create(&self) -> Result<Value, Rejection> {
        let ca = self.fleet_ca()?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(internal)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(internal)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, ISSUED_CN);
        let cert = params.signed_by(&key, &ca.issuer).map_err(internal)?;
        let (id, token) = self.register_issued(cert.der(), &cert.pem()).await?;
        self.metrics.fleet_requests.with_label_values(&["create", "accepted"]).inc();
        Ok(json!({
            "certificateId": id,
            "certificatePem": cert.pem(),
            "privateKey": key.serialize_pem(),
            "certificateOwnershipToken": token,
        }))
    }

    /// `$aws/certificates/create-from-csr/json`: signs the device's CSR (its key never
    /// leaves it).
    pub async fn fleet_create_from_csr(&self, payload: &[u8]) -> Result<Value, Rejection> {
        let ca = self.fleet_ca()?;
        let v: Value = serde_json::from_slice(payload)
            .map_err(|_| reject(400, "InvalidPayload", "payload is not JSON"))?;
        let csr = v["certificateSigningRequest"].as_str().ok_or_else(|| {
            reject(400, "InvalidPayload", "certificateSigningRequest is required")
        })?;
        let mut req = rcgen::CertificateSigningRequestParams::from_pem(csr)
            .map_err(|e| reject(400, "InvalidCsr", format!("certificateSigningRequest: {e}")))?;
        // The subject is ours to decide; the key is the device's.
        req.params.distinguished_name = rcgen::DistinguishedName::new();
        req.params.distinguished_name.push(rcgen::DnType::CommonName, ISSUED_CN);
        req.params.is_ca = rcgen::IsCa::NoCa;
        let cert = req.signed_by(&ca.issuer).map_err(internal)?;
        let (id, token) = self.register_issued(cert.der(), &cert.pem()).await?;
        self.metrics.fleet_requests.with_label_values(&["create_from_csr", "accepted"]).inc();
        Ok(json!({
            "certificateId": id,
            "certificatePem": cert.pem(),
            "certificateOwnershipToken": token,
        }))
    }

    /// `$aws/provisioning-templates/{template}/provision/json`.
    pub async fn fleet_provision(
        &self,
        template: &str,
        payload: &[u8],
    ) -> Result<Value, Rejection> {
        self.fleet_ca()?;
        let v: Value = serde_json::from_slice(payload)
            .map_err(|_| reject(400, "InvalidPayload", "payload is not JSON"))?;
        let token = v["certificateOwnershipToken"].as_str().ok_or_else(|| {
            reject(400, "InvalidPayload", "certificateOwnershipToken is required")
        })?;
        let mut params = BTreeMap::new();
        if let Some(p) = v["parameters"].as_object() {
            for (k, val) in p {
                let s = val.as_str().ok_or_else(|| {
                    reject(400, "InvalidParameters", format!("parameters.{k}: must be a string"))
                })?;
                params.insert(k.clone(), s.to_string());
            }
        }
        let bad_token = || {
            reject(
                400,
                "InvalidCertificateOwnershipToken",
                "the certificate ownership token is not valid",
            )
        };
        let (cert_id, secret_part) = token.split_once('.').ok_or_else(bad_token)?;
        let mut cert = self.cert(cert_id).map_err(internal)?.ok_or_else(bad_token)?;
        let expected = cert.ownership.clone().ok_or_else(bad_token)?;
        if !super::tokens::same_hex(&super::tokens::sha256_hex(secret_part), &expected) {
            return Err(bad_token());
        }
        let t =
            self.template(template).map_err(internal)?.filter(|t| t.enabled).ok_or_else(|| {
                reject(
                    404,
                    "ResourceNotFound",
                    format!("template {template} does not exist or is disabled"),
                )
            })?;
        let missing =
            |n: String| reject(400, "InvalidParameters", format!("parameter {n} is missing"));
        let name = fill(&t.thing_name, &params).map_err(missing)?;
        if !crate::shadow::topics::valid_name(&name, crate::shadow::topics::MAX_THING_NAME) {
            return Err(reject(
                400,
                "InvalidParameters",
                format!("thing name {name:?} is not valid"),
            ));
        }
        let mut attributes = BTreeMap::new();
        for (k, val) in &t.attributes {
            attributes.insert(k.clone(), fill(val, &params).map_err(missing)?);
        }
        let groups = t
            .thing_groups
            .iter()
            .map(|g| fill(g, &params).map_err(missing))
            .collect::<Result<Vec<_>, _>>()?;
        self.set_up_thing(&name, attributes, &groups, &t.policies).await.map_err(|e| match e {
            AuthError::Invalid(m) => reject(400, "InvalidParameters", m),
            e => internal(e),
        })?;
        let mut config = serde_json::Map::new();
        for (k, val) in &t.device_configuration {
            config.insert(k.clone(), Value::String(fill(val, &params).map_err(missing)?));
        }
        let expect = Some(cert.version);
        cert.thing = Some(name.clone());
        cert.status = CertStatus::Active;
        cert.ownership = None;
        cert.version += 1;
        self.put(
            AuthKey::Cert(cert.id.clone()),
            expect,
            Some(AuthRecord::Cert(cert)),
            "certificate",
        )
        .await
        .map_err(|_| bad_token())?;
        self.metrics.fleet_requests.with_label_values(&["provision", "accepted"]).inc();
        tracing::info!(message = "device provisioned by claim", thing = %name, template);
        Ok(json!({"deviceConfiguration": config, "thingName": name}))
    }

    pub fn template(&self, name: &str) -> Result<Option<ProvisioningTemplate>, AuthError> {
        Ok(match self.read(&AuthKey::Template(name.into()))? {
            Some(AuthRecord::Template(t)) => Some(t),
            _ => None,
        })
    }

    pub fn templates(&self) -> Result<Vec<ProvisioningTemplate>, AuthError> {
        self.list("template", |r| match r {
            AuthRecord::Template(t) => Some(t),
            _ => None,
        })
    }

    /// Creates or replaces a provisioning template.
    pub async fn put_template(
        &self,
        name: &str,
        mut t: ProvisioningTemplate,
    ) -> Result<ProvisioningTemplate, AuthError> {
        let ok = !name.is_empty()
            && name.len() <= 36
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
        if !ok {
            return Err(AuthError::Invalid(
                "templateName: 1 to 36 letters, digits, '_' or '-'".into(),
            ));
        }
        if t.thing_name.is_empty() {
            return Err(AuthError::Invalid("template.thingName: required".into()));
        }
        let old = self.template(name)?;
        t.name = name.into();
        t.version = old.as_ref().map_or(1, |o| o.version + 1);
        self.put(
            AuthKey::Template(name.into()),
            old.map(|o| o.version),
            Some(AuthRecord::Template(t.clone())),
            "template",
        )
        .await?;
        Ok(t)
    }

    pub async fn delete_template(&self, name: &str) -> Result<(), AuthError> {
        let t =
            self.template(name)?.ok_or_else(|| AuthError::NotFound(format!("template {name}")))?;
        self.put(AuthKey::Template(name.into()), Some(t.version), None, "template").await
    }
}

/// A random id-safe string (for tests and names).
pub fn random_suffix() -> String {
    let s = secret::generate().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(s.as_bytes())
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_and_replies_are_named() {
        assert_eq!(parse(CREATE), Some(Request::Create));
        assert_eq!(parse(CREATE_FROM_CSR), Some(Request::CreateFromCsr));
        assert_eq!(
            parse("$aws/provisioning-templates/fleet/provision/json"),
            Some(Request::Provision { template: "fleet".into() })
        );
        assert_eq!(parse("$aws/provisioning-templates//provision/json"), None);
        assert_eq!(parse("$aws/certificates/create/json/accepted"), None);
        assert!(is_fleet_topic("$aws/certificates/create/json/accepted"));
        assert!(!is_fleet_topic("$aws/things/x/shadow/get"));
        assert_eq!(reply_topic(CREATE, false), "$aws/certificates/create/json/rejected");
    }

    #[test]
    fn templates_fill_from_parameters() {
        let p: BTreeMap<String, String> = [("SerialNumber".to_string(), "42".to_string())].into();
        assert_eq!(fill("sensor-${SerialNumber}", &p), Ok("sensor-42".into()));
        assert_eq!(fill("${Missing}", &p), Err("Missing".into()));
        assert_eq!(fill("plain", &p), Ok("plain".into()));
    }
}
