//! Acks and the other replies the agent decodes from the coordinator: postcard
//! `Ack` (the answer to a batch) and the secrets reply (`Vec<(String, Vec<u8>)>`).
use kiln_protocol::Ack as WireAck;

use super::class;

/// The ack decoder as the agent runs it. When acks become signed, this is the one
/// line to change (to the open/verify function).
pub fn decode_ack(data: &[u8]) -> Result<WireAck, postcard::Error> {
    postcard::from_bytes::<WireAck>(data)
}

/// The target.
#[derive(Debug, Default)]
pub struct Ack {
    accepted: u64,
}

impl crate::Target for Ack {
    fn accepted(&self) -> u64 {
        self.accepted
    }

    fn run(&mut self, data: &[u8]) -> u64 {
        let secrets = postcard::from_bytes::<Vec<(String, Vec<u8>)>>(data);
        if let Ok(list) = &secrets {
            let again = postcard::to_allocvec(list).expect("re-encode secrets");
            assert_eq!(
                postcard::from_bytes::<Vec<(String, Vec<u8>)>>(&again).as_ref(),
                Ok(list),
                "secrets reply does not round-trip"
            );
        }
        match decode_ack(data) {
            Ok(ack) => {
                self.accepted += 1;
                let again = postcard::to_allocvec(&ack).expect("re-encode ack");
                assert_eq!(
                    decode_ack(&again),
                    Ok(ack.clone()),
                    "ack does not round-trip"
                );
                crate::stable_hash(("ok", std::mem::discriminant(&ack.command), secrets.is_ok()))
            }
            Err(e) => class("ack", &e) ^ u64::from(secrets.is_ok()),
        }
    }
}
