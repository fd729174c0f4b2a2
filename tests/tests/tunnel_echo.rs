//! Bytes through the tunnel: many concurrent connections with random sizes,
//! checksums both ways, half-close honoured.

use std::time::Duration;

use agent_cloud::Cloud;
use agent_edge::Edge;
use e2e_tests::{
    TOKEN, cloud_config, cloud_toml, echo_server, edge_config, edge_toml, eventually, serves,
    sha256,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 200;
const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections_echo_intact() {
    let echo = echo_server().await;
    let cloud =
        Cloud::start(cloud_config(&cloud_toml("127.0.0.1:0", &[("echo", &echo.to_string())], "")))
            .await
            .expect("cloud starts");
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[echo.to_string()], TOKEN)))
            .expect("edge starts");
    let public = cloud.mapping_addr("echo").expect("mapping listening");
    assert!(eventually(Duration::from_secs(10), || serves(public)).await, "mapping never served");

    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut clients = Vec::new();
    let mut total = 0usize;
    for i in 0..CONNECTIONS {
        // A spread of sizes: empty, tiny, and up to 4 MiB.
        let len = match i % 4 {
            0 => rng.usize(0..64),
            1 => rng.usize(0..64 * 1024),
            _ => rng.usize(0..=MAX_PAYLOAD),
        };
        total += len;
        let mut payload = vec![0u8; len];
        rng.fill(&mut payload);
        clients.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(public).await.expect("connect");
            let (mut r, mut w) = tcp.into_split();
            let expected = sha256(&payload);
            let writer = tokio::spawn(async move {
                w.write_all(&payload).await.expect("write");
                // Half-close: the far end sees EOF, and we can still read.
                w.shutdown().await.expect("shutdown write");
            });
            let mut back = Vec::with_capacity(len);
            r.read_to_end(&mut back).await.expect("read echo");
            writer.await.expect("writer");
            assert_eq!(back.len(), len, "connection {i}: length");
            assert_eq!(sha256(&back), expected, "connection {i}: checksum");
        }));
    }
    for c in clients {
        c.await.expect("client task");
    }
    eprintln!("moved {total} bytes each way over {CONNECTIONS} connections");
    edge.shutdown().await;
    cloud.shutdown().await;
}
