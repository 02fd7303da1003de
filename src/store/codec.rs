//! Versioned postcard encoding: `[FORMAT_VERSION, postcard bytes...]`. postcard is not
//! self-describing, so a version byte lets later releases migrate old values.

use serde::{de::DeserializeOwned, Serialize};

use super::StoreError;

/// Current format version of every stored value.
pub const FORMAT_VERSION: u8 = 1;

pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![FORMAT_VERSION];
    out.extend(postcard::to_stdvec(v).map_err(|e| StoreError::Codec(e.to_string()))?);
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StoreError::Codec(e.to_string()))
        }
        Some((v, _)) => Err(StoreError::Codec(format!("unknown format version {v}"))),
        None => Err(StoreError::Codec("empty value".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_byte_leads_and_is_checked() {
        let bytes = encode(&("a".to_string(), 7u32)).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<(String, u32)>(&bytes).unwrap(), ("a".to_string(), 7));
        let mut wrong = bytes.clone();
        wrong[0] = 99;
        assert!(decode::<(String, u32)>(&wrong).is_err());
        assert!(decode::<(String, u32)>(&[]).is_err());
    }
}
