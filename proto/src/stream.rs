//! Stream life cycle: who may open which id, and what may follow what.

use thiserror::Error;

/// A broken stream rule. Coming from the peer, it is a protocol error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StreamError {
    /// An open with an id that is zero or not above every earlier one.
    #[error("stream id {id} is not new (last opened {last})")]
    IdReused { id: u32, last: u32 },
    /// Data or a second FIN after the peer's FIN.
    #[error("data after end of stream")]
    AfterFin,
    /// This side has used every stream id.
    #[error("stream ids exhausted")]
    IdsExhausted,
}

/// Stream ids on one tunnel. Only the cloud opens streams, with ids that
/// start at 1 and strictly increase, so the edge can tell a reused or
/// replayed id from a new one without remembering closed streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamIds {
    last: u32,
}

impl StreamIds {
    /// A tunnel on which no stream has been opened.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ids as if `last` streams had been opened (tests of exhaustion).
    pub fn after(last: u32) -> Self {
        Self { last }
    }

    /// Opener side: whether every id has been used, so the tunnel can open
    /// no more streams and must be replaced.
    pub fn is_exhausted(&self) -> bool {
        self.last == u32::MAX
    }

    /// Opener side: the next id to use.
    ///
    /// # Errors
    /// [`StreamError::IdsExhausted`] after 2^32 - 1 streams; the tunnel must
    /// then be replaced.
    pub fn allocate(&mut self) -> Result<u32, StreamError> {
        self.last = self.last.checked_add(1).ok_or(StreamError::IdsExhausted)?;
        Ok(self.last)
    }

    /// Accepting side: checks that `id` is new.
    ///
    /// # Errors
    /// [`StreamError::IdReused`] if `id` is not above every earlier id.
    pub fn accept(&mut self, id: u32) -> Result<(), StreamError> {
        if id <= self.last {
            return Err(StreamError::IdReused { id, last: self.last });
        }
        self.last = id;
        Ok(())
    }
}

/// Which halves of a stream are finished. A stream is closed when both
/// sides have sent FIN, or when either reset it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamState {
    sent_fin: bool,
    received_fin: bool,
    reset: bool,
}

impl StreamState {
    /// An open stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks that the peer may still send data.
    ///
    /// # Errors
    /// [`StreamError::AfterFin`] once the peer has sent FIN.
    pub fn on_data(&self) -> Result<(), StreamError> {
        if self.received_fin { Err(StreamError::AfterFin) } else { Ok(()) }
    }

    /// Records the peer's FIN.
    ///
    /// # Errors
    /// [`StreamError::AfterFin`] if the peer already sent one.
    pub fn on_fin(&mut self) -> Result<(), StreamError> {
        self.on_data()?;
        self.received_fin = true;
        Ok(())
    }

    /// Records this side's FIN.
    pub fn on_sent_fin(&mut self) {
        self.sent_fin = true;
    }

    /// Records a reset from either side.
    pub fn on_reset(&mut self) {
        self.reset = true;
    }

    /// Whether nothing more can happen on the stream.
    pub fn is_closed(&self) -> bool {
        self.reset || (self.sent_fin && self.received_fin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_increase() {
        let mut ids = StreamIds::new();
        assert!(ids.accept(0).is_err());
        ids.accept(1).unwrap();
        ids.accept(5).unwrap();
        assert_eq!(ids.accept(5), Err(StreamError::IdReused { id: 5, last: 5 }));
        assert!(ids.accept(3).is_err());
    }

    #[test]
    fn allocation_matches_acceptance_and_ends() {
        let mut opener = StreamIds::new();
        let mut acceptor = StreamIds::new();
        for _ in 0..10 {
            acceptor.accept(opener.allocate().unwrap()).unwrap();
        }
        let mut near_end = StreamIds::after(u32::MAX - 1);
        assert!(!near_end.is_exhausted());
        assert_eq!(near_end.allocate(), Ok(u32::MAX));
        assert!(near_end.is_exhausted());
        assert_eq!(near_end.allocate(), Err(StreamError::IdsExhausted));
    }

    #[test]
    fn half_close_then_close() {
        let mut s = StreamState::new();
        s.on_data().unwrap();
        s.on_fin().unwrap();
        assert_eq!(s.on_data(), Err(StreamError::AfterFin));
        assert_eq!(s.on_fin(), Err(StreamError::AfterFin));
        assert!(!s.is_closed(), "our side may still send");
        s.on_sent_fin();
        assert!(s.is_closed());
    }

    #[test]
    fn reset_closes_at_once() {
        let mut s = StreamState::new();
        s.on_reset();
        assert!(s.is_closed());
    }
}
