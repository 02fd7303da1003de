//! Managing identities and policies: the writes behind the admin API. Each is a
//! compare-and-set `PutAuth` through the meta group; revoking or deactivating a
//! credential also closes the connections that used it.

use super::jwt;
use super::policy::Policy;
use super::records::{
    self, AuthKey, AuthRecord, CaRecord, CertRecord, CertStatus, Credential, CredentialKind,
    PolicyRecord, Target,
};
use super::secret;
use super::x509;
use super::{storage, Auth, AuthError};
use crate::broker::now_ms;
use crate::raft::{machine, Command, Response};

/// Longest policy, credential or certificate name we accept.
const MAX_NAME: usize = 128;

fn check_name(field: &str, n: &str) -> Result<(), AuthError> {
    let ok = !n.is_empty()
        && n.len() <= MAX_NAME
        && n.chars().all(|c| c.is_ascii_alphanumeric() || "_-:.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "{field}: 1 to {MAX_NAME} letters, digits, '_', '-', ':' or '.'"
        )))
    }
}

/// A new credential id: 12 random bytes, hex.
fn new_id() -> Result<String, AuthError> {
    let s = secret::generate().map_err(storage)?;
    Ok(s.chars().filter(char::is_ascii_alphanumeric).take(16).collect())
}

impl Auth {
    pub(super) async fn put(
        &self,
        key: AuthKey,
        expect: Option<u64>,
        value: Option<AuthRecord>,
        what: &str,
    ) -> Result<(), AuthError> {
        match self.groups.write(0, Command::PutAuth { key, expect, value }).await {
            Ok(Response::Applied) => Ok(()),
            Ok(_) => {
                Err(AuthError::Conflict(format!("{what} changed meanwhile or already exists")))
            }
            Err(e) => Err(storage(e)),
        }
    }

