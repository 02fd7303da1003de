//! Device identity and access control.
//!
//! Owns: authenticating a CONNECT (device secret, JWT signed by a registered key, or a
//! client certificate chaining to a registered CA), the credentials, certificates,
//! policies and attachments kept in the meta group (`records`), compiling a connection's
//! policies (`policy`, `access`), slowing down addresses that keep failing, and closing
//! live connections whose credential was revoked. Must not touch: sessions or routing;
//! the connection asks here and acts on the answer.
//!
//! Every decision reads the meta group's applied data, so a node decides from what has
//! been committed. Connections recompile their policies when the meta group applies a
//! change that bears on access (`Groups::access_epoch`).

mod access;
pub mod fleet;
pub mod jit;
pub mod jwt;
mod manage;
pub mod policy;
pub mod records;
pub mod secret;
pub mod tokens;
pub mod x509;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;

pub use access::Access;
use policy::{Policy, Rules, Subject};
use records::{AuthKey, AuthRecord, CertStatus, Credential, CredentialKind, Target};

use crate::broker::{now_ms, ConnQueue, Control};
use crate::config::{AuthConfig, CertIdentity, Config};
use crate::mqtt::ReasonCode;
use crate::raft::{machine, Groups};
use crate::telemetry::Metrics;

/// Failures of identity and access management (admin operations).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("auth storage: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> AuthError {
    AuthError::Storage(e.to_string())
}

/// Why a CONNECT was refused: the CONNACK reason and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub reason: ReasonCode,
    pub label: &'static str,
}

fn refuse(reason: ReasonCode, label: &'static str) -> Refusal {
    Refusal { reason, label }
}

/// What a CONNECT presents.
#[derive(Debug, Clone, Copy)]
pub struct ConnectAuth<'a> {
    pub client_id: &'a str,
    pub password: Option<&'a [u8]>,
    /// The verified TLS client certificate (DER), if any.
    pub cert: Option<&'a [u8]>,
}

/// Who a connection is, once authenticated.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Anonymous access of the quick-start configuration: every permission.
    pub all: bool,
    pub client_id: String,
    /// The credential or certificate id that proved it (for revocation).
    pub credential: Option<String>,
    /// The certificate's id, when it came with one (policies attach to it).
    pub cert_id: Option<String>,
    /// Certificate subject fields, for policy variables.
    pub cert_fields: std::collections::BTreeMap<String, String>,
    /// Connected with a fleet provisioning claim certificate: the provisioning topics
    /// only.
    pub claim: bool,
}

/// A live connection's identity, for closing it when its credential goes.
struct Live {
    credential: String,
    queue: Weak<ConnQueue>,
}

/// Failed connects of one address.
struct Failures {
    since: Instant,
    count: u32,
}

/// Addresses tracked at most; beyond it, stale entries are swept.
const MAX_TRACKED_ADDRESSES: usize = 100_000;

/// The node's identity and access service.
pub struct Auth {
    groups: Arc<Groups>,
    cfg: AuthConfig,
    metrics: Arc<Metrics>,
    /// Parsed policies by name: (version, policy).
    policies: DashMap<String, (u64, Arc<Policy>)>,
    failures: parking_lot::Mutex<HashMap<IpAddr, Failures>>,
    /// The TLS listener's client verifier, if there is a TLS listener.
    verifier: Option<Arc<x509::DynamicVerifier>>,
    /// Anchors from the listener's `client_ca` file: they name devices without
    /// registration.
    static_anchors: Vec<x509::ParsedCert>,
    /// The access epoch the verifier's anchors were built at.
    anchors_epoch: AtomicU64,
    /// Authenticated connections by connection id.
    live: DashMap<u64, Live>,
    /// `admin.root_token_sha256`.
    root_token_sha256: Option<String>,
    /// `admin.audit_keep`.
    audit_keep: u64,
    /// The CA that issues certificates by fleet provisioning, if configured.
    fleet: Option<fleet::FleetCa>,
}

