//! Listening sockets with a deep accept queue.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel queues before `accept`. Tokio's default (128)
/// overflows when a few hundred clients connect at once: the kernel then
/// drops their SYNs and each waits a second to retry. The kernel caps this
/// at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// Binds `addr` (with `SO_REUSEADDR`, as `TcpListener::bind` does) and
/// listens with a deep backlog.
///
/// # Errors
/// If the address cannot be bound (in use, not local, no permission).
pub(crate) fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}
