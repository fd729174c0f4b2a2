//! The cluster frames of version 4: the cloud's node list ([`Frame::Nodes`])
//! and an edge's links to those nodes ([`Frame::NodeLinks`]).
//!
//! Both are bounded on decode before anything is kept: at most
//! [`MAX_NODES`] entries, node ids of 1..=[`MAX_NODE_ID_LEN`] bytes, URLs of
//! 1..=[`MAX_NODE_URL_LEN`] bytes, errors of at most [`MAX_LINK_ERROR_LEN`]
//! bytes, all UTF-8, no node named twice. Senders clip to the same bounds
//! (texts on a character boundary, lists to their first entries), so an
//! encoded frame never exceeds them.
//!
//! [`Frame::Nodes`]: crate::Frame::Nodes
//! [`Frame::NodeLinks`]: crate::Frame::NodeLinks

use bytes::BufMut;

use crate::frame::{DecodeError, Reader};

/// Most nodes one `Nodes` frame lists (and links one `NodeLinks` carries).
pub const MAX_NODES: usize = 64;
/// Longest node id, in bytes.
pub const MAX_NODE_ID_LEN: usize = 64;
/// Longest node URL, in bytes.
pub const MAX_NODE_URL_LEN: usize = 256;
/// Longest error text of a node link, in bytes.
pub const MAX_LINK_ERROR_LEN: usize = 256;

/// One node of the cluster as the cloud tells its edges: the node's id and
/// the URL at which edges reach it directly (its `advertise` URL).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAddr {
    /// Node id, 1..=64 bytes.
    pub id: String,
    /// `ws://` or `wss://` URL, 1..=256 bytes. The edge parses it as it
    /// parses its own `cloud_url` and ignores one it cannot use.
    pub url: String,
}

/// What an edge tells a node about its tunnels to one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeLink {
    /// Node id, 1..=64 bytes.
    pub node: String,
    /// Tunnels up from the edge to that node now.
    pub tunnels_up: u16,
    /// Why the edge's last dial of the node failed while it has no tunnel
    /// there; empty otherwise. At most 256 bytes.
    pub error: String,
}

