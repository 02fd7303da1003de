//! X.509 for device identity: parsing registered CA and device certificates, and the
//! TLS client verifier whose trust anchors are the registered, active CAs (plus the
//! listener's `client_ca` file), swapped in place when a CA is added or deactivated.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate: {0}")]
pub struct X509Error(pub String);

/// What we keep of a parsed certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCert {
    pub der: Vec<u8>,
    /// SHA-256 of the DER, lower-case hex: the certificate's id.
    pub id: String,
    pub subject: String,
    pub issuer: String,
    /// Subject fields by short name (`cn`, `o`, `ou`, `c`, `st`, `l`), first of each.
    pub fields: BTreeMap<String, String>,
    /// DNS names of the subject alternative name extension.
    pub dns: Vec<String>,
    pub is_ca: bool,
    pub not_after_secs: i64,
}

/// SHA-256 of `der`, lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses one DER certificate.
pub fn parse_der(der: &[u8]) -> Result<ParsedCert, X509Error> {
    let (_, c) = X509Certificate::from_der(der).map_err(|e| X509Error(e.to_string()))?;
    let mut fields = BTreeMap::new();
    for rdn in c.subject().iter() {
        for a in rdn.iter() {
            let name = match a.attr_type().to_id_string().as_str() {
                "2.5.4.3" => "cn",
                "2.5.4.10" => "o",
                "2.5.4.11" => "ou",
                "2.5.4.6" => "c",
                "2.5.4.8" => "st",
                "2.5.4.7" => "l",
                _ => continue,
            };
            if let Ok(v) = a.as_str() {
                fields.entry(name.to_string()).or_insert_with(|| v.to_string());
            }
        }
    }
    let mut dns = Vec::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                dns.push(d.to_string());
            }
        }
    }
    Ok(ParsedCert {
        der: der.to_vec(),
        id: fingerprint(der),
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        fields,
        dns,
        is_ca: c.is_ca(),
        not_after_secs: c.validity().not_after.timestamp(),
    })
}

/// Parses the first certificate of a PEM text.
pub fn parse_pem(pem: &str) -> Result<ParsedCert, X509Error> {
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| X509Error("no PEM CERTIFICATE block".into()))?
        .map_err(|e| X509Error(e.to_string()))?;
    parse_der(&der)
}

/// The client verifier of a TLS listener. Its anchors change at run time; a handshake
/// uses the set current when it starts.
#[derive(Debug)]
pub struct DynamicVerifier {
    provider: Arc<CryptoProvider>,
    inner: RwLock<Option<Arc<dyn ClientCertVerifier>>>,
    mandatory: bool,
}

impl DynamicVerifier {
    pub fn new(provider: Arc<CryptoProvider>, mandatory: bool) -> DynamicVerifier {
        DynamicVerifier { provider, inner: RwLock::new(None), mandatory }
    }

    /// Replaces the trust anchors. With none, no client certificate verifies.
    pub fn set_anchors(&self, anchors: &[Vec<u8>]) -> Result<(), X509Error> {
        let mut roots = rustls::RootCertStore::empty();
        for a in anchors {
            roots
                .add(CertificateDer::from(a.clone()))
                .map_err(|e| X509Error(format!("trust anchor: {e}")))?;
        }
        let inner = if roots.is_empty() {
            None
        } else {
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                self.provider.clone(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| X509Error(e.to_string()))?;
            Some(v)
        };
        *self.inner.write() = inner;
        Ok(())
    }
}

impl ClientCertVerifier for DynamicVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Anchors change at run time; clients send the certificate they have.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let inner = self.inner.read().clone();
        match inner {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_fields_and_fingerprint_are_read() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["dev-7.example".into()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "dev-7");
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "Acme");
        let cert = p.self_signed(&key).unwrap();
        let parsed = parse_pem(&cert.pem()).unwrap();
        assert_eq!(parsed.fields.get("cn").map(String::as_str), Some("dev-7"));
        assert_eq!(parsed.fields.get("o").map(String::as_str), Some("Acme"));
        assert_eq!(parsed.dns, vec!["dev-7.example".to_string()]);
        assert_eq!(parsed.id.len(), 64);
        assert_eq!(parsed.id, fingerprint(cert.der()));
        assert!(!parsed.is_ca);
        assert!(parse_pem("garbage").is_err());
    }
}
