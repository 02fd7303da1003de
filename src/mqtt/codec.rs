//! Wire primitives shared by the decoder and encoder: variable-byte integers, two-byte
//! lengths, UTF-8 strings with MQTT's extra rules, and binary data.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::decode::DecodeError;

/// Largest value a variable-byte integer may carry (four bytes).
pub const MAX_VARINT: u32 = 268_435_455;

/// Result of reading a variable-byte integer from a buffer that may be incomplete.
#[derive(Debug, PartialEq, Eq)]
pub enum VarInt {
    /// The value and the number of bytes it took.
    Value(u32, usize),
    /// More bytes are needed.
    Incomplete,
}

/// Reads a variable-byte integer at the start of `buf` without consuming it. Rejects a fifth
/// byte and non-minimal encodings (a trailing zero continuation byte).
pub fn peek_varint(buf: &[u8]) -> Result<VarInt, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(VarInt::Incomplete);
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(DecodeError::Malformed("non-minimal variable byte integer"));
            }
            return Ok(VarInt::Value(value, i + 1));
        }
    }
    Err(DecodeError::Malformed("variable byte integer longer than 4 bytes"))
}

/// Number of bytes `value` takes as a variable-byte integer.
pub fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value` as a variable-byte integer.
///
/// # Panics
/// If `value` exceeds [`MAX_VARINT`]; encoders check packet sizes before writing.
pub fn put_varint(out: &mut BytesMut, value: usize) {
    assert!(value <= MAX_VARINT as usize, "varint overflow: {value}");
    let mut v = value;
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

/// Reading side: a cursor over one packet's bytes.
pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.remaining() < 1 {
            return Err(DecodeError::Malformed("packet shorter than its fields"));
        }
        Ok(self.buf.get_u8())
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.remaining() < 2 {
            return Err(DecodeError::Malformed("packet shorter than its fields"));
        }
        Ok(self.buf.get_u16())
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.remaining() < 4 {
            return Err(DecodeError::Malformed("packet shorter than its fields"));
        }
        Ok(self.buf.get_u32())
    }

    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        match peek_varint(&self.buf)? {
            VarInt::Value(v, n) => {
                self.buf.advance(n);
                Ok(v)
            }
            VarInt::Incomplete => Err(DecodeError::Malformed("truncated variable byte integer")),
        }
    }

    /// Takes `n` bytes as a zero-copy slice.
    pub fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::Malformed("length exceeds packet"));
        }
        Ok(self.buf.split_to(n))
    }

    /// Binary data: two-byte length then bytes.
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    /// UTF-8 encoded string: two-byte length then well-formed UTF-8 without U+0000.
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        utf8(&raw).map(str::to_owned)
    }

    /// Everything that is left.
    pub fn rest(&mut self) -> Bytes {
        let n = self.buf.remaining();
        self.buf.split_to(n)
    }
}

/// Checks MQTT's UTF-8 rules: well-formed (so no surrogates, no overlong forms) and no U+0000.
pub fn utf8(raw: &[u8]) -> Result<&str, DecodeError> {
    let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8)?;
    if s.contains('\0') {
        return Err(DecodeError::InvalidUtf8);
    }
    Ok(s)
}

pub fn put_string(out: &mut BytesMut, s: &str) {
    put_binary(out, s.as_bytes());
}

pub fn put_binary(out: &mut BytesMut, b: &[u8]) {
    // Lengths are bounded by the packet model (u16) before encoding.
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_boundaries_round_trip() {
        for v in [0usize, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_VARINT as usize] {
            let mut out = BytesMut::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            assert_eq!(peek_varint(&out).unwrap(), VarInt::Value(v as u32, out.len()));
        }
    }

    #[test]
    fn varint_rejects_five_bytes_and_non_minimal() {
        assert!(peek_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
        assert!(peek_varint(&[0x80, 0x00]).is_err());
        assert_eq!(peek_varint(&[0x80]).unwrap(), VarInt::Incomplete);
    }

    #[test]
    fn utf8_rules() {
        assert!(utf8(b"a/b").is_ok());
        assert!(utf8(b"a\0b").is_err());
        // An encoded surrogate (U+D800) is not well-formed UTF-8.
        assert!(utf8(&[0xED, 0xA0, 0x80]).is_err());
        // Overlong encoding of '/'.
        assert!(utf8(&[0xC0, 0xAF]).is_err());
    }
}