/// `s` cut to at most `max` bytes on a character boundary.
pub(crate) fn clip_to(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_short(out: &mut impl BufMut, s: &str, max: usize) {
    let s = clip_to(s, max);
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

fn put_long(out: &mut impl BufMut, s: &str, max: usize) {
    let s = clip_to(s, max);
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn nodes_sent(nodes: &[NodeAddr]) -> &[NodeAddr] {
    &nodes[..nodes.len().min(MAX_NODES)]
}

fn links_sent(links: &[NodeLink]) -> &[NodeLink] {
    &links[..links.len().min(MAX_NODES)]
}

pub(crate) fn nodes_len(this_node: &str, nodes: &[NodeAddr]) -> usize {
    let entries: usize = nodes_sent(nodes)
        .iter()
        .map(|n| {
            1 + clip_to(&n.id, MAX_NODE_ID_LEN).len() + 2 + clip_to(&n.url, MAX_NODE_URL_LEN).len()
        })
        .sum();
    1 + clip_to(this_node, MAX_NODE_ID_LEN).len() + 1 + entries
}

pub(crate) fn put_nodes(out: &mut impl BufMut, this_node: &str, nodes: &[NodeAddr]) {
    put_short(out, this_node, MAX_NODE_ID_LEN);
    let nodes = nodes_sent(nodes);
    out.put_u8(nodes.len() as u8);
    for n in nodes {
        put_short(out, &n.id, MAX_NODE_ID_LEN);
        put_long(out, &n.url, MAX_NODE_URL_LEN);
    }
}

pub(crate) fn links_len(links: &[NodeLink]) -> usize {
    let entries: usize = links_sent(links)
        .iter()
        .map(|l| {
            1 + clip_to(&l.node, MAX_NODE_ID_LEN).len()
                + 2
                + 2
                + clip_to(&l.error, MAX_LINK_ERROR_LEN).len()
        })
        .sum();
    1 + entries
}

pub(crate) fn put_links(out: &mut impl BufMut, links: &[NodeLink]) {
    let links = links_sent(links);
    out.put_u8(links.len() as u8);
    for l in links {
        put_short(out, &l.node, MAX_NODE_ID_LEN);
        out.put_u16(l.tunnels_up);
        put_long(out, &l.error, MAX_LINK_ERROR_LEN);
    }
}

fn node_id(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let id = r.text()?;
    if id.is_empty() || id.len() > MAX_NODE_ID_LEN {
        return Err(r.malformed("node id must be 1 to 64 bytes"));
    }
    Ok(id)
}

fn count(r: &mut Reader<'_>) -> Result<usize, DecodeError> {
    let n = usize::from(r.u8()?);
    if n > MAX_NODES {
        return Err(r.malformed("more than 64 nodes"));
    }
    Ok(n)
}

pub(crate) fn read_nodes(r: &mut Reader<'_>) -> Result<(String, Vec<NodeAddr>), DecodeError> {
    let this_node = node_id(r)?;
    let n = count(r)?;
    let mut nodes: Vec<NodeAddr> = Vec::with_capacity(n);
    for _ in 0..n {
        let id = node_id(r)?;
        let url = r.long_text()?;
        if url.is_empty() || url.len() > MAX_NODE_URL_LEN {
            return Err(r.malformed("node url must be 1 to 256 bytes"));
        }
        if nodes.iter().any(|m| m.id == id) {
            return Err(r.malformed("a node is listed twice"));
        }
        nodes.push(NodeAddr { id, url });
    }
    Ok((this_node, nodes))
}

pub(crate) fn read_links(r: &mut Reader<'_>) -> Result<Vec<NodeLink>, DecodeError> {
    let n = count(r)?;
    let mut links: Vec<NodeLink> = Vec::with_capacity(n);
    for _ in 0..n {
        let node = node_id(r)?;
        let tunnels_up = r.u16()?;
        let error = r.long_text()?;
        if error.len() > MAX_LINK_ERROR_LEN {
            return Err(r.malformed("link error longer than 256 bytes"));
        }
        if links.iter().any(|l| l.node == node) {
            return Err(r.malformed("a node is listed twice"));
        }
        links.push(NodeLink { node, tunnels_up, error });
    }
    Ok(links)
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes, BytesMut};

    use super::*;
    use crate::{Frame, decode};

    fn node(id: &str, url: &str) -> NodeAddr {
        NodeAddr { id: id.into(), url: url.into() }
    }

    fn encoded(frame: &Frame) -> Bytes {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        assert_eq!(buf.len(), frame.encoded_len());
        buf.freeze()
    }

    fn round_trip(frame: &Frame) -> Frame {
        let mut bytes = encoded(frame);
        let back = decode(&mut bytes, u32::MAX).unwrap().unwrap();
        assert!(bytes.is_empty());
        back
    }

    /// A frame of `kind` on stream 0 with `payload` as its body.
    fn raw(kind: u8, payload: &[u8]) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_u8(kind);
        buf.put_u32(0);
        buf.put_u32(payload.len() as u32);
        buf.put_slice(payload);
        buf.freeze()
    }

    fn reason(bytes: Bytes) -> &'static str {
        let mut bytes = bytes;
        match decode(&mut bytes, u32::MAX) {
            Err(DecodeError::Malformed { reason, .. }) => reason,
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn nodes_bytes_are_exact() {
        let frame = Frame::Nodes { this_node: "a".into(), nodes: vec![node("b", "ws://h")] };
        let expected: &[u8] = &[
            0x0C, 0, 0, 0, 0, 0, 0, 0, 13, // header
            1, b'a', // this_node
            1,    // count
            1, b'b', // id
            0, 6, b'w', b's', b':', b'/', b'/', b'h', // url (u16 length)
        ];
        assert_eq!(&encoded(&frame)[..], expected);
    }

    #[test]
    fn node_links_bytes_are_exact() {
        let link = NodeLink { node: "c".into(), tunnels_up: 2, error: "x".into() };
        let frame = Frame::NodeLinks { links: vec![link] };
        let expected: &[u8] = &[
            0x0D, 0, 0, 0, 0, 0, 0, 0, 8, // header
            1, // count
            1, b'c', // node
            0, 2, // tunnels_up
            0, 1, b'x', // error (u16 length)
        ];
        assert_eq!(&encoded(&frame)[..], expected);
    }

    #[test]
    fn the_largest_lists_round_trip() {
        let id = |i: usize| format!("{i:0>64}");
        let nodes: Vec<NodeAddr> =
            (0..MAX_NODES).map(|i| NodeAddr { id: id(i), url: "u".repeat(256) }).collect();
        let frame = Frame::Nodes { this_node: id(0), nodes };
        assert_eq!(round_trip(&frame), frame);
        let links: Vec<NodeLink> = (0..MAX_NODES)
            .map(|i| NodeLink { node: id(i), tunnels_up: u16::MAX, error: "e".repeat(256) })
            .collect();
        let frame = Frame::NodeLinks { links };
        assert_eq!(round_trip(&frame), frame);
        let empty = Frame::NodeLinks { links: Vec::new() };
        assert_eq!(round_trip(&empty), empty);
    }

    #[test]
    fn senders_clip_to_the_bounds() {
        let long_error = "é".repeat(200); // 400 bytes
        let links: Vec<NodeLink> = (0..70)
            .map(|i| NodeLink { node: format!("n{i}"), tunnels_up: 1, error: long_error.clone() })
            .collect();
        let Frame::NodeLinks { links } = round_trip(&Frame::NodeLinks { links }) else {
            panic!("wrong kind")
        };
        assert_eq!(links.len(), MAX_NODES);
        assert_eq!(links[0].error.len(), 256);
        assert!(links[0].error.chars().all(|c| c == 'é'));
        let frame = Frame::Nodes { this_node: "x".repeat(100), nodes: vec![node("a", "ws://h")] };
        let Frame::Nodes { this_node, .. } = round_trip(&frame) else { panic!("wrong kind") };
        assert_eq!(this_node.len(), MAX_NODE_ID_LEN);
    }

    #[test]
    fn every_bound_is_checked_on_decode() {
        const NODES: u8 = 0x0C;
        const LINKS: u8 = 0x0D;
        // this_node empty, and 65 bytes.
        assert_eq!(reason(raw(NODES, &[0, 0])), "node id must be 1 to 64 bytes");
        let mut long_id = vec![65];
        long_id.extend([b'a'; 65]);
        long_id.push(0);
        assert_eq!(reason(raw(NODES, &long_id)), "node id must be 1 to 64 bytes");
        // 65 nodes.
        assert_eq!(reason(raw(NODES, &[1, b'a', 65])), "more than 64 nodes");
        assert_eq!(reason(raw(LINKS, &[65])), "more than 64 nodes");
        // An empty node id, an empty URL, a 257-byte URL.
        assert_eq!(
            reason(raw(NODES, &[1, b'a', 1, 0, 0, 1, b'u'])),
            "node id must be 1 to 64 bytes"
        );
        assert_eq!(
            reason(raw(NODES, &[1, b'a', 1, 1, b'b', 0, 0])),
            "node url must be 1 to 256 bytes"
        );
        let mut long_url = vec![1, b'a', 1, 1, b'b', 1, 1];
        long_url.extend([b'u'; 257]);
        assert_eq!(reason(raw(NODES, &long_url)), "node url must be 1 to 256 bytes");
        // A node listed twice.
        let twice = [1, b'a', 2, 1, b'b', 0, 1, b'u', 1, b'b', 0, 1, b'v'];
        assert_eq!(reason(raw(NODES, &twice)), "a node is listed twice");
        // A link: empty node, 257-byte error, twice.
        assert_eq!(reason(raw(LINKS, &[1, 0, 0, 0, 0, 0])), "node id must be 1 to 64 bytes");
        let mut long_error = vec![1, 1, b'n', 0, 0, 1, 1];
        long_error.extend([b'e'; 257]);
        assert_eq!(reason(raw(LINKS, &long_error)), "link error longer than 256 bytes");
        let twice = [2, 1, b'n', 0, 1, 0, 0, 1, b'n', 0, 1, 0, 0];
        assert_eq!(reason(raw(LINKS, &twice)), "a node is listed twice");
        // Not UTF-8, short, trailing.
        assert_eq!(reason(raw(NODES, &[1, b'a', 1, 1, b'b', 0, 1, 0xff])), "text is not UTF-8");
        assert_eq!(reason(raw(NODES, &[1, b'a', 1, 1, b'b', 0])), "payload too short");
        assert_eq!(reason(raw(LINKS, &[0, 9])), "trailing bytes");
    }

    #[test]
    fn truncated_input_is_incomplete_not_invalid() {
        let frame = Frame::Nodes {
            this_node: "a".into(),
            nodes: vec![node("a", "ws://a:1/tunnel"), node("b", "wss://b/tunnel")],
        };
        let links = Frame::NodeLinks {
            links: vec![NodeLink { node: "b".into(), tunnels_up: 0, error: "refused".into() }],
        };
        for frame in [frame, links] {
            let whole = encoded(&frame);
            for cut in 0..whole.len() {
                let mut partial = whole.slice(..cut);
                assert_eq!(decode(&mut partial, 1024), Ok(None), "cut at {cut}");
                assert_eq!(partial.len(), cut, "partial input must not be consumed");
            }
        }
    }

    #[test]
    fn cluster_frames_belong_on_stream_zero() {
        let mut on_stream = Bytes::from_static(&[0x0D, 0, 0, 0, 1, 0, 0, 0, 1, 0]);
        assert!(matches!(decode(&mut on_stream, 1024), Err(DecodeError::BadStream { .. })));
    }
}
