//! The PROXY protocol header the edge writes to a destination before any
//! client byte, when the mapping asks for one: the real client's address
//! and port, the public address it connected to, and (v2) the server name
//! it was routed by. Encoding is the `ppp` crate's.

use std::net::{IpAddr, SocketAddr};

use ppp::v2;
use proto::{SendProxy, StreamOrigin};

/// The header for `origin` in version `kind`. A client and a public
/// address of different families (an IPv4 client of a listener on `::`)
/// are both written as IPv6, IPv4-mapped: a header has one family.
pub(crate) fn encode(origin: &StreamOrigin, kind: SendProxy) -> Vec<u8> {
    let (client, public) = same_family(origin.client, origin.public);
    match kind {
        SendProxy::V2 => {
            let command = v2::Version::Two | v2::Command::Proxy;
            let builder =
                v2::Builder::with_addresses(command, v2::Protocol::Stream, (client, public));
            let name = origin.server_name.as_bytes();
            // Infallible on a Vec, and a server name is at most 255 bytes
            // (well within a TLV's u16 length).
            let built = if name.is_empty() {
                builder.build()
            } else {
                builder.write_tlv(v2::Type::Authority, name).and_then(v2::Builder::build)
            };
            built.unwrap_or_default()
        }
        // v1 has no room for a server name.
        _ => ppp::v1::Addresses::from((client, public)).to_string().into_bytes(),
    }
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a.is_ipv4() == b.is_ipv4() {
        return (a, b);
    }
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    (v6(a), v6(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(client: &str, public: &str, name: &str) -> StreamOrigin {
        StreamOrigin {
            client: client.parse().unwrap(),
            public: public.parse().unwrap(),
            server_name: name.into(),
            send_proxy: None,
        }
    }

    #[test]
    fn v1_is_the_text_line_with_both_addresses() {
        let o = origin("192.0.2.7:40000", "198.51.100.1:443", "a.example");
        let line = encode(&o, SendProxy::V1);
        assert_eq!(line, b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n");
        let o = origin("[2001:db8::7]:40000", "[2001:db8::1]:443", "");
        let line = String::from_utf8(encode(&o, SendProxy::V1)).unwrap();
        assert_eq!(line, "PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n");
    }

    #[test]
    fn mixed_families_are_written_as_ipv6() {
        let o = origin("192.0.2.7:40000", "[::]:443", "");
        let line = String::from_utf8(encode(&o, SendProxy::V1)).unwrap();
        assert_eq!(line, "PROXY TCP6 ::ffff:192.0.2.7 :: 40000 443\r\n");
    }

    #[test]
    fn v2_carries_the_addresses_and_the_server_name_as_its_authority() {
        let o = origin("192.0.2.7:40000", "198.51.100.1:443", "a.example");
        let bytes = encode(&o, SendProxy::V2);
        let header = v2::Header::try_from(bytes.as_slice()).unwrap();
        assert_eq!(header.command, v2::Command::Proxy);
        assert_eq!(header.protocol, v2::Protocol::Stream);
        let v2::Addresses::IPv4(a) = header.addresses else { panic!("{:?}", header.addresses) };
        assert_eq!((a.source_address.to_string(), a.source_port), ("192.0.2.7".into(), 40000));
        assert_eq!(
            (a.destination_address.to_string(), a.destination_port),
            ("198.51.100.1".into(), 443)
        );
        let tlvs: Vec<_> = header.tlvs().collect::<Result<_, _>>().unwrap();
        assert_eq!(tlvs.len(), 1);
        assert_eq!(tlvs[0].kind, u8::from(v2::Type::Authority));
        assert_eq!(&tlvs[0].value[..], b"a.example");
        assert_eq!(bytes.len(), header.len(), "nothing after the header");
        let plain = encode(&origin("192.0.2.7:1", "198.51.100.1:2", ""), SendProxy::V2);
        let header = v2::Header::try_from(plain.as_slice()).unwrap();
        assert_eq!(header.tlvs().count(), 0, "no authority without a name");
    }
}
