//! Read buffers for relays; the large ones are reused.
//!
//! A bulk relay reads up to 256 KiB at a time into a buffer that lives
//! until the tunnel's writer has sent it. Allocating and freeing buffers of
//! that size at that rate made glibc hand the memory back to the kernel and
//! fault it in again (about 12 % of the cloud's CPU in a profile of eight
//! bulk streams, docs/performance.md). So large buffers go back to a small
//! shared pool when the last slice of them is dropped, at most
//! [`POOL_MAX`] of them; small reads (request/response traffic) allocate
//! just what they ask for, as before.

use std::io;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;

/// Size of a pooled buffer: the largest relay read.
pub(crate) const LARGE: usize = 256 * 1024;
/// Reads asking for more than this use a pooled buffer.
const SMALL_MAX: usize = 64 * 1024;
/// Pooled buffers kept while unused (4 MiB).
const POOL_MAX: usize = 16;

static POOL: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

fn pool() -> std::sync::MutexGuard<'static, Vec<Box<[u8]>>> {
    // The pool holds plain buffers; a panic elsewhere cannot leave it
    // inconsistent.
    POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn take_large() -> Box<[u8]> {
    pool().pop().unwrap_or_else(|| vec![0u8; LARGE].into_boxed_slice())
}

fn give_back(buf: Box<[u8]>) {
    let mut pool = pool();
    if pool.len() < POOL_MAX {
        pool.push(buf);
    }
}

/// The first `len` bytes of a pooled buffer, owned by [`Bytes`] until its
/// last slice is dropped.
struct Filled {
    buf: Option<Box<[u8]>>,
    len: usize,
}

impl AsRef<[u8]> for Filled {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_deref().map_or(&[], |b| &b[..self.len])
    }
}

impl Drop for Filled {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_back(buf);
        }
    }
}

/// Reads at most `max` bytes from `tcp` without waiting, like
/// [`TcpStream::try_read`]. An empty result means EOF.
///
/// # Errors
/// The socket's error, [`io::ErrorKind::WouldBlock`] included.
pub(crate) fn try_read_chunk(tcp: &TcpStream, max: usize) -> io::Result<Bytes> {
    if max <= SMALL_MAX {
        let mut buf = BytesMut::with_capacity(max);
        tcp.try_read_buf(&mut buf)?;
        return Ok(buf.freeze());
    }
    let mut buf = take_large();
    match tcp.try_read(&mut buf[..max.min(LARGE)]) {
        Ok(len) => Ok(Bytes::from_owner(Filled { buf: Some(buf), len })),
        Err(e) => {
            give_back(buf);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn large_reads_reuse_buffers_and_never_overread() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&data).await.unwrap();
        drop(client);

        let mut got = Vec::new();
        let mut pointers = Vec::new();
        loop {
            server.readable().await.unwrap();
            match try_read_chunk(&server, 100_000) {
                Ok(chunk) if chunk.is_empty() => break,
                Ok(chunk) => {
                    assert!(chunk.len() <= 100_000);
                    got.extend_from_slice(&chunk);
                    pointers.push(chunk.as_ptr());
                    // Dropped here: the buffer goes back to the pool.
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, data);
        // Several reads, and at least one buffer served twice (other tests
        // may share the pool, so not necessarily all of them).
        assert!(pointers.len() >= 3);
        let mut unique = pointers.clone();
        unique.sort_unstable();
        unique.dedup();
        assert!(unique.len() < pointers.len(), "no buffer was reused");
    }
}
