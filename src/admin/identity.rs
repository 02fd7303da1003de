//! Identity and access endpoints: device credentials (`/api/things/{thing}/credentials`),
//! policies and their attachments (`/api/policies`, `/api/attachments`), CA certificates
//! (`/api/cas`) and device certificates (`/api/certificates`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::api::{parse, ApiError};
use super::identity_api::TemplateList;
use super::identity_api::{
    AttachedPolicies, CaList, CaView, CertList, CertView, CreateCredential, CredentialList,
    CredentialType, CredentialView, PolicyList, PolicyView, PutPolicy, RegisterCa, RegisterCert,
    SetStatus,
};
use super::{error, AdminState};
use crate::auth::fleet::ProvisioningTemplate;
use crate::auth::records::{CertStatus, Target};
use crate::auth::AuthError;
use crate::shadow::topics::{valid_name, MAX_THING_NAME};

fn bad(m: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", &m.into())
}

fn fail(e: AuthError) -> Response {
    match e {
        AuthError::Invalid(m) => bad(m),
        AuthError::NotFound(m) => {
            error(StatusCode::NOT_FOUND, "not_found", &format!("{m} not found"))
        }
        AuthError::Conflict(m) => error(StatusCode::CONFLICT, "conflict", &m),
        AuthError::Storage(m) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &m),
    }
}

fn check_thing(thing: &str) -> Result<(), String> {
    if valid_name(thing, MAX_THING_NAME) {
        Ok(())
    } else {
        Err("thing: 1 to 128 letters, digits, ':', '_' or '-'".into())
    }
}

/// Adds a credential to a thing: a device secret (the answer shows it once) or a
/// public key for JWT passwords.
#[utoipa::path(post, path = "/api/things/{thing}/credentials", tag = "identity",
    params(("thing" = String, Path, description = "thing name")),
    request_body = CreateCredential,
    responses((status = 201, body = CredentialView), (status = 400, body = ApiError)))]
pub async fn create_credential(
    State(s): State<AdminState>,
    Path(thing): Path<String>,
    b: axum::body::Bytes,
) -> Response {
    if let Err(m) = check_thing(&thing) {
        return bad(m);
    }
    let v: CreateCredential = match parse(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    let created = match v.kind {
        None => return bad("type: required (secret or publicKey)"),
        Some(CredentialType::Secret) => {
            s.auth.add_secret(&thing, v.secret, v.expires_at).await.map(|(c, secret)| {
                let mut view = CredentialView::from(&c);
                view.secret = Some(secret);
                view
            })
        }
        Some(CredentialType::PublicKey) => match v.public_key_pem {
            None => return bad("publicKeyPem: required for type publicKey"),
            Some(pem) => {
                s.auth.add_key(&thing, &pem, v.expires_at).await.map(|c| CredentialView::from(&c))
            }
        },
    };
    match created {
        Ok(view) => (StatusCode::CREATED, Json(view)).into_response(),
        Err(e) => fail(e),
    }
}

/// A thing's credentials (never the secrets).
#[utoipa::path(get, path = "/api/things/{thing}/credentials", tag = "identity",
    params(("thing" = String, Path, description = "thing name")),
    responses((status = 200, body = CredentialList)))]
pub async fn list_credentials(State(s): State<AdminState>, Path(thing): Path<String>) -> Response {
    match s.auth.credentials(&thing) {
        Ok(c) => Json(CredentialList { credentials: c.iter().map(CredentialView::from).collect() })
            .into_response(),
        Err(e) => fail(e),
    }
}

/// Removes a credential; connections that authenticated with it are closed.
#[utoipa::path(delete, path = "/api/things/{thing}/credentials/{id}", tag = "identity",
    params(("thing" = String, Path, description = "thing name"),
        ("id" = String, Path, description = "credential id")),
    responses((status = 204), (status = 404, body = ApiError)))]
pub async fn delete_credential(
    State(s): State<AdminState>,
    Path((thing, id)): Path<(String, String)>,
) -> Response {
    match s.auth.delete_credential(&thing, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => fail(e),
    }
}

/// Creates or replaces a policy (each replacement is a new version). Connections
/// recompile their rules at once.
#[utoipa::path(put, path = "/api/policies/{name}", tag = "identity",
    params(("name" = String, Path, description = "policy name")),
    request_body = PutPolicy,
    responses((status = 200, body = PolicyView), (status = 400, body = ApiError)))]
pub async fn put_policy(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    b: axum::body::Bytes,
) -> Response {
    let v: PutPolicy = match parse(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    let Some(doc) = v.document else { return bad("document: required") };
    match s.auth.put_policy(&name, &doc.to_string()).await {
        Ok(p) => Json(PolicyView::from(&p)).into_response(),
        Err(e) => fail(e),
    }
}

/// Every policy.
#[utoipa::path(get, path = "/api/policies", tag = "identity",
    responses((status = 200, body = PolicyList)))]
