//! `relayctl demo`: the whole path on loopback in one process: a cloud
//! agent with its control API, an edge agent, a sample HTTP service and a
//! mapping to it, then the TUI on top. Everything stops when it exits.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::client::ControlClient;
use crate::tui::{self, TuiOptions};

const DEMO_EDGE: &str = "demo-edge";

pub(crate) fn run() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relayctl demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A random token for this run only.
fn random_token() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What the demo started, so it can stop it.
struct Running {
    cloud: agent_cloud::Cloud,
    edge: agent_edge::Edge,
    public: SocketAddr,
    control: SocketAddr,
    admin_token: String,
}

fn demo() -> anyhow::Result<()> {
    let interactive = std::io::stdout().is_terminal();
    // With the TUI on screen, agent logs would scribble over it.
    let _log = if interactive { None } else { tunnel::service::init_logging(None).ok() };
    let dir = std::env::temp_dir().join(format!("relayctl-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let result = runtime.block_on(start(dir.clone())).and_then(|running| {
        let outcome = if interactive {
            let client = ControlClient::new(
                &[format!("http://{}", running.control)],
                Some(running.admin_token.as_str().into()),
            );
            let hint = format!(
                "try: curl http://{}/   (the demo mapping \"web\"; q quits and stops everything)",
                running.public
            );
            tui::run(client, TuiOptions { hint: Some(hint) })
        } else {
            print_banner(&running);
            runtime.block_on(tunnel::service::shutdown_requested());
            Ok(())
        };
        runtime.block_on(async {
            running.edge.shutdown().await;
            running.cloud.shutdown().await;
        });
        outcome
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn print_banner(running: &Running) {
    println!();
    println!(
        "hybrid relay demo: client -> cloud {} -> tunnel -> edge -> sample service",
        running.public
    );
    println!("try: curl http://{}/", running.public);
    println!(
        "control API: http://{} (token: {}); e.g. relayctl status --endpoint http://{}",
        running.control, running.admin_token, running.control
    );
    println!("Ctrl-C stops everything.");
    println!();
}

async fn start(dir: PathBuf) -> anyhow::Result<Running> {
    let service = sample_service().await.context("starting the sample service")?;
    let token = random_token()?;
    let admin_token = random_token()?;
    let state_file = dir.join("state.json");
    let cloud_toml = format!(
        "shutdown_grace = \"2s\"\n\
         [control]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{admin_token}\"\nstate_file = \"{}\"\n\
         [tunnel]\nlisten = \"127.0.0.1:0\"\nheartbeat_interval = \"1s\"\nheartbeat_timeout = \"3s\"\n\
         [[edges]]\nid = \"{DEMO_EDGE}\"\ntoken = \"{token}\"\n\
         [[mappings]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nedge = \"{DEMO_EDGE}\"\ntarget = \"{service}\"\n",
        state_file.display()
    );
    let cloud_config = config::CloudConfig::from_toml(&cloud_toml, &dir.join("demo-cloud.toml"))?;
    let cloud = agent_cloud::Cloud::start(cloud_config).await?;
    let edge_toml = format!(
        "cloud_url = \"ws://{}/tunnel\"\nedge_id = \"{DEMO_EDGE}\"\ntoken = \"{token}\"\n\
         allow = [\"{service}\"]\nshutdown_grace = \"2s\"\n[reconnect]\ninitial = \"100ms\"\nmax = \"2s\"\n",
        cloud.tunnel_addr()
    );
    let edge_config = config::EdgeConfig::from_toml(&edge_toml, &dir.join("demo-edge.toml"))?;
    let edge = agent_edge::Edge::start(edge_config)?;
    let public = cloud.mapping_addr("web").context("the demo mapping did not bind")?;
    let control = cloud.control_addr().context("the demo control API did not bind")?;
    Ok(Running { cloud, edge, public, control, admin_token })
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
