//! Wake-on-LAN: the magic packet (six 0xFF bytes, then the MAC sixteen times) sent by
//! UDP to a broadcast address. It can only switch a machine on: there is no state to
//! read, no way to switch it off (a netbooted agent powers its machine off itself) and
//! no boot override (the machine's firmware must try the network first).
use kiln_protocol::Mac;
use std::net::{ToSocketAddrs, UdpSocket};

use super::{Action, Answer, Bmc, PowerError, PowerState};

/// A machine woken by magic packet.
pub struct Wol {
    addr: String,
    port: u16,
    mac: Mac,
}

/// The 102-byte magic packet for `mac`.
pub fn magic_packet(mac: &Mac) -> [u8; 102] {
    let mut p = [0xffu8; 102];
    for i in 0..16 {
        p[6 + i * 6..12 + i * 6].copy_from_slice(&mac.0);
    }
    p
}

impl Wol {
    /// Packets for `mac` go to `addr:port`.
    pub fn new(addr: String, port: u16, mac: Mac) -> Self {
        Wol { addr, port, mac }
    }

    fn unsupported(&self, what: &str) -> PowerError {
        PowerError {
            bmc: self.describe(),
            reason: format!("Wake-on-LAN cannot {what}"),
            unsupported: true,
        }
    }

    fn send(&self) -> Result<String, PowerError> {
        let err = |e: std::io::Error| PowerError {
            bmc: self.describe(),
            reason: format!("sending the magic packet: {e}"),
            unsupported: false,
        };
        let target = (self.addr.as_str(), self.port)
            .to_socket_addrs()
            .map_err(err)?
            .next()
            .ok_or_else(|| err(std::io::Error::other("no address")))?;
        let bind = if target.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let sock = UdpSocket::bind(bind).map_err(err)?;
        sock.set_broadcast(true).map_err(err)?;
        sock.send_to(&magic_packet(&self.mac), target)
            .map_err(err)?;
        Ok(format!("magic packet for {} sent to {target}", self.mac))
    }
}

impl Bmc for Wol {
    fn describe(&self) -> String {
        format!("wol://{}:{} ({})", self.addr, self.port, self.mac)
    }

    fn act(&self, action: Action) -> Result<Answer, PowerError> {
        match action {
            Action::On | Action::Cycle => Ok(Answer {
                state: None,
                text: self.send()?,
            }),
            Action::Status => Ok(Answer {
                state: Some(PowerState::Unknown),
                text: "Wake-on-LAN cannot read the power state".into(),
            }),
            Action::Off => Err(self.unsupported("power a machine off")),
            Action::Pxe => Err(self.unsupported(
                "set the next boot (the firmware's boot order must try the network first)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_magic_packet_arrives_byte_for_byte() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = rx.local_addr().unwrap().port();
        let mac: Mac = "52:54:00:12:34:56".parse().unwrap();
        let w = Wol::new("127.0.0.1".into(), port, mac);
        let a = w.act(Action::On).unwrap();
        assert!(a.text.contains("52:54:00:12:34:56"), "{}", a.text);
        let mut buf = [0u8; 200];
        let (n, _) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(n, 102);
        assert_eq!(&buf[..6], &[0xff; 6]);
        for i in 0..16 {
            assert_eq!(
                &buf[6 + i * 6..12 + i * 6],
                &[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
            );
        }
        let off = w.act(Action::Off).unwrap_err();
        assert!(off.unsupported && off.to_string().contains("cannot power"));
    }
}