impl Auth {
    /// Builds the service; with a TLS listener, also its client verifier.
    pub fn new(
        groups: Arc<Groups>,
        cfg: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Auth, AuthError> {
        let mut static_anchors = Vec::new();
        let mut verifier = None;
        if let Some(t) = &cfg.listeners.tls {
            if let Some(ca) = &t.client_ca {
                let pem = std::fs::read_to_string(ca)
                    .map_err(|e| AuthError::Invalid(format!("{}: {e}", ca.display())))?;
                for der in rustls_pemfile::certs(&mut pem.as_bytes()) {
                    let der =
                        der.map_err(|e| AuthError::Invalid(format!("{}: {e}", ca.display())))?;
                    static_anchors.push(
                        x509::parse_der(&der)
                            .map_err(|e| AuthError::Invalid(format!("{}: {e}", ca.display())))?,
                    );
                }
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            verifier = Some(Arc::new(x509::DynamicVerifier::new(provider, t.require_client_cert)));
        }
        let auth = Auth {
            groups,
            cfg: cfg.auth.clone(),
            metrics,
            policies: DashMap::new(),
            failures: parking_lot::Mutex::new(HashMap::new()),
            verifier,
            static_anchors,
            anchors_epoch: AtomicU64::new(u64::MAX),
            live: DashMap::new(),
            root_token_sha256: cfg.admin.root_token_sha256.clone(),
            audit_keep: cfg.admin.audit_keep,
            fleet: match (&cfg.provisioning.ca_cert, &cfg.provisioning.ca_key) {
                (Some(c), Some(k)) => Some(fleet::FleetCa::load(c, k)?),
                _ => None,
            },
        };
        auth.refresh_anchors();
        Ok(auth)
    }

    /// The TLS client verifier (anchors kept current by [`Auth::refresh_anchors`]).
    pub fn verifier(&self) -> Option<Arc<x509::DynamicVerifier>> {
        self.verifier.clone()
    }

    /// The epoch of access-relevant changes.
    pub fn epoch(&self) -> u64 {
        self.groups.access_epoch()
    }

    fn meta(&self) -> Result<&sled::Tree, AuthError> {
        self.groups.data(0).ok_or_else(|| storage("no meta group"))
    }

    /// Rebuilds the TLS trust anchors if a change was applied since they were built.
    /// Called before each TLS handshake: an atomic load when nothing changed.
    pub fn refresh_anchors(&self) {
        let Some(v) = &self.verifier else { return };
        let epoch = self.epoch();
        if self.anchors_epoch.swap(epoch, Ordering::AcqRel) == epoch {
            return;
        }
        let mut anchors: Vec<Vec<u8>> = self.static_anchors.iter().map(|a| a.der.clone()).collect();
        anchors.extend(self.fleet.as_ref().map(|f| f.der.clone()));
        match self.cas() {
            Ok(cas) => {
                for ca in cas.iter().filter(|c| c.status == CertStatus::Active) {
                    if let Ok(p) = x509::parse_pem(&ca.pem) {
                        anchors.push(p.der);
                    }
                }
            }
            Err(e) => tracing::error!(message = "cannot read registered CAs", error = %e),
        }
        if let Err(e) = v.set_anchors(&anchors) {
            tracing::error!(message = "TLS trust anchors refused", error = %e);
        }
    }

    /// Waits before looking at a CONNECT from an address that failed too often lately.
    pub async fn pace(&self, addr: IpAddr) {
        let over = {
            let f = self.failures.lock();
            f.get(&addr).is_some_and(|f| {
                f.count >= self.cfg.max_failures_per_address
                    && f.since.elapsed() < Duration::from_secs(self.cfg.failure_window_secs)
            })
        };
        if over {
            self.metrics.auth_throttled.inc();
            tokio::time::sleep(Duration::from_millis(self.cfg.failure_delay_ms)).await;
        }
    }

    /// Counts a refused CONNECT against its address.
    pub fn failed(&self, addr: IpAddr, label: &str) {
        self.metrics.auth_failures.with_label_values(&[label]).inc();
        let window = Duration::from_secs(self.cfg.failure_window_secs);
        let mut f = self.failures.lock();
        if f.len() >= MAX_TRACKED_ADDRESSES {
            f.retain(|_, v| v.since.elapsed() < window);
        }
        let e = f.entry(addr).or_insert(Failures { since: Instant::now(), count: 0 });
        if e.since.elapsed() >= window {
            *e = Failures { since: Instant::now(), count: 0 };
        }
        e.count = e.count.saturating_add(1);
    }

    /// Decides who a CONNECT is, or why it is refused.
    pub async fn authenticate(&self, c: &ConnectAuth<'_>) -> Result<Grant, Refusal> {
        if let Some(der) = c.cert {
            return self.by_certificate(der, c.client_id).await;
        }
        let creds = self.credentials(c.client_id).map_err(unavailable)?;
        let Some(password) = c.password else {
            if creds.is_empty() && self.cfg.allow_anonymous {
                return Ok(Grant::all(c.client_id));
            }
            let label = if creds.is_empty() { "anonymous" } else { "credentials_required" };
            return Err(refuse(ReasonCode::NotAuthorized, label));
        };
        if creds.is_empty() {
            return Err(refuse(ReasonCode::BadUserNameOrPassword, "unknown_device"));
        }
        let now = now_ms();
        let usable = creds.iter().filter(|k| k.expires_ms.is_none_or(|e| e > now));
        if jwt::looks_like_jwt(password) {
            let rules = jwt::Rules {
                now_secs: now / 1000,
                skew_secs: self.cfg.jwt_clock_skew_secs,
                max_lifetime_secs: self.cfg.jwt_max_lifetime_secs,
            };
            let mut why = jwt::JwtError::Signature;
            for cred in usable {
                let CredentialKind::Key(key) = &cred.kind else { continue };
                match jwt::verify(password, std::slice::from_ref(key), c.client_id, rules) {
                    Ok(_) => return Ok(Grant::device(c.client_id, Some(cred.id.clone()))),
                    // The key that signed it says what else is wrong.
                    Err(jwt::JwtError::Signature) => {}
                    Err(e) => why = e,
                }
            }
            return Err(refuse(ReasonCode::BadUserNameOrPassword, why.label()));
        }
        for cred in usable {
            if let CredentialKind::Secret(h) = &cred.kind {
                if secret::verify(h, password) {
                    return Ok(Grant::device(c.client_id, Some(cred.id.clone())));
                }
            }
        }
        Err(refuse(ReasonCode::BadUserNameOrPassword, "bad_secret"))
    }

    /// A verified client certificate: registered and active (with an active CA), or
    /// issued by a `client_ca` anchor; its identity must be the client id.
    async fn by_certificate(&self, der: &[u8], client_id: &str) -> Result<Grant, Refusal> {
        let cert = x509::parse_der(der)
            .map_err(|_| refuse(ReasonCode::NotAuthorized, "bad_certificate"))?;
        let identity = match self.cfg.cert_identity {
            CertIdentity::CommonName => cert.fields.get("cn").cloned(),
            CertIdentity::DnsName => cert.dns.first().cloned(),
        }
        .ok_or(refuse(ReasonCode::NotAuthorized, "certificate_identity"))?;
        let thing = match self.cert(&cert.id).map_err(unavailable)? {
            Some(rec) if rec.claim && rec.status == CertStatus::Active => {
                // Any client id: the device has no identity of its own yet.
                return Ok(Grant {
                    all: false,
                    client_id: client_id.into(),
                    credential: Some(cert.id.clone()),
                    cert_id: Some(cert.id),
                    cert_fields: cert.fields,
                    claim: true,
                });
            }
            Some(rec) => {
                match rec.status {
                    CertStatus::Active => {}
                    CertStatus::Inactive => {
                        return Err(refuse(ReasonCode::NotAuthorized, "certificate_inactive"))
                    }
                    CertStatus::Revoked => {
                        return Err(refuse(ReasonCode::NotAuthorized, "certificate_revoked"))
                    }
                }
                if let Some(ca) = &rec.ca_id {
                    let active = self
                        .ca(ca)
                        .map_err(unavailable)?
                        .is_some_and(|c| c.status == CertStatus::Active);
                    if !active {
                        return Err(refuse(ReasonCode::NotAuthorized, "ca_inactive"));
                    }
                }
                rec.thing.unwrap_or(identity)
            }
            None if self.static_anchors.iter().any(|a| a.subject == cert.issuer) => identity,
            None => {
                // Just in time: an active CA with auto-registration vouches for it.
                let cas = self.cas().map_err(unavailable)?;
                let ca = cas.iter().find(|c| {
                    c.subject == cert.issuer && c.auto_register && c.status == CertStatus::Active
                });
                let Some(ca) = ca else {
                    return Err(refuse(ReasonCode::NotAuthorized, "certificate_unregistered"));
                };
                self.provision_jit(&cert, ca).await.map_err(|e| {
                    tracing::warn!(message = "JIT provisioning failed", error = %e);
                    refuse(ReasonCode::NotAuthorized, "jit_failed")
                })?
            }
        };
        if thing != client_id {
            return Err(refuse(ReasonCode::NotAuthorized, "client_id_mismatch"));
        }
        Ok(Grant {
            all: false,
            client_id: client_id.into(),
            credential: Some(cert.id.clone()),
            cert_id: Some(cert.id),
            cert_fields: cert.fields,
            claim: false,
        })
    }

    /// Remembers an authenticated connection, so revoking its credential closes it. The
    /// entry goes when the returned guard drops.
    pub fn track(
        self: &Arc<Self>,
        conn_id: u64,
        grant: &Grant,
        queue: &Arc<ConnQueue>,
    ) -> Option<Tracked> {
        let credential = grant.credential.clone()?;
        self.live.insert(conn_id, Live { credential, queue: Arc::downgrade(queue) });
        Some(Tracked { auth: self.clone(), conn_id })
    }

    /// Closes every live connection that authenticated with `credential`.
    pub fn close_connections_of(&self, credential: &str) -> usize {
        let mut n = 0;
        for e in self.live.iter().filter(|e| e.credential == credential) {
            if let Some(q) = e.queue.upgrade() {
                if q.order(Control::Kick(ReasonCode::NotAuthorized)) {
                    n += 1;
                }
            }
        }
        self.metrics.auth_revoked_closed.inc_by(n as u64);
        n
    }

    /// The compiled policies of a grant, from the data applied now.
    pub fn rules(&self, g: &Grant) -> Rules {
        match self.load_rules(g) {
            Ok(r) => r,
            Err(e) => {
                // Deny everything rather than guess.
                tracing::error!(message = "cannot read policies", client = %g.client_id, error = %e);
                Rules::default()
            }
        }
    }

    fn load_rules(&self, g: &Grant) -> Result<Rules, AuthError> {
        if g.claim {
            return Ok(Rules::compile([&Policy::claim()], &Subject::default()));
        }
        let meta = self.meta()?;
        let thing = machine::read_thing(meta, &g.client_id).map_err(storage)?;
        let mut targets = vec![Target::Thing(g.client_id.clone())];
        if let Some(t) = &thing {
            targets.extend(t.groups.iter().cloned().map(Target::Group));
        }
        if let Some(c) = &g.cert_id {
            targets.push(Target::Cert(c.clone()));
        }
        let mut policies = Vec::new();
        if self.cfg.device_default_policy {
            policies.push(Arc::new(Policy::device_default()));
        }
        for t in &targets {
            for name in self.attached(t)? {
                if let Some(p) = self.parsed_policy(&name)? {
                    policies.push(p);
                }
            }
        }
        let subject = Subject {
            client_id: g.client_id.clone(),
            thing: thing.map(|t| (t.name, t.attributes)),
            cert: g.cert_fields.clone(),
        };
        Ok(Rules::compile(policies.iter().map(|p| p.as_ref()), &subject))
    }

    /// A stored policy, parsed once per version.
    fn parsed_policy(&self, name: &str) -> Result<Option<Arc<Policy>>, AuthError> {
        let Some(rec) = self.policy(name)? else { return Ok(None) };
        if let Some(p) = self.policies.get(name).filter(|p| p.0 == rec.version) {
            return Ok(Some(p.1.clone()));
        }
        match Policy::parse(&rec.document) {
            Ok(p) => {
                let p = Arc::new(p);
                self.policies.insert(name.into(), (rec.version, p.clone()));
                Ok(Some(p))
            }
            Err(e) => {
                tracing::error!(message = "stored policy does not parse", policy = name, error = %e);
                Ok(None)
            }
        }
    }

    /// Every credential of a thing.
    pub fn credentials(&self, thing: &str) -> Result<Vec<Credential>, AuthError> {
        let mut out = Vec::new();
        for kv in self.meta()?.scan_prefix(records::prefix(&["cred", thing])) {
            let (_, v) = kv.map_err(storage)?;
            if let AuthRecord::Credential(c) = crate::store::decode(&v).map_err(storage)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    fn read(&self, key: &AuthKey) -> Result<Option<AuthRecord>, AuthError> {
        records::read(self.meta()?, key).map_err(storage)
    }
}

fn unavailable(e: AuthError) -> Refusal {
    tracing::error!(message = "authentication storage", error = %e);
    refuse(ReasonCode::ServerUnavailable, "auth_storage")
}

impl Grant {
    fn all(client_id: &str) -> Grant {
        Grant {
            all: true,
            client_id: client_id.into(),
            credential: None,
            cert_id: None,
            cert_fields: Default::default(),
            claim: false,
        }
    }

    fn device(client_id: &str, credential: Option<String>) -> Grant {
        Grant {
            all: false,
            client_id: client_id.into(),
            credential,
            cert_id: None,
            cert_fields: Default::default(),
            claim: false,
        }
    }
}

/// Keeps a connection in the live set; removes it on drop.
pub struct Tracked {
    auth: Arc<Auth>,
    conn_id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.auth.live.remove(&self.conn_id);
    }
}
