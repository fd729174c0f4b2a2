//! `relayctl demo`: the whole path on loopback, started in one process.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const DEMO_EDGE: &str = "demo-edge";

pub(crate) fn run() -> ExitCode {
    let _log = tunnel::service::init_logging(None);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relayctl demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relayctl demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A random token for this run only.
fn demo_token() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn demo() -> anyhow::Result<()> {
    let service = sample_service().await.context("starting the sample service")?;
    let token = demo_token()?;
    let cloud_toml = format!(
        "shutdown_grace = \"2s\"\n[tunnel]\nlisten = \"127.0.0.1:0\"\n\
         [[edges]]\nid = \"{DEMO_EDGE}\"\ntoken = \"{token}\"\n\
         [[mappings]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nedge = \"{DEMO_EDGE}\"\ntarget = \"{service}\"\n"
    );
    let cloud_config = config::CloudConfig::from_toml(&cloud_toml, "demo-cloud.toml".as_ref())?;
    let cloud = agent_cloud::Cloud::start(cloud_config).await?;
    let edge_toml = format!(
        "cloud_url = \"ws://{}/tunnel\"\nedge_id = \"{DEMO_EDGE}\"\ntoken = \"{token}\"\n\
         allow = [\"{service}\"]\nshutdown_grace = \"2s\"\n",
        cloud.tunnel_addr()
    );
    let edge_config = config::EdgeConfig::from_toml(&edge_toml, "demo-edge.toml".as_ref())?;
    let edge = agent_edge::Edge::start(edge_config)?;
    let public = cloud.mapping_addr("web").context("the demo mapping did not bind")?;
    println!();
    println!("hybrid relay demo: client -> cloud {public} -> tunnel -> edge -> service {service}");
    println!("try: curl http://{public}/");
    println!("Ctrl-C stops everything.");
    println!();
    tunnel::service::shutdown_requested().await;
    edge.shutdown().await;
    cloud.shutdown().await;
    Ok(())
}

/// A tiny HTTP service standing in for an on-prem application.
async fn sample_service() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                // Read the request head (bounded), then answer.
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("hello from the on-prem service (you came from {peer})\n");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    Ok(addr)
}
