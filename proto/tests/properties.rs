//! Property tests: every frame survives encode/decode, and no input makes
//! the decoder or the flow-control rules panic.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use std::time::{Duration, Instant};

use proto::{
    Frame, GoAwayCode, NodeAddr, NodeLink, OpenCode, RecvBudget, RecvWindow, RefuseCode, ResetCode,
    SendWindow, decode,
};

fn text() -> impl Strategy<Value = String> {
    // Up to the 255-byte limit, in bytes, with multi-byte characters.
    "[a-zA-Z0-9 é中._:-]{0,60}".prop_map(|s| s)
}

fn stream_id() -> impl Strategy<Value = u32> {
    1..=u32::MAX
}

fn socket_addr() -> impl Strategy<Value = std::net::SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| (ip, port).into()),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| (ip, port).into()),
    ]
}

fn origin() -> impl Strategy<Value = proto::StreamOrigin> {
    let send_proxy =
        prop::option::of(prop::sample::select(vec![proto::SendProxy::V1, proto::SendProxy::V2]));
    (socket_addr(), socket_addr(), text(), send_proxy).prop_map(
        |(client, public, server_name, send_proxy)| proto::StreamOrigin {
            client,
            public,
            server_name,
            send_proxy,
        },
    )
}

fn frame() -> impl Strategy<Value = Frame> {
    let open_code = prop::sample::select(vec![
        OpenCode::Ok,
        OpenCode::Refused,
        OpenCode::Denied,
        OpenCode::Timeout,
        OpenCode::Unreachable,
        OpenCode::Draining,
        OpenCode::Error,
    ]);
    let reset_code = prop::sample::select(vec![
        ResetCode::ConnectionReset,
        ResetCode::Shutdown,
        ResetCode::ProtocolError,
        ResetCode::Drained,
        ResetCode::Other,
    ]);
    let go_away_code = prop::sample::select(vec![
        GoAwayCode::Normal,
        GoAwayCode::ProtocolError,
        GoAwayCode::Timeout,
        GoAwayCode::Superseded,
        GoAwayCode::Internal,
    ]);
    let refuse_code = prop::sample::select(vec![
        RefuseCode::BadToken,
        RefuseCode::UnknownEdge,
        RefuseCode::VersionMismatch,
        RefuseCode::Superseded,
        RefuseCode::TooManyTunnels,
        RefuseCode::ShuttingDown,
        RefuseCode::CodeUsed,
        RefuseCode::RateLimited,
        RefuseCode::ProtocolError,
        RefuseCode::Revoked,
    ]);
    prop_oneof![
        (
            stream_id(),
            any::<u32>(),
            text(),
            text().prop_filter("host", |h| !h.is_empty()),
            any::<u16>(),
            prop::option::of(origin().prop_map(Box::new))
        )
            .prop_map(|(stream, window, mapping, host, port, origin)| Frame::Open {
                stream,
                window,
                mapping,
                host,
                port,
                origin
            }),
        (stream_id(), open_code.clone(), any::<u32>(), text()).prop_map(
            |(stream, code, window, message)| Frame::OpenResult { stream, code, window, message }
        ),
        (stream_id(), prop::collection::vec(any::<u8>(), 1..2048))
            .prop_map(|(stream, data)| Frame::Data { stream, payload: Bytes::from(data) }),
        (stream_id(), any::<u64>()).prop_map(|(stream, limit)| Frame::Window { stream, limit }),
        stream_id().prop_map(|stream| Frame::Fin { stream }),
        (stream_id(), reset_code, text()).prop_map(|(stream, code, message)| Frame::Reset {
            stream,
            code,
            message
        }),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
        Just(Frame::Drain),
        (any::<u16>(), any::<u16>(), any::<[u64; 4]>(), text()).prop_map(
            |(tunnels_configured, cpu_permille, n, agent_version)| {
                Frame::Report(proto::EdgeReport {
                    tunnels_configured,
                    cpu_permille,
                    memory_used: n[0],
                    memory_total: n[1],
                    connects_ok: n[2],
                    connects_failed: n[3],
                    agent_version,
                })
            }
        ),
        (go_away_code, text()).prop_map(|(code, message)| Frame::GoAway { code, message }),
        (any::<u16>(), any::<u16>(), any::<[u8; 32]>()).prop_map(
            |(min_version, max_version, nonce)| Frame::Challenge {
                min_version,
                max_version,
                nonce
            }
        ),
        (any::<u16>(), text(), any::<u64>(), text(), any::<[u8; 32]>(), any::<[u8; 32]>())
            .prop_map(|(version, edge_id, epoch, agent_version, nonce, proof)| Frame::Auth {
                version,
                edge_id,
                epoch,
                agent_version,
                nonce,
                proof
            }),
        (any::<u16>(), any::<u64>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<[u8; 32]>())
            .prop_map(
                |(version, tunnel_id, heartbeat_ms, max_streams, max_frame_payload, proof)| {
                    Frame::Welcome {
                        version,
                        tunnel_id,
                        heartbeat_ms,
                        max_streams,
                        max_frame_payload,
                        proof,
                    }
                }
            ),
        (refuse_code, text()).prop_map(|(code, message)| Frame::Refuse { code, message }),
        (
            any::<u32>(),
            any::<u32>(),
            text(),
            text().prop_filter("host", |h| !h.is_empty()),
            any::<u16>(),
            proptest::option::of((text(), text().prop_filter("expect", |e| !e.is_empty())))
        )
            .prop_map(|(id, timeout_ms, mapping, host, port, exchange)| Frame::Probe {
                id,
                timeout_ms,
                mapping,
                host,
                port,
                exchange: exchange.map(|(send, expect)| proto::ProbeExchange { send, expect }),
            }),
        (any::<u32>(), open_code, any::<u32>(), text()).prop_map(
            |(id, code, connect_us, message)| Frame::ProbeResult { id, code, connect_us, message }
        ),
        (any::<u16>(), any::<[u8; 16]>(), text(), text()).prop_map(
            |(version, secret, hostname, agent_version)| Frame::Enroll {
                version,
                secret,
                hostname,
                agent_version
            }
        ),
        (
            text().prop_filter("id", |t| !t.is_empty()),
            text().prop_filter("token", |t| !t.is_empty())
        )
            .prop_map(|(edge_id, token)| Frame::Enrolled { edge_id, token }),
        (node_id(), prop::collection::btree_map(node_id(), "[a-z0-9:/.é]{1,80}", 0..8)).prop_map(
            |(this_node, nodes)| Frame::Nodes {
                this_node,
                nodes: nodes.into_iter().map(|(id, url)| NodeAddr { id, url }).collect(),
            }
        ),
        prop::collection::btree_map(node_id(), (any::<u16>(), text()), 0..8).prop_map(|links| {
            Frame::NodeLinks {
                links: links
                    .into_iter()
                    .map(|(node, (tunnels_up, error))| NodeLink { node, tunnels_up, error })
                    .collect(),
            }
        }),
    ]
}

