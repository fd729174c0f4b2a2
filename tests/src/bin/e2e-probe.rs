//! `e2e-probe`: small TCP tools the network-namespace tests run inside
//! namespaces with `ip netns exec`. Blocking std I/O, no runtime.
//!
//! ```text
//! e2e-probe serve ADDR                          echo server; prints "listening ADDR"
//! e2e-probe echo ADDR BYTES SEED TIMEOUT_MS [IDLE_MS]
//!                                               connects, stays idle IDLE_MS, sends BYTES
//!                                               pseudo-random bytes, reads the echo, compares
//!                                               SHA-256; prints "ok ..." or "fail: ..." (exit 1)
//! e2e-probe hold ADDR TIMEOUT_MS                one-byte echo, then waits for the connection to
//!                                               be closed; prints "closed ..." or "fail: ..."
//! e2e-probe connect TIMEOUT_MS ADDR...          one line per address: "ADDR connected",
//!                                               "ADDR refused", "ADDR timeout", "ADDR error ..."
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const CHUNK: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let code = match args.as_slice() {
        ["serve", addr] => serve(addr),
        ["echo", addr, bytes, seed, timeout_ms, idle @ ..] => {
            let timeout = Duration::from_millis(num(timeout_ms));
            let idle = Duration::from_millis(idle.first().map_or(0, |ms| num(ms)));
            match echo(addr, num(bytes), num(seed), timeout, idle) {
                Ok(line) => {
                    println!("{line}");
                    0
                }
                Err(e) => {
                    println!("fail: {e}");
                    1
                }
            }
        }
        ["connect", timeout_ms, addrs @ ..] => connect_all(num(timeout_ms), addrs),
        ["hold", addr, timeout_ms] => hold(addr, Duration::from_millis(num(timeout_ms))),
        _ => {
            eprintln!(
                "usage: e2e-probe serve ADDR | echo ADDR BYTES SEED TIMEOUT_MS [IDLE_MS] \
                 | hold ADDR TIMEOUT_MS | connect TIMEOUT_MS ADDR..."
            );
            2
        }
    };
    std::process::exit(code);
}

fn num(s: &str) -> u64 {
    s.parse().unwrap_or_else(|e| panic!("not a number: {s:?}: {e}"))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("not a socket address: {s:?}: {e}"))
}

/// Echoes every connection until the peer half-closes, then half-closes.
fn serve(listen: &str) -> i32 {
    let listener = TcpListener::bind(addr(listen)).expect("bind");
    println!("listening {}", listener.local_addr().expect("local addr"));
    std::io::stdout().flush().expect("flush stdout");
    for tcp in listener.incoming() {
        let Ok(mut tcp) = tcp else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match tcp.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tcp.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tcp.shutdown(Shutdown::Write);
        });
    }
    0
}

/// One echo round trip of `bytes` bytes, written and read concurrently,
/// after `idle` on the open connection.
fn echo(
    target: &str,
    bytes: u64,
    seed: u64,
    timeout: Duration,
    idle: Duration,
) -> Result<String, String> {
    let tcp =
        TcpStream::connect_timeout(&addr(target), timeout).map_err(|e| format!("connect: {e}"))?;
    std::thread::sleep(idle);
    let started = Instant::now();
    let _ = tcp.set_nodelay(true);
    // A stall anywhere ends the probe: no single read or write may block
    // past the whole budget.
    tcp.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut writer = tcp.try_clone().map_err(|e| e.to_string())?;
    let sent = std::thread::spawn(move || -> Result<[u8; 32], String> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut hash = Sha256::new();
        let mut chunk = vec![0u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
            rng.fill(&mut chunk[..n]);
            hash.update(&chunk[..n]);
            writer.write_all(&chunk[..n]).map_err(|e| format!("write: {e}"))?;
            left -= n as u64;
        }
        writer.shutdown(Shutdown::Write).map_err(|e| format!("half-close: {e}"))?;
        Ok(hash.finalize().into())
    });
    let mut reader = tcp;
    let mut hash = Sha256::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let read = loop {
        if started.elapsed() > timeout {
            break Err(format!("timed out after {timeout:?} with {got} of {bytes} bytes back"));
        }
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                hash.update(&buf[..n]);
                got += n as u64;
            }
            Err(e) if timed_out(&e) => {
                break Err(format!("read timed out after {got} of {bytes} bytes"));
            }
            Err(e) => break Err(format!("read after {got} of {bytes} bytes: {e}")),
        }
    };
    if read.is_err() {
        // Unblock the writer before joining it.
        let _ = reader.shutdown(Shutdown::Both);
    }
    let sent = sent.join().map_err(|_| "writer panicked".to_owned())?;
    read?;
    let sent = sent?;
    let back: [u8; 32] = hash.finalize().into();
    if got != bytes {
        return Err(format!("{got} bytes back, sent {bytes}"));
    }
    if back != sent {
        return Err(format!("checksum differs: sent {} got {}", hex(&sent), hex(&back)));
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(format!("ok bytes={bytes} secs={secs:.3} sha256={}", hex(&back)))
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// Opens a connection, checks it carries a byte both ways, then waits for
/// the other side to close it (EOF or reset), up to `timeout`.
fn hold(target: &str, timeout: Duration) -> i32 {
    let result = (|| -> Result<String, String> {
        let mut tcp = TcpStream::connect_timeout(&addr(target), timeout)
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        tcp.write_all(b"x").map_err(|e| format!("write: {e}"))?;
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).map_err(|e| format!("echo: {e}"))?;
        let opened = Instant::now();
        match tcp.read(&mut byte) {
            Ok(0) => Ok(format!("closed eof after {:.3}s", opened.elapsed().as_secs_f64())),
            Ok(_) => Err("unexpected byte".into()),
            Err(e) if timed_out(&e) => Err(format!("still open after {timeout:?}")),
            Err(e) => Ok(format!("closed {e} after {:.3}s", opened.elapsed().as_secs_f64())),
        }
    })();
    match result {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            println!("fail: {e}");
            1
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Tries every address at once; reports how each attempt ended.
fn connect_all(timeout_ms: u64, addrs: &[&str]) -> i32 {
    let timeout = Duration::from_millis(timeout_ms);
    let tries: Vec<_> = addrs
        .iter()
        .map(|a| {
            let target = addr(a);
            std::thread::spawn(move || match TcpStream::connect_timeout(&target, timeout) {
                Ok(_) => format!("{target} connected"),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    format!("{target} refused")
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => format!("{target} timeout"),
                Err(e) => format!("{target} error {e}"),
            })
        })
        .collect();
    for t in tries {
        println!("{}", t.join().expect("connect thread"));
    }
    0
}
