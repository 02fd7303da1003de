//! Fuzz target for the MQTT decoder: arbitrary bytes, both protocol versions, a small and
//! the largest packet limit. The decoder must never panic; whatever it accepts must encode
//! and decode back to the same packet.
#![no_main]

use bytes::BytesMut;
use homeport::mqtt::{decode, encode, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let proto = if sel & 1 == 0 { Protocol::V311 } else { Protocol::V5 };
    let max = if sel & 2 == 0 { 1024 } else { homeport::mqtt::MAX_PACKET_SIZE as usize };
    let mut buf = BytesMut::from(rest);
    // Decode packets one after another, as a connection would.
    while let Ok(Some(d)) = decode(&mut buf, proto, max, 64) {
        let mut out = BytesMut::new();
        encode(&d.packet, proto, &mut out);
        let mut again = BytesMut::from(&out[..]);
        match decode(&mut again, proto, homeport::mqtt::MAX_PACKET_SIZE as usize, usize::MAX) {
            Ok(Some(back)) => assert_eq!(back.packet, d.packet, "re-encoded packet differs"),
            other => panic!("re-encoded packet does not decode: {other:?}"),
        }
    }
});