/// A node id within the bounds of the cluster frames (1..=64 bytes).
fn node_id() -> impl Strategy<Value = String> {
    "[a-z0-9é-]{1,32}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn encode_then_decode_is_identity(frames in prop::collection::vec(frame(), 1..4)) {
        let mut buf = BytesMut::new();
        for f in &frames {
            f.encode(&mut buf);
        }
        let mut bytes = buf.freeze();
        for f in &frames {
            let decoded = decode(&mut bytes, u32::MAX).expect("valid").expect("complete");
            prop_assert_eq!(&decoded, f);
        }
        prop_assert!(bytes.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_over_consume(data in prop::collection::vec(any::<u8>(), 0..512), max in 0u32..1024) {
        let mut bytes = Bytes::from(data);
        // Decode until error or need-more: must terminate and never panic.
        for _ in 0..1024 {
            let before = bytes.len();
            match decode(&mut bytes, max) {
                Ok(Some(_)) => prop_assert!(bytes.len() < before),
                Ok(None) => { prop_assert_eq!(bytes.len(), before); break; }
                Err(_) => break,
            }
        }
    }

    #[test]
    fn flow_control_never_panics_on_hostile_updates(
        ops in prop::collection::vec((0u8..3, any::<u64>()), 0..64),
        initial in 1u32..=u32::MAX,
        max in any::<u32>(),
        budget_bytes in any::<u32>(),
    ) {
        let budget = RecvBudget::new(u64::from(budget_bytes));
        let mut now = Instant::now();
        let mut tx = SendWindow::new(initial);
        let mut rx = RecvWindow::new(initial, max, now);
        for (op, n) in ops {
            match op {
                0 => {
                    let _ = rx.on_data(n);
                    let _ = tx.record_sent(n % (u64::from(initial) + 1));
                }
                1 => {
                    let _ = tx.on_window_update(n);
                }
                _ => {
                    now += Duration::from_micros(n % 100_000_000);
                    let _ = rx.on_consumed(n, now, Duration::from_millis(1), &budget);
                }
            }
            prop_assert!(rx.buffered() <= u64::from(rx.window()));
            prop_assert_eq!(budget.left() + rx.borrowed(), u64::from(budget_bytes));
        }
    }

    #[test]
    fn an_honest_pair_never_breaks_a_rule(
        steps in prop::collection::vec((1u64..300_000, 1u64..300_000, 0u64..40_000), 1..300),
        initial in 1u32..100_000,
        max in 1u32..2_000_000,
        budget_bytes in 0u64..4_000_000,
        rtt_us in 0u64..20_000,
    ) {
        // Whatever the sizes, pacing and budget, every limit the receiver
        // emits (delivered one step late, after more data was sent) is
        // accepted, no data is refused, the window holds what is buffered,
        // the budget is conserved, and the pair never stalls.
        let budget = RecvBudget::new(budget_bytes);
        let rtt = Duration::from_micros(rtt_us);
        let mut now = Instant::now();
        let mut tx = SendWindow::new(initial);
        let mut rx = RecvWindow::new(initial, max, now);
        let mut in_flight = None;
        for (send, consume, gap_us) in steps {
            let n = tx.available().min(send);
            tx.record_sent(n).unwrap();
            prop_assert!(rx.on_data(n).is_ok());
            now += Duration::from_micros(gap_us);
            let update = rx.on_consumed(rx.buffered().min(consume), now, rtt, &budget);
            if let Some(limit) = std::mem::replace(&mut in_flight, update) {
                prop_assert!(tx.on_window_update(limit).is_ok());
            }
            prop_assert!(rx.buffered() <= u64::from(rx.window()));
            prop_assert_eq!(budget.left() + rx.borrowed(), budget_bytes);
            // No stall: a sender out of credit always has an update coming.
            let stalled = tx.available() == 0 && rx.buffered() == 0 && in_flight.is_none();
            prop_assert!(!stalled, "sender out of credit and no update on the way");
        }
    }
}
