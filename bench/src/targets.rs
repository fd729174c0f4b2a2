//! The services the bench measures against, in a child process of their
//! own (`relay-bench --serve-targets`) so that 10,000 server-side sockets
//! do not count against the bench's own file descriptor limit.
//!
//! - echo: writes back what it reads; half-closes when its peer does.
//! - sink: discards what it reads; at EOF answers the byte count (u64,
//!   big-endian) and closes, so the sender knows everything arrived.
//! - source: writes 256 KiB buffers until the peer goes away.
//!
//! The child prints `targets echo=ADDR sink=ADDR source=ADDR` on stdout,
//! then serves until its stdin reaches EOF (the bench exited or died).

use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::procs::{self, Proc};

/// Buffer size of the sink and the source.
pub(crate) const BULK_BUF: usize = 256 * 1024;

/// Where the target services listen.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Addrs {
    pub(crate) echo: SocketAddr,
    pub(crate) sink: SocketAddr,
    pub(crate) source: SocketAddr,
}

/// The running targets process. Killed when dropped.
#[derive(Debug)]
pub(crate) struct Targets {
    pub(crate) proc: Proc,
    pub(crate) addrs: Addrs,
}

impl Targets {
    /// Starts `bench --serve-targets` and reads its addresses.
    pub(crate) async fn start(bench: &std::path::Path) -> Result<Self> {
        let (proc, addrs) = spawn_service(bench, "targets", "--serve-targets", None).await?;
        Ok(Self { proc, addrs })
    }

    /// Starts `bench --serve-proxy` in front of `upstream`: a plain TCP
    /// proxy for each service, the reference the relay is compared with.
    pub(crate) async fn start_proxy(bench: &std::path::Path, upstream: &Addrs) -> Result<Self> {
        let (proc, addrs) = spawn_service(bench, "proxy", "--serve-proxy", Some(upstream)).await?;
        Ok(Self { proc, addrs })
    }
}

impl Addrs {
    fn line(&self, who: &str) -> String {
        format!("{who} echo={} sink={} source={}", self.echo, self.sink, self.source)
    }

    fn parse(line: &str) -> Result<Self> {
        let field = |key: &str| -> Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {key} in the line {line:?}"))
        };
        Ok(Addrs { echo: field("echo=")?, sink: field("sink=")?, source: field("source=")? })
    }
}

/// Starts a child in `mode`, gives it `upstream` (one line on its stdin,
/// which then stays open: EOF tells it to exit) and reads the addresses it
/// serves from its first stdout line.
async fn spawn_service(
    bench: &std::path::Path,
    name: &'static str,
    mode: &str,
    upstream: Option<&Addrs>,
) -> Result<(Proc, Addrs)> {
    let mut cmd = procs::command(bench);
    cmd.arg(mode).stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut proc = Proc::spawn(name, cmd)?;
    if let Some(upstream) = upstream {
        let stdin = proc.child_mut().stdin.as_mut().context("child stdin")?;
        stdin.write_all(format!("{}\n", upstream.line("upstream")).as_bytes()).await?;
        stdin.flush().await?;
    }
    let stdout = proc.child_mut().stdout.take().context("child stdout")?;
    let mut line = String::new();
    let mut stdout = BufReader::new(stdout);
    let read = stdout.read_line(&mut line);
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => bail!("the {name} process printed no addresses:\n{}", proc.tail()),
    }
    Ok((proc, Addrs::parse(&line)?))
}

/// `--serve-targets`: the child's main.
pub(crate) fn serve_main() -> ExitCode {
    child_main("--serve-targets", serve())
}

/// `--serve-proxy`: the child's main.
pub(crate) fn proxy_main() -> ExitCode {
    child_main("--serve-proxy", proxy())
}

fn child_main(mode: &str, serve: impl Future<Output = Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay-bench {mode}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-bench {mode}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The reference: the simplest user-space relay there is. One task per
/// connection copying both ways with 256 KiB buffers, Nagle off, nothing
/// else: no framing, no multiplexing, no flow control of its own.
async fn proxy() -> Result<()> {
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line).await?;
    let upstream = Addrs::parse(&line)?;
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let sink = TcpListener::bind("127.0.0.1:0").await?;
    let source = TcpListener::bind("127.0.0.1:0").await?;
    let ours =
        Addrs { echo: echo.local_addr()?, sink: sink.local_addr()?, source: source.local_addr()? };
    println!("{}", ours.line("proxy"));
    for (listener, to) in [(echo, upstream.echo), (sink, upstream.sink), (source, upstream.source)]
    {
        tokio::spawn(accept_loop(listener, move |tcp| forward(tcp, to)));
    }
    // Serve until the parent closes our stdin (normally or by dying).
    let mut buf = [0u8; 64];
    while stdin.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    Ok(())
}

async fn forward(mut client: TcpStream, to: SocketAddr) -> std::io::Result<()> {
    let mut server = TcpStream::connect(to).await?;
    server.set_nodelay(true)?;
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BULK_BUF, BULK_BUF).await?;
    Ok(())
}

async fn serve() -> Result<()> {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let sink = TcpListener::bind("127.0.0.1:0").await?;
    let source = TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "targets echo={} sink={} source={}",
        echo.local_addr()?,
        sink.local_addr()?,
        source.local_addr()?
    );
    tokio::spawn(accept_loop(echo, echo_service));
    tokio::spawn(accept_loop(sink, sink_service));
    tokio::spawn(accept_loop(source, source_service));
    // Serve until the parent closes our stdin (normally or by dying).
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while stdin.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    Ok(())
}

/// Serves each accepted connection (Nagle off) with `serve` in a task of
/// its own.
async fn accept_loop<F, Fut>(listener: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of descriptors or similar: say so, back off, go on.
                eprintln!("relay-bench: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve(tcp));
    }
}

async fn echo_service(mut tcp: TcpStream) -> std::io::Result<()> {
    // Small first buffer: 10,000 idle echo connections should not cost
    // 640 MiB here.
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return tcp.shutdown().await;
        }
        tcp.write_all(&buf[..n]).await?;
        if n == buf.len() && buf.len() < 64 * 1024 {
            buf.resize(64 * 1024, 0);
        }
    }
}

async fn sink_service(mut tcp: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; BULK_BUF];
    let mut total = 0u64;
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    tcp.write_all(&total.to_be_bytes()).await?;
    tcp.shutdown().await
}

async fn source_service(mut tcp: TcpStream) -> std::io::Result<()> {
    let buf = vec![0xa5u8; BULK_BUF];
    loop {
        tcp.write_all(&buf).await?;
    }
}
