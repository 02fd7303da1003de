//! Signed device tokens: the MQTT password is a JWT (`ES256` or `EdDSA`) whose `sub` is
//! the client id, signed by a key whose public half is registered for the thing (as Google
//! Cloud IoT Core did). Pure; no I/O.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer;

/// base64url, with or without padding (encoders differ).
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Longest token looked at.
pub const MAX_TOKEN_LEN: usize = 4096;

/// A signature algorithm of a registered device key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAlg {
    /// ECDSA P-256 with SHA-256 (JWT `ES256`).
    Es256,
    /// Ed25519 (JWT `EdDSA`).
    Ed25519,
}

impl KeyAlg {
    pub fn jwt_name(self) -> &'static str {
        match self {
            KeyAlg::Es256 => "ES256",
            KeyAlg::Ed25519 => "EdDSA",
        }
    }
}

/// A registered public key: the algorithm and the raw key ring verifies with (an
/// uncompressed P-256 point, or 32 Ed25519 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKey {
    pub alg: KeyAlg,
    pub raw: Vec<u8>,
}

/// Why a key or a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("public key: {0}")]
    Key(String),
    #[error("token is not a JWT")]
    Format,
    #[error("token algorithm {0:?} is not ES256 or EdDSA")]
    Algorithm(String),
    #[error("token signature does not verify with a registered key")]
    Signature,
    #[error("token sub is not the client id")]
    Subject,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (iat in the future)")]
    NotYetValid,
    #[error("token lives longer than allowed")]
    TooLong,
}

impl JwtError {
    /// A metric label.
    pub fn label(&self) -> &'static str {
        match self {
            JwtError::Key(_) | JwtError::Format | JwtError::Algorithm(_) => "bad_token",
            JwtError::Signature => "bad_signature",
            JwtError::Subject => "token_subject",
            JwtError::Expired => "token_expired",
            JwtError::NotYetValid => "token_not_yet_valid",
            JwtError::TooLong => "token_lifetime",
        }
    }
}

/// Parses a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of a P-256 or Ed25519 key.
pub fn parse_public_key(pem: &str) -> Result<DeviceKey, JwtError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| JwtError::Key(format!("not PEM: {e}")))?;
    if block.label != "PUBLIC KEY" {
        return Err(JwtError::Key(format!("expected PUBLIC KEY, found {}", block.label)));
    }
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&block.contents)
        .map_err(|e| JwtError::Key(format!("not a SubjectPublicKeyInfo: {e}")))?;
    spki_key(&spki)
}

/// The device key of a SubjectPublicKeyInfo (also used for certificate keys).
pub fn spki_key(spki: &x509_parser::x509::SubjectPublicKeyInfo) -> Result<DeviceKey, JwtError> {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
    let alg = &spki.algorithm;
    let raw = spki.subject_public_key.data.to_vec();
    if alg.algorithm == OID_SIG_ED25519 && raw.len() == 32 {
        return Ok(DeviceKey { alg: KeyAlg::Ed25519, raw });
    }
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
        if curve.as_ref() == Some(&OID_EC_P256) && raw.len() == 65 && raw[0] == 4 {
            return Ok(DeviceKey { alg: KeyAlg::Es256, raw });
        }
        return Err(JwtError::Key("only the P-256 curve is accepted".into()));
    }
    Err(JwtError::Key("only P-256 (ES256) and Ed25519 keys are accepted".into()))
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    iat: Option<u64>,
    exp: Option<u64>,
}

/// What the clock and the configuration allow.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub now_secs: u64,
    /// Clock difference tolerated at both ends.
    pub skew_secs: u64,
    /// Longest `exp - iat` accepted.
    pub max_lifetime_secs: u64,
}

/// Whether `token` looks like a JWT at all (three base64url parts, header first).
pub fn looks_like_jwt(token: &[u8]) -> bool {
    token.starts_with(b"eyJ") && token.iter().filter(|b| **b == b'.').count() == 2
}