pub async fn list_policies(State(s): State<AdminState>) -> Response {
    match s.auth.all_policies() {
        Ok(p) => {
            Json(PolicyList { policies: p.iter().map(PolicyView::from).collect() }).into_response()
        }
        Err(e) => fail(e),
    }
}

/// One policy.
#[utoipa::path(get, path = "/api/policies/{name}", tag = "identity",
    params(("name" = String, Path, description = "policy name")),
    responses((status = 200, body = PolicyView), (status = 404, body = ApiError)))]
pub async fn get_policy(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.auth.policy(&name) {
        Ok(Some(p)) => Json(PolicyView::from(&p)).into_response(),
        Ok(None) => fail(AuthError::NotFound(format!("policy {name}"))),
        Err(e) => fail(e),
    }
}

/// Deletes a policy that is attached nowhere (409 otherwise).
#[utoipa::path(delete, path = "/api/policies/{name}", tag = "identity",
    params(("name" = String, Path, description = "policy name")),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn delete_policy(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.auth.delete_policy(&name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => fail(e),
    }
}

fn target(kind: &str, name: String) -> Result<Target, String> {
    match kind {
        "thing" => Ok(Target::Thing(name)),
        "group" => Ok(Target::Group(name)),
        "certificate" => Ok(Target::Cert(name)),
        _ => Err("kind: thing, group or certificate".into()),
    }
}

async fn attachment(
    s: AdminState,
    policy: String,
    kind: String,
    name: String,
    on: bool,
) -> Response {
    let t = match target(&kind, name) {
        Ok(t) => t,
        Err(m) => return bad(m),
    };
    match s.auth.attachment(t, &policy, on).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => fail(e),
    }
}

/// Attaches a policy to a thing, a thing group or a certificate.
#[utoipa::path(put, path = "/api/policies/{name}/attachments/{kind}/{target}", tag = "identity",
    params(("name" = String, Path, description = "policy name"),
        ("kind" = String, Path, description = "thing, group or certificate"),
        ("target" = String, Path, description = "thing or group name, or certificate id")),
    responses((status = 204), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn attach(
    State(s): State<AdminState>,
    Path((policy, kind, name)): Path<(String, String, String)>,
) -> Response {
    attachment(s, policy, kind, name, true).await
}

/// Detaches a policy.
#[utoipa::path(delete, path = "/api/policies/{name}/attachments/{kind}/{target}", tag = "identity",
    params(("name" = String, Path, description = "policy name"),
        ("kind" = String, Path, description = "thing, group or certificate"),
        ("target" = String, Path, description = "thing or group name, or certificate id")),
    responses((status = 204), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn detach(
    State(s): State<AdminState>,
    Path((policy, kind, name)): Path<(String, String, String)>,
) -> Response {
    attachment(s, policy, kind, name, false).await
}

/// The policies attached to a thing, a group or a certificate.
#[utoipa::path(get, path = "/api/attachments/{kind}/{target}", tag = "identity",
    params(("kind" = String, Path, description = "thing, group or certificate"),
        ("target" = String, Path, description = "thing or group name, or certificate id")),
    responses((status = 200, body = AttachedPolicies), (status = 400, body = ApiError)))]
pub async fn attached(
    State(s): State<AdminState>,
    Path((kind, name)): Path<(String, String)>,
) -> Response {
    let t = match target(&kind, name) {
        Ok(t) => t,
        Err(m) => return bad(m),
    };
    match s.auth.attached(&t) {
        Ok(policy_names) => Json(AttachedPolicies { policy_names }).into_response(),
        Err(e) => fail(e),
    }
}

