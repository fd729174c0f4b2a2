//! Who a stream is for (version 8): the client the cloud took it from,
//! the public address it reached, the TLS server name it was routed by,
//! and whether the edge is to tell the destination in a PROXY protocol
//! header. The trailing part of an [`Open`](crate::Frame::Open).
//!
//! ```text
//! proxy: u8 (0 none, 1 v1, 2 v2) | client: addr | public: addr | server_name: text
//! addr = family: u8 (4 or 6) | ip: 4 or 16 bytes | port: u16
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::BufMut;

use crate::frame::{DecodeError, Reader, put_text, text_len, wire_enum};

wire_enum! {
    /// The PROXY protocol header the edge writes to the destination before
    /// any of the client's bytes.
    SendProxy {
        /// The text header (`PROXY TCP4 ...\r\n`).
        V1 = 1,
        /// The binary header, with the server name as its authority TLV.
        V2 = 2,
    }
}

/// The origin of a stream, as the cloud knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOrigin {
    /// The client: the peer of the public connection, or the client a
    /// trusted load balancer's PROXY header named.
    pub client: SocketAddr,
    /// The public address the client connected to (the cloud listener's).
    pub public: SocketAddr,
    /// The TLS server name (SNI) or HTTP host the connection was routed
    /// by; empty when it was not routed by name.
    pub server_name: String,
    /// The header to write to the destination, if any.
    pub send_proxy: Option<SendProxy>,
}

pub(crate) fn origin_len(o: &StreamOrigin) -> usize {
    1 + addr_len(o.client) + addr_len(o.public) + text_len(&o.server_name)
}

pub(crate) fn put_origin(out: &mut impl BufMut, o: &StreamOrigin) {
    out.put_u8(o.send_proxy.map_or(0, SendProxy::to_u8));
    put_addr(out, o.client);
    put_addr(out, o.public);
    put_text(out, &o.server_name);
}

pub(crate) fn read_origin(r: &mut Reader<'_>) -> Result<StreamOrigin, DecodeError> {
    let send_proxy = match r.u8()? {
        0 => None,
        n => Some(SendProxy::from_u8(n).ok_or(r.malformed("unknown proxy header version"))?),
    };
    let client = read_addr(r)?;
    let public = read_addr(r)?;
    let server_name = r.text()?;
    Ok(StreamOrigin { client, public, server_name, send_proxy })
}

fn addr_len(a: SocketAddr) -> usize {
    1 + if a.is_ipv4() { 4 } else { 16 } + 2
}

fn put_addr(out: &mut impl BufMut, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.put_u8(4);
            out.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(6);
            out.put_slice(&ip.octets());
        }
    }
    out.put_u16(a.port());
}

fn read_addr(r: &mut Reader<'_>) -> Result<SocketAddr, DecodeError> {
    let ip = match r.u8()? {
        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
        6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
        _ => return Err(r.malformed("unknown address family")),
    };
    Ok(SocketAddr::new(ip, r.u16()?))
}
