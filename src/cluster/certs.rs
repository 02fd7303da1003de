//! Cluster certificates and the TLS side of the cluster transport.
//!
//! Owns: making a development CA and node certificates (`homeport ctl certs init`, rcgen),
//! loading a node's certificates, and the rustls configurations QUIC runs on: TLS 1.3
//! only, no 0-RTT (early data can be replayed and may arrive before the client
//! certificate is checked), mutual authentication against the cluster CA.
//!
//! A node's certificate names it `node-{id}.{cluster}` (a DNS name). The dialing side
//! asks for that name, so rustls refuses a peer that is not the node it meant to reach or
//! belongs to another cluster; the accepting side reads the dialer's node id from its
//! client certificate ([`peer_node_id`]) and the transport checks it against the hello.
//! With `cluster.insecure_dev` no CA is involved: a node makes a throwaway self-signed
//! certificate, accepts any server certificate and asks for no client certificate, so
//! identity rests on the hello alone. That mode is for development and says so loudly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// ALPN of the cluster protocol; a peer speaking anything else fails the handshake.
pub const ALPN: &[u8] = b"homeport-cluster/1";

/// Why certificates could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("certificate generation: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

fn gen_err(e: impl std::fmt::Display) -> CertError {
    CertError::Generate(e.to_string())
}

fn tls_err(e: impl std::fmt::Display) -> CertError {
    CertError::Tls(e.to_string())
}

/// The DNS name a node's certificate carries.
pub fn node_name(cluster: &str, id: u64) -> String {
    format!("node-{id}.{cluster}")
}

/// The node id in `name` if it is a node name of `cluster`.
pub fn parse_node_name(cluster: &str, name: &str) -> Option<u64> {
    let rest = name.strip_prefix("node-")?;
    let (id, c) = rest.split_once('.')?;
    if c != cluster || id.starts_with('0') {
        return None;
    }
    id.parse().ok().filter(|id| *id != 0)
}

/// A CA and node certificates in PEM.
pub struct Generated {
    pub ca_cert: String,
    pub ca_key: String,
    /// (node id, certificate, key).
    pub nodes: Vec<(u64, String, String)>,
}

fn ca_params(cluster: &str) -> Result<rcgen::CertificateParams, CertError> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("homeport cluster CA ({cluster})"));
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    Ok(p)
}

fn node_cert(
    cluster: &str,
    id: u64,
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
) -> Result<(String, String), CertError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut p = rcgen::CertificateParams::new(vec![node_name(cluster, id)]).map_err(gen_err)?;
    p.distinguished_name.push(rcgen::DnType::CommonName, node_name(cluster, id));
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, issuer).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new CA for `cluster` and a certificate for each node id.
pub fn generate(cluster: &str, ids: &[u64]) -> Result<Generated, CertError> {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let params = ca_params(cluster)?;
    let ca = params.self_signed(&ca_key).map_err(gen_err)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = rcgen::Issuer::new(params, ca_key);
    let mut nodes = Vec::with_capacity(ids.len());
    for &id in ids {
        let (c, k) = node_cert(cluster, id, &issuer)?;
        nodes.push((id, c, k));
    }
    Ok(Generated { ca_cert: ca.pem(), ca_key: ca_key_pem, nodes })
}

/// A certificate for node `id` from an existing CA (PEM texts).
pub fn issue(
    ca_cert: &str,
    ca_key: &str,
    cluster: &str,
    id: u64,
) -> Result<(String, String), CertError> {
    let kp = rcgen::KeyPair::from_pem(ca_key).map_err(gen_err)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_cert, kp).map_err(gen_err)?;
    node_cert(cluster, id, &issuer)
}

fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.to_path_buf(), source };
    std::fs::write(path, text).map_err(io)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

/// Writes `ca.pem`, `ca.key`, `node-{id}.pem` and `node-{id}.key` into `dir` (keys
/// readable by the owner only). Returns the files written.
pub fn write_dir(dir: &Path, g: &Generated) -> Result<Vec<PathBuf>, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io { path: dir.into(), source })?;
    let mut out = Vec::new();
    if !g.ca_key.is_empty() {
        for (name, text, secret) in [("ca.pem", &g.ca_cert, false), ("ca.key", &g.ca_key, true)] {
            let p = dir.join(name);
            write_file(&p, text, secret)?;
            out.push(p);
        }
    }
    for (id, cert, key) in &g.nodes {
        for (name, text, secret) in
            [(format!("node-{id}.pem"), cert, false), (format!("node-{id}.key"), key, true)]
        {
            let p = dir.join(name);
            write_file(&p, text, secret)?;
            out.push(p);
        }
    }
    Ok(out)
}

/// A node's loaded certificates.
pub struct Identity {
    pub roots: Arc<rustls::RootCertStore>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    fn clone_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Io { path: path.to_path_buf(), source })
}