/// Registers a CA certificate (active at once): client certificates it issued and that
/// are registered are accepted over mTLS.
#[utoipa::path(post, path = "/api/cas", tag = "identity", request_body = RegisterCa,
    responses((status = 201, body = CaView), (status = 400, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn register_ca(State(s): State<AdminState>, b: axum::body::Bytes) -> Response {
    let v: RegisterCa = match parse(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    let Some(pem) = v.ca_certificate_pem else { return bad("caCertificatePem: required") };
    let auto = v.auto_register.unwrap_or(false);
    match s.auth.register_ca(&pem, auto, v.provisioning_template).await {
        Ok(c) => (StatusCode::CREATED, Json(CaView::from(&c))).into_response(),
        Err(e) => fail(e),
    }
}

/// Every registered CA certificate.
#[utoipa::path(get, path = "/api/cas", tag = "identity", responses((status = 200, body = CaList)))]
pub async fn list_cas(State(s): State<AdminState>) -> Response {
    match s.auth.cas() {
        Ok(c) => {
            Json(CaList { certificates: c.iter().map(CaView::from).collect() }).into_response()
        }
        Err(e) => fail(e),
    }
}

fn status_of(b: &[u8]) -> Result<CertStatus, String> {
    let v: SetStatus = parse(b)?;
    v.status.ok_or_else(|| "status: required (ACTIVE, INACTIVE or REVOKED)".into())
}

/// Activates, deactivates or revokes a CA certificate. Connections through the
/// certificates it issued are closed when it stops being active.
#[utoipa::path(patch, path = "/api/cas/{id}", tag = "identity", request_body = SetStatus,
    params(("id" = String, Path, description = "certificate id (SHA-256 of the DER, hex)")),
    responses((status = 200, body = CaView), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn set_ca_status(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    b: axum::body::Bytes,
) -> Response {
    let status = match status_of(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    match s.auth.set_ca_status(&id, status).await {
        Ok(c) => Json(CaView::from(&c)).into_response(),
        Err(e) => fail(e),
    }
}

/// Registers a device certificate issued by a registered CA.
#[utoipa::path(post, path = "/api/certificates", tag = "identity", request_body = RegisterCert,
    responses((status = 201, body = CertView), (status = 400, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn register_cert(State(s): State<AdminState>, b: axum::body::Bytes) -> Response {
    let v: RegisterCert = match parse(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    let Some(pem) = v.certificate_pem else { return bad("certificatePem: required") };
    let status = v.status.unwrap_or(CertStatus::Active);
    match s.auth.register_cert(&pem, v.thing_name, status, v.claim.unwrap_or(false)).await {
        Ok(c) => (StatusCode::CREATED, Json(CertView::from(&c))).into_response(),
        Err(e) => fail(e),
    }
}

/// Every registered device certificate.
#[utoipa::path(get, path = "/api/certificates", tag = "identity",
    responses((status = 200, body = CertList)))]
pub async fn list_certs(State(s): State<AdminState>) -> Response {
    match s.auth.certs() {
        Ok(c) => {
            Json(CertList { certificates: c.iter().map(CertView::from).collect() }).into_response()
        }
        Err(e) => fail(e),
    }
}

/// One device certificate.
#[utoipa::path(get, path = "/api/certificates/{id}", tag = "identity",
    params(("id" = String, Path, description = "certificate id (SHA-256 of the DER, hex)")),
    responses((status = 200, body = CertView), (status = 404, body = ApiError)))]
pub async fn get_cert(State(s): State<AdminState>, Path(id): Path<String>) -> Response {
    match s.auth.cert(&id) {
        Ok(Some(c)) => Json(CertView::from(&c)).into_response(),
        Ok(None) => fail(AuthError::NotFound(format!("certificate {id}"))),
        Err(e) => fail(e),
    }
}

/// Activates, deactivates or revokes a device certificate (revoked is final). Its live
/// connections are closed when it stops being active.
#[utoipa::path(patch, path = "/api/certificates/{id}", tag = "identity", request_body = SetStatus,
    params(("id" = String, Path, description = "certificate id (SHA-256 of the DER, hex)")),
    responses((status = 200, body = CertView), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn set_cert_status(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    b: axum::body::Bytes,
) -> Response {
    let status = match status_of(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    match s.auth.set_cert_status(&id, status).await {
        Ok(c) => Json(CertView::from(&c)).into_response(),
        Err(e) => fail(e),
    }
}

/// Creates or replaces a fleet provisioning template.
#[utoipa::path(put, path = "/api/provisioning-templates/{name}", tag = "identity",
    params(("name" = String, Path, description = "template name")),
    request_body = ProvisioningTemplate,
    responses((status = 200, body = ProvisioningTemplate), (status = 400, body = ApiError)))]
pub async fn put_template(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    b: axum::body::Bytes,
) -> Response {
    let t: ProvisioningTemplate = match parse(&b) {
        Ok(v) => v,
        Err(m) => return bad(m),
    };
    match s.auth.put_template(&name, t).await {
        Ok(t) => Json(t).into_response(),
        Err(e) => fail(e),
    }
}

/// Every fleet provisioning template.
#[utoipa::path(get, path = "/api/provisioning-templates", tag = "identity",
    responses((status = 200, body = TemplateList)))]
pub async fn list_templates(State(s): State<AdminState>) -> Response {
    match s.auth.templates() {
        Ok(templates) => Json(TemplateList { templates }).into_response(),
        Err(e) => fail(e),
    }
}

/// One fleet provisioning template.
#[utoipa::path(get, path = "/api/provisioning-templates/{name}", tag = "identity",
    params(("name" = String, Path, description = "template name")),
    responses((status = 200, body = ProvisioningTemplate), (status = 404, body = ApiError)))]
pub async fn get_template(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.auth.template(&name) {
        Ok(Some(t)) => Json(t).into_response(),
        Ok(None) => fail(AuthError::NotFound(format!("template {name}"))),
        Err(e) => fail(e),
    }
}

/// Deletes a fleet provisioning template.
#[utoipa::path(delete, path = "/api/provisioning-templates/{name}", tag = "identity",
    params(("name" = String, Path, description = "template name")),
    responses((status = 204), (status = 404, body = ApiError)))]
pub async fn delete_template(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    match s.auth.delete_template(&name).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => fail(e),
    }
}