/// Verifies `token` for `client_id` against the thing's keys; `Ok` carries the expiry.
pub fn verify(
    token: &[u8],
    keys: &[DeviceKey],
    client_id: &str,
    rules: Rules,
) -> Result<u64, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Format);
    }
    let text = std::str::from_utf8(token).map_err(|_| JwtError::Format)?;
    let mut parts = text.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Format);
    };
    let header: Header = serde_json::from_slice(&B64.decode(h).map_err(|_| JwtError::Format)?)
        .map_err(|_| JwtError::Format)?;
    let alg = match header.alg.as_str() {
        "ES256" => KeyAlg::Es256,
        "EdDSA" => KeyAlg::Ed25519,
        other => return Err(JwtError::Algorithm(other.chars().take(16).collect())),
    };
    let sig = B64.decode(s).map_err(|_| JwtError::Format)?;
    let signed = &text.as_bytes()[..h.len() + 1 + c.len()];
    let ok = keys.iter().filter(|k| k.alg == alg).any(|k| {
        let algo: &dyn ring::signature::VerificationAlgorithm = match alg {
            KeyAlg::Es256 => &ECDSA_P256_SHA256_FIXED,
            KeyAlg::Ed25519 => &ED25519,
        };
        UnparsedPublicKey::new(algo, &k.raw).verify(signed, &sig).is_ok()
    });
    if !ok {
        return Err(JwtError::Signature);
    }
    // Claims are read only once the signature holds.
    let claims: Claims = serde_json::from_slice(&B64.decode(c).map_err(|_| JwtError::Format)?)
        .map_err(|_| JwtError::Format)?;
    if claims.sub.as_deref() != Some(client_id) {
        return Err(JwtError::Subject);
    }
    let (Some(iat), Some(exp)) = (claims.iat, claims.exp) else {
        return Err(JwtError::Format);
    };
    if iat > rules.now_secs.saturating_add(rules.skew_secs) {
        return Err(JwtError::NotYetValid);
    }
    if exp.saturating_add(rules.skew_secs) <= rules.now_secs {
        return Err(JwtError::Expired);
    }
    if exp.saturating_sub(iat) > rules.max_lifetime_secs {
        return Err(JwtError::TooLong);
    }
    Ok(exp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn sign(alg: &str, claims: &str, signer: &dyn Fn(&[u8]) -> Vec<u8>) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let h = e.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let c = e.encode(claims);
        let input = format!("{h}.{c}");
        let s = e.encode(signer(input.as_bytes()));
        format!("{input}.{s}")
    }

    fn rules(now: u64) -> Rules {
        Rules { now_secs: now, skew_secs: 60, max_lifetime_secs: 86_400 }
    }

    #[test]
    fn es256_and_ed25519_tokens_verify_for_their_subject_only() {
        let rng = SystemRandom::new();
        let p = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, p.as_ref(), &rng).unwrap();
        let ec_key = DeviceKey { alg: KeyAlg::Es256, raw: ec.public_key().as_ref().to_vec() };
        let claims = r#"{"sub":"dev1","iat":1000,"exp":4600}"#;
        let t = sign("ES256", claims, &|m| ec.sign(&rng, m).unwrap().as_ref().to_vec());
        assert!(looks_like_jwt(t.as_bytes()));
        assert_eq!(
            verify(t.as_bytes(), std::slice::from_ref(&ec_key), "dev1", rules(2000)),
            Ok(4600)
        );
        assert_eq!(
            verify(t.as_bytes(), std::slice::from_ref(&ec_key), "dev2", rules(2000)),
            Err(JwtError::Subject)
        );
        assert_eq!(
            verify(t.as_bytes(), std::slice::from_ref(&ec_key), "dev1", rules(4700)),
            Err(JwtError::Expired)
        );
        assert_eq!(
            verify(t.as_bytes(), std::slice::from_ref(&ec_key), "dev1", rules(900)),
            Err(JwtError::NotYetValid)
        );

        let p = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(p.as_ref()).unwrap();
        let ed_key = DeviceKey { alg: KeyAlg::Ed25519, raw: ed.public_key().as_ref().to_vec() };
        let t = sign("EdDSA", claims, &|m| ed.sign(m).as_ref().to_vec());
        let both = [ec_key.clone(), ed_key];
        assert_eq!(verify(t.as_bytes(), &both, "dev1", rules(2000)), Ok(4600));
        // The other key does not verify it.
        assert_eq!(verify(t.as_bytes(), &[ec_key], "dev1", rules(2000)), Err(JwtError::Signature));
    }

    #[test]
    fn tampered_unsigned_and_overlong_tokens_are_refused() {
        let rng = SystemRandom::new();
        let p = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(p.as_ref()).unwrap();
        let key = DeviceKey { alg: KeyAlg::Ed25519, raw: ed.public_key().as_ref().to_vec() };
        let t = sign("EdDSA", r#"{"sub":"d","iat":1000,"exp":2000}"#, &|m| {
            ed.sign(m).as_ref().to_vec()
        });
        let parts: Vec<&str> = t.split('.').collect();
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            e.encode(r#"{"sub":"x","iat":1000,"exp":2000}"#),
            parts[2]
        );
        assert_eq!(
            verify(forged.as_bytes(), std::slice::from_ref(&key), "x", rules(1500)),
            Err(JwtError::Signature)
        );
        let none = sign("none", r#"{"sub":"d","iat":1000,"exp":2000}"#, &|_| Vec::new());
        assert!(matches!(
            verify(none.as_bytes(), std::slice::from_ref(&key), "d", rules(1500)),
            Err(JwtError::Algorithm(_))
        ));
        let long = sign("EdDSA", r#"{"sub":"d","iat":1000,"exp":999999}"#, &|m| {
            ed.sign(m).as_ref().to_vec()
        });
        assert_eq!(
            verify(long.as_bytes(), std::slice::from_ref(&key), "d", rules(1500)),
            Err(JwtError::TooLong)
        );
        assert_eq!(verify(b"a.b", &[key], "d", rules(1500)), Err(JwtError::Format));
    }

    #[test]
    fn pem_keys_of_both_kinds_parse_and_others_do_not() {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        assert_eq!(parse_public_key(&ec.public_key_pem()).unwrap().alg, KeyAlg::Es256);
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert_eq!(parse_public_key(&ed.public_key_pem()).unwrap().alg, KeyAlg::Ed25519);
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(parse_public_key(&p384.public_key_pem()).is_err());
        assert!(parse_public_key("not pem").is_err());
    }
}