    pub(super) fn list<T>(
        &self,
        kind: &str,
        pick: impl Fn(AuthRecord) -> Option<T>,
    ) -> Result<Vec<T>, AuthError> {
        let mut out = Vec::new();
        for kv in self.meta()?.scan_prefix(records::prefix(&[kind])) {
            let (_, v) = kv.map_err(storage)?;
            if let Some(t) = pick(crate::store::decode(&v).map_err(storage)?) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Adds a device secret to a thing: the given one, or a generated one. Returns the
    /// record and the secret, which is not stored and cannot be read again.
    pub async fn add_secret(
        &self,
        thing: &str,
        given: Option<String>,
        expires_ms: Option<u64>,
    ) -> Result<(Credential, String), AuthError> {
        let plain = match given {
            Some(s) => s,
            None => secret::generate().map_err(storage)?,
        };
        let h = secret::hash(&plain, self.cfg.secret_iterations)
            .map_err(|e| AuthError::Invalid(format!("secret: {e}")))?;
        let c = self.add_credential(thing, CredentialKind::Secret(h), expires_ms).await?;
        Ok((c, plain))
    }

    /// Registers a device's public key (PEM), for JWT passwords.
    pub async fn add_key(
        &self,
        thing: &str,
        pem: &str,
        expires_ms: Option<u64>,
    ) -> Result<Credential, AuthError> {
        let key = jwt::parse_public_key(pem)
            .map_err(|e| AuthError::Invalid(format!("publicKey: {e}")))?;
        self.add_credential(thing, CredentialKind::Key(key), expires_ms).await
    }

    async fn add_credential(
        &self,
        thing: &str,
        kind: CredentialKind,
        expires_ms: Option<u64>,
    ) -> Result<Credential, AuthError> {
        if machine::read_thing(self.meta()?, thing).map_err(storage)?.is_none() {
            return Err(AuthError::NotFound(format!("thing {thing}")));
        }
        if self.credentials(thing)?.len() >= 10 {
            return Err(AuthError::Invalid(format!("thing {thing}: at most 10 credentials")));
        }
        let c = Credential {
            id: new_id()?,
            thing: thing.into(),
            kind,
            created_ms: now_ms(),
            expires_ms,
            version: 1,
        };
        let key = AuthKey::Credential { thing: thing.into(), id: c.id.clone() };
        self.put(key, None, Some(AuthRecord::Credential(c.clone())), "credential").await?;
        Ok(c)
    }

    /// Removes a credential and closes the connections that used it.
    pub async fn delete_credential(&self, thing: &str, id: &str) -> Result<(), AuthError> {
        let key = AuthKey::Credential { thing: thing.into(), id: id.into() };
        let Some(rec) = self.read(&key)? else {
            return Err(AuthError::NotFound(format!("credential {id} of thing {thing}")));
        };
        self.put(key, Some(rec.version()), None, "credential").await?;
        self.close_connections_of(id);
        Ok(())
    }

    pub fn policy(&self, name: &str) -> Result<Option<PolicyRecord>, AuthError> {
        Ok(match self.read(&AuthKey::Policy(name.into()))? {
            Some(AuthRecord::Policy(p)) => Some(p),
            _ => None,
        })
    }

    pub fn all_policies(&self) -> Result<Vec<PolicyRecord>, AuthError> {
        self.list("policy", |r| match r {
            AuthRecord::Policy(p) => Some(p),
            _ => None,
        })
    }

    /// Creates or replaces a policy (a new version); connections recompile at once.
    pub async fn put_policy(&self, name: &str, document: &str) -> Result<PolicyRecord, AuthError> {
        check_name("policyName", name)?;
        Policy::parse(document).map_err(|e| AuthError::Invalid(e.0))?;
        let old = self.policy(name)?;
        let p = PolicyRecord {
            name: name.into(),
            document: document.into(),
            created_ms: old.as_ref().map_or_else(now_ms, |o| o.created_ms),
            version: old.as_ref().map_or(1, |o| o.version + 1),
        };
        let expect = old.map(|o| o.version);
        self.put(
            AuthKey::Policy(name.into()),
            expect,
            Some(AuthRecord::Policy(p.clone())),
            "policy",
        )
        .await?;
        Ok(p)
    }

    /// Deletes a policy that is attached nowhere.
    pub async fn delete_policy(&self, name: &str) -> Result<(), AuthError> {
        let Some(p) = self.policy(name)? else {
            return Err(AuthError::NotFound(format!("policy {name}")));
        };
        if self.attachment_count(name)? > 0 {
            return Err(AuthError::Conflict(format!("policy {name} is still attached")));
        }
        self.put(AuthKey::Policy(name.into()), Some(p.version), None, "policy").await
    }

    fn attachment_count(&self, policy: &str) -> Result<usize, AuthError> {
        let mut n = 0;
        for kv in self.meta()?.scan_prefix(records::prefix(&["attach"])) {
            let (k, _) = kv.map_err(storage)?;
            if k.rsplit(|b| *b == 0).next() == Some(policy.as_bytes()) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Names of the policies attached to a target.
    pub fn attached(&self, target: &Target) -> Result<Vec<String>, AuthError> {
        let prefix = records::attachment_prefix(target);
        let mut out = Vec::new();
        for kv in self.meta()?.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(storage)?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Attaches (`attach`) or detaches a policy.
    pub async fn attachment(
        &self,
        target: Target,
        policy: &str,
        attach: bool,
    ) -> Result<(), AuthError> {
        if self.policy(policy)?.is_none() {
            return Err(AuthError::NotFound(format!("policy {policy}")));
        }
        let key = AuthKey::Attachment { target, policy: policy.into() };
        let present = self.read(&key)?.is_some();
        match (attach, present) {
            (true, true) | (false, false) => Ok(()),
            (true, false) => self.put(key, None, Some(AuthRecord::Attachment), "attachment").await,
            (false, true) => self.put(key, Some(0), None, "attachment").await,
        }
    }

    pub fn ca(&self, id: &str) -> Result<Option<CaRecord>, AuthError> {
        Ok(match self.read(&AuthKey::Ca(id.into()))? {
            Some(AuthRecord::Ca(c)) => Some(c),
            _ => None,
        })
    }

    pub fn cas(&self) -> Result<Vec<CaRecord>, AuthError> {
        self.list("ca", |r| match r {
            AuthRecord::Ca(c) => Some(c),
            _ => None,
        })
    }

    /// Registers a CA certificate (active at once).
    pub async fn register_ca(
        &self,
        pem: &str,
        auto_register: bool,
        template: Option<super::jit::JitTemplate>,
    ) -> Result<CaRecord, AuthError> {
        if let Some(t) = &template {
            t.check()?;
        }
        let p = x509::parse_pem(pem)
            .map_err(|e| AuthError::Invalid(format!("caCertificatePem: {e}")))?;
        if !p.is_ca {
            return Err(AuthError::Invalid(
                "caCertificatePem: not a CA certificate (basicConstraints CA:TRUE)".into(),
            ));
        }
        let c = CaRecord {
            id: p.id,
            pem: pem.into(),
            subject: p.subject,
            status: CertStatus::Active,
            auto_register,
            template,
            created_ms: now_ms(),
            version: 1,
        };
        self.put(
            AuthKey::Ca(c.id.clone()),
            None,
            Some(AuthRecord::Ca(c.clone())),
            "CA certificate",
        )
        .await?;
        self.refresh_anchors();
        Ok(c)
    }

    /// Activates or deactivates a CA (revoked is final). Connections through its
    /// certificates are closed when it stops being active.
    pub async fn set_ca_status(&self, id: &str, status: CertStatus) -> Result<CaRecord, AuthError> {
        let Some(mut c) = self.ca(id)? else {
            return Err(AuthError::NotFound(format!("CA certificate {id}")));
        };
        if c.status == CertStatus::Revoked && status != CertStatus::Revoked {
            return Err(AuthError::Conflict("a revoked CA certificate stays revoked".into()));
        }
        let expect = Some(c.version);
        c.status = status;
        c.version += 1;
        self.put(AuthKey::Ca(id.into()), expect, Some(AuthRecord::Ca(c.clone())), "CA certificate")
            .await?;
        self.refresh_anchors();
        if status != CertStatus::Active {
            for cert in self.certs()?.iter().filter(|d| d.ca_id.as_deref() == Some(id)) {
                self.close_connections_of(&cert.id);
            }
        }
        Ok(c)
    }

    pub fn cert(&self, id: &str) -> Result<Option<CertRecord>, AuthError> {
        Ok(match self.read(&AuthKey::Cert(id.into()))? {
            Some(AuthRecord::Cert(c)) => Some(c),
            _ => None,
        })
    }

    pub fn certs(&self) -> Result<Vec<CertRecord>, AuthError> {
        self.list("cert", |r| match r {
            AuthRecord::Cert(c) => Some(c),
            _ => None,
        })
    }

    /// Registers a device certificate issued by a registered CA, for `thing` (default:
    /// the identity it names).
    pub async fn register_cert(
        &self,
        pem: &str,
        thing: Option<String>,
        status: CertStatus,
        claim: bool,
    ) -> Result<CertRecord, AuthError> {
        let p =
            x509::parse_pem(pem).map_err(|e| AuthError::Invalid(format!("certificatePem: {e}")))?;
        let ca = self.cas()?.into_iter().find(|c| c.subject == p.issuer);
        let fleet_issued = self
            .fleet
            .as_ref()
            .and_then(|f| x509::parse_der(&f.der).ok())
            .is_some_and(|f| f.subject == p.issuer);
        if ca.is_none()
            && !fleet_issued
            && !self.static_anchors.iter().any(|a| a.subject == p.issuer)
        {
            return Err(AuthError::Invalid(format!(
                "certificatePem: its issuer {} is not a registered CA",
                p.issuer
            )));
        }
        if let Some(t) = &thing {
            check_name("thingName", t)?;
        }
        let c = CertRecord {
            id: p.id,
            pem: pem.into(),
            subject: p.subject,
            ca_id: ca.map(|c| c.id),
            thing,
            status,
            claim,
            ownership: None,
            created_ms: now_ms(),
            version: 1,
        };
        self.put(
            AuthKey::Cert(c.id.clone()),
            None,
            Some(AuthRecord::Cert(c.clone())),
            "certificate",
        )
        .await?;
        Ok(c)
    }

    /// Changes a device certificate's status; revoked is final. Its live connections
    /// are closed when it stops being active.
    pub async fn set_cert_status(
        &self,
        id: &str,
        status: CertStatus,
    ) -> Result<CertRecord, AuthError> {
        let Some(mut c) = self.cert(id)? else {
            return Err(AuthError::NotFound(format!("certificate {id}")));
        };
        if c.status == CertStatus::Revoked && status != CertStatus::Revoked {
            return Err(AuthError::Conflict("a revoked certificate stays revoked".into()));
        }
        let expect = Some(c.version);
        c.status = status;
        c.version += 1;
        self.put(
            AuthKey::Cert(id.into()),
            expect,
            Some(AuthRecord::Cert(c.clone())),
            "certificate",
        )
        .await?;
        if status != CertStatus::Active {
            self.close_connections_of(id);
        }
        Ok(c)
    }
}