/// Loads the CA, this node's certificate chain and key, and checks that the certificate
/// names node `id` of `cluster`.
pub fn load(
    ca: &Path,
    cert: &Path,
    key: &Path,
    cluster: &str,
    id: u64,
) -> Result<Identity, CertError> {
    let invalid = |path: &Path, reason: String| CertError::Invalid { path: path.into(), reason };
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut read_pem(ca)?.as_slice()) {
        let c = c.map_err(|e| invalid(ca, e.to_string()))?;
        roots.add(c).map_err(|e| invalid(ca, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(invalid(ca, "no certificate in the file".into()));
    }
    let chain: Vec<_> = rustls_pemfile::certs(&mut read_pem(cert)?.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(cert, e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(invalid(cert, "no certificate in the file".into()));
    };
    match names_in(leaf).iter().find_map(|n| parse_node_name(cluster, n)) {
        Some(found) if found == id => {}
        Some(found) => {
            return Err(invalid(cert, format!("is node {found}'s certificate, this is node {id}")))
        }
        None => {
            return Err(invalid(
                cert,
                format!(
                    "names no node of cluster {cluster:?} (expected {})",
                    node_name(cluster, id)
                ),
            ))
        }
    }
    let key_der = rustls_pemfile::private_key(&mut read_pem(key)?.as_slice())
        .map_err(|e| invalid(key, e.to_string()))?
        .ok_or_else(|| invalid(key, "no private key in the file".into()))?;
    Ok(Identity { roots: Arc::new(roots), chain, key: key_der })
}

/// A throwaway self-signed identity for `cluster.insecure_dev`.
pub fn insecure_identity(cluster: &str, id: u64) -> Result<Identity, CertError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let p = rcgen::CertificateParams::new(vec![node_name(cluster, id)]).map_err(gen_err)?;
    let cert = p.self_signed(&key).map_err(gen_err)?;
    let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(gen_err)?;
    Ok(Identity {
        roots: Arc::new(rustls::RootCertStore::empty()),
        chain: vec![cert.der().clone()],
        key,
    })
}

/// DNS names (subject alternative names) of a certificate.
fn names_in(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// The node id a peer's (already verified) certificate names in `cluster`.
pub fn peer_node_id(chain: &[CertificateDer<'_>], cluster: &str) -> Option<u64> {
    names_in(chain.first()?).iter().find_map(|n| parse_node_name(cluster, n))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The accepting side: TLS 1.3, ALPN [`ALPN`], client certificates required and
/// verified against the cluster CA (none asked for in insecure mode).
pub fn server_config(id: &Identity, insecure: bool) -> Result<rustls::ServerConfig, CertError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?;
    let builder = if insecure {
        builder.with_no_client_auth()
    } else {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            id.roots.clone(),
            provider(),
        )
        .build()
        .map_err(tls_err)?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut cfg = builder.with_single_cert(id.chain.clone(), id.clone_key()).map_err(tls_err)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// The dialing side: TLS 1.3, ALPN [`ALPN`], the server verified against the cluster CA
/// for the name the dialer asks for, this node's certificate as client certificate.
pub fn client_config(id: &Identity, insecure: bool) -> Result<rustls::ClientConfig, CertError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?;
    let mut cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(id.roots.clone())
            .with_client_auth_cert(id.chain.clone(), id.clone_key())
            .map_err(tls_err)?
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_early_data = false;
    Ok(cfg)
}

/// Like [`client_config`], but for dialing an address whose node id is not known yet
/// (joining through `cluster.join`): the server may be any node of `cluster` whose
/// certificate the cluster CA issued. The hello then says which node it is.
pub fn any_node_client_config(
    id: &Identity,
    cluster: &str,
    insecure: bool,
) -> Result<rustls::ClientConfig, CertError> {
    if insecure {
        return client_config(id, true);
    }
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(id.roots.clone(), provider())
            .build()
            .map_err(tls_err)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyNodeOf { inner, cluster: cluster.into() }))
        .with_client_auth_cert(id.chain.clone(), id.clone_key())
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.enable_early_data = false;
    Ok(cfg)
}

/// Verifies a server's chain against the cluster CA for the node name its own
/// certificate carries, provided that name is a node of this cluster.
#[derive(Debug)]
struct AnyNodeOf {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    cluster: String,
}

impl ServerCertVerifier for AnyNodeOf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = names_in(end_entity)
            .into_iter()
            .find(|n| parse_node_name(&self.cluster, n).is_some())
            .ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))?;
        let name = ServerName::try_from(name).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        self.inner.verify_server_cert(end_entity, intermediates, &name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `cluster.insecure_dev`: accepts any server certificate, but still checks that the
/// handshake is signed by the key of the certificate presented.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_round_trip_and_reject_others() {
        assert_eq!(node_name("prod", 3), "node-3.prod");
        assert_eq!(parse_node_name("prod", "node-3.prod"), Some(3));
        for bad in ["node-3.dev", "node-0.prod", "node-03.prod", "node-x.prod", "3.prod", "node-3"]
        {
            assert_eq!(parse_node_name("prod", bad), None, "{bad}");
        }
    }

    #[test]
    fn generated_certificates_load_for_their_node_only() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate("prod", &[1, 2]).unwrap();
        write_dir(dir.path(), &g).unwrap();
        let p = |n: &str| dir.path().join(n);
        let id = load(&p("ca.pem"), &p("node-1.pem"), &p("node-1.key"), "prod", 1).unwrap();
        assert_eq!(peer_node_id(&id.chain, "prod"), Some(1));
        assert_eq!(peer_node_id(&id.chain, "dev"), None);
        let e = load(&p("ca.pem"), &p("node-1.pem"), &p("node-1.key"), "prod", 2).err().unwrap();
        assert!(e.to_string().contains("node 1's certificate"), "{e}");
        let e = load(&p("ca.pem"), &p("node-1.pem"), &p("node-1.key"), "dev", 1).err().unwrap();
        assert!(e.to_string().contains("names no node of cluster"), "{e}");
        // A later node from the same CA.
        let (c, k) = issue(&g.ca_cert, &g.ca_key, "prod", 4).unwrap();
        write_dir(
            dir.path(),
            &Generated { ca_cert: String::new(), ca_key: String::new(), nodes: vec![(4, c, k)] },
        )
        .unwrap();
        load(&p("ca.pem"), &p("node-4.pem"), &p("node-4.key"), "prod", 4).unwrap();
        server_config(&id, false).unwrap();
        client_config(&id, false).unwrap();
    }
}
