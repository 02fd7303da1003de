//! Just-in-time provisioning: a CA registered with auto-registration lets a valid
//! certificate it issued register itself at its first connect. The CA's template names
//! the thing, its attributes, its groups and the policies to attach, with the
//! certificate's subject fields as parameters (as AWS IoT JITP does).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::records::{CaRecord, CertRecord, CertStatus, Target};
use super::x509::ParsedCert;
use super::{Auth, AuthError};
use crate::broker::now_ms;
use crate::registry::{Registry, RegistryError, Thing};

/// What a CA's provisioning template says. Strings may use `${cert.subject.cn}` (and
/// `.o`, `.ou`, `.c`, `.st`, `.l`) and `${cert.id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JitTemplate {
    /// Default `${cert.subject.cn}`.
    #[serde(default)]
    pub thing_name: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Existing thing groups to put the thing in.
    #[serde(default)]
    pub thing_groups: Vec<String>,
    /// Existing policies to attach to the thing.
    #[serde(default)]
    pub policies: Vec<String>,
}

/// Fills a template string from a certificate; `None` if a parameter has no value.
pub fn fill(text: &str, cert: &ParsedCert) -> Option<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}')? + i;
        let name = &rest[i + 2..end];
        let v = if name == "cert.id" {
            cert.id.as_str()
        } else {
            cert.fields.get(name.strip_prefix("cert.subject.")?)?.as_str()
        };
        out.push_str(v);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

impl JitTemplate {
    /// Checks that every parameter is known.
    pub fn check(&self) -> Result<(), AuthError> {
        let probe = ParsedCert {
            der: Vec::new(),
            id: "x".into(),
            subject: String::new(),
            issuer: String::new(),
            fields: ["cn", "o", "ou", "c", "st", "l"]
                .iter()
                .map(|f| (f.to_string(), "x".into()))
                .collect(),
            dns: Vec::new(),
            is_ca: false,
            not_after_secs: 0,
        };
        let all =
            self.thing_name.iter().chain(self.attributes.values()).chain(self.thing_groups.iter());
        for s in all {
            if fill(s, &probe).is_none() {
                return Err(AuthError::Invalid(format!(
                    "provisioningTemplate: bad parameter in {s:?}"
                )));
            }
        }
        Ok(())
    }
}

impl Auth {
    /// What a provisioning template sets up: the thing (created, or kept if it exists),
    /// its groups and its policies. A missing group or policy is an error.
    pub(super) async fn set_up_thing(
        &self,
        name: &str,
        attributes: BTreeMap<String, String>,
        groups: &[String],
        policies: &[String],
    ) -> Result<(), AuthError> {
        let registry = Registry::new(self.groups.clone());
        let thing = Thing {
            name: name.into(),
            attributes,
            groups: Default::default(),
            created_at: now_ms() / 1000,
            version: 1,
        };
        match registry.create_thing(thing).await {
            Ok(()) | Err(RegistryError::Conflict(_)) => {}
            Err(RegistryError::Storage(m)) => return Err(AuthError::Storage(m)),
            Err(e) => return Err(AuthError::Invalid(e.to_string())),
        }
        for g in groups {
            registry.membership(g, name, true).await.map_err(|e| match e {
                RegistryError::Storage(m) => AuthError::Storage(m),
                e => AuthError::Invalid(format!("group {g}: {e}")),
            })?;
        }
        for p in policies {
            self.attachment(Target::Thing(name.into()), p, true).await.map_err(|e| match e {
                AuthError::NotFound(m) => AuthError::Invalid(format!("{m} not found")),
                e => e,
            })?;
        }
        Ok(())
    }

    /// Registers `cert` (issued by `ca`) and its thing from the CA's template. Returns
    /// the thing's name.
    pub(super) async fn provision_jit(
        &self,
        cert: &ParsedCert,
        ca: &CaRecord,
    ) -> Result<String, AuthError> {
        let t = ca.template.clone().unwrap_or_default();
        let missing = |what: &str| {
            AuthError::Invalid(format!("template {what}: the certificate lacks a parameter"))
        };
        let name = fill(t.thing_name.as_deref().unwrap_or("${cert.subject.cn}"), cert)
            .ok_or_else(|| missing("thingName"))?;
        let mut attributes = BTreeMap::new();
        for (k, v) in &t.attributes {
            attributes.insert(k.clone(), fill(v, cert).ok_or_else(|| missing(k))?);
        }
        let groups = t
            .thing_groups
            .iter()
            .map(|g| fill(g, cert).ok_or_else(|| missing("thingGroups")))
            .collect::<Result<Vec<_>, _>>()?;
        self.set_up_thing(&name, attributes, &groups, &t.policies).await?;
        let rec = CertRecord {
            id: cert.id.clone(),
            pem: pem_of(&cert.der),
            subject: cert.subject.clone(),
            ca_id: Some(ca.id.clone()),
            thing: Some(name.clone()),
            status: CertStatus::Active,
            claim: false,
            ownership: None,
            created_ms: now_ms(),
            version: 1,
        };
        let key = super::records::AuthKey::Cert(rec.id.clone());
        match self.put(key, None, Some(super::records::AuthRecord::Cert(rec)), "certificate").await
        {
            // A concurrent first connect registered it: fine.
            Ok(()) | Err(AuthError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        self.metrics.auth_jit_provisioned.inc();
        tracing::info!(message = "certificate registered just in time", thing = %name, certificate = %cert.id);
        Ok(name)
    }
}

/// PEM text of a DER certificate.
fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_from_the_certificate() {
        let cert = ParsedCert {
            der: Vec::new(),
            id: "abc".into(),
            subject: String::new(),
            issuer: String::new(),
            fields: [
                ("cn".to_string(), "cam-9".to_string()),
                ("ou".to_string(), "north".to_string()),
            ]
            .into(),
            dns: Vec::new(),
            is_ca: false,
            not_after_secs: 0,
        };
        assert_eq!(fill("${cert.subject.cn}", &cert).as_deref(), Some("cam-9"));
        assert_eq!(
            fill("site-${cert.subject.ou}/${cert.id}", &cert).as_deref(),
            Some("site-north/abc")
        );
        assert_eq!(fill("${cert.subject.o}", &cert), None);
        assert_eq!(fill("${nope", &cert), None);
        let bad = JitTemplate { thing_name: Some("${thing.name}".into()), ..Default::default() };
        assert!(bad.check().is_err());
        assert!(JitTemplate::default().check().is_ok());
    }
}
