//! WebSocket frame headers (RFC 6455, section 5.2) and masking, sans I/O.

use thiserror::Error;

/// Continues a fragmented message.
pub const OP_CONTINUATION: u8 = 0x0;
/// A text message (never sent by a tunnel; refused when received).
pub const OP_TEXT: u8 = 0x1;
/// A binary message: what tunnel frames travel in.
pub const OP_BINARY: u8 = 0x2;
/// Close.
pub const OP_CLOSE: u8 = 0x8;
/// Ping.
pub const OP_PING: u8 = 0x9;
/// Pong.
pub const OP_PONG: u8 = 0xA;

/// Longest header: 2 bytes, an 8-byte length, a 4-byte mask key.
pub const MAX_HEADER_LEN: usize = 14;
/// Control frames carry at most this much.
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Last frame of its message.
    pub fin: bool,
    /// One of the `OP_*` codes.
    pub opcode: u8,
    /// The masking key, on frames sent by a client.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub payload_len: u64,
    /// Bytes the header itself takes.
    pub header_len: usize,
}

/// A frame header that breaks RFC 6455 or our limits.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// RSV bits are set, but no extension was negotiated.
    #[error("reserved bits set in a frame header (no extension was negotiated)")]
    Reserved,
    /// An opcode RFC 6455 does not define.
    #[error("unknown WebSocket opcode {0:#x}")]
    Opcode(u8),
    /// A control frame that is fragmented or longer than 125 bytes.
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControl,
    /// A payload over the limit; refused before anything is buffered.
    #[error("WebSocket frame of {len} bytes is over the limit of {limit}")]
    TooLarge {
        /// Length the header announced.
        len: u64,
        /// The limit.
        limit: usize,
    },
}

/// Parses a frame header at the start of `buf`. `Ok(None)` means more
/// bytes are needed. Lengths above `max_payload` fail here, on the header,
/// before any payload is buffered.
///
/// # Errors
/// [`FrameError`] for a header that breaks the protocol or the limit.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, FrameError> {
    let [b0, b1, rest @ ..] = buf else { return Ok(None) };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let opcode = b0 & 0x0F;
    let control = match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => false,
        OP_CLOSE | OP_PING | OP_PONG => true,
        other => return Err(FrameError::Opcode(other)),
    };
    let masked = b1 & 0x80 != 0;
    let (payload_len, len_bytes) = match b1 & 0x7F {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 2),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(bytes) => (u64::from_be_bytes(bytes.try_into().unwrap_or_default()), 8),
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    if control && (!fin || payload_len > MAX_CONTROL_PAYLOAD) {
        return Err(FrameError::BadControl);
    }
    if payload_len > max_payload as u64 {
        return Err(FrameError::TooLarge { len: payload_len, limit: max_payload });
    }
    let mask = if masked {
        match rest.get(len_bytes..len_bytes + 4) {
            Some(key) => Some([key[0], key[1], key[2], key[3]]),
            None => return Ok(None),
        }
    } else {
        None
    };
    let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
    Ok(Some(Header { fin, opcode, mask, payload_len, header_len }))
}

/// Writes the header of a final (unfragmented) frame into `out` and
/// returns its length.
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    opcode: u8,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = 0x80 | opcode;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut len = match payload_len {
        0..=125 => {
            out[1] = mask_bit | payload_len as u8;
            2
        }
        126..=0xFFFF => {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        }
    };
    if let Some(key) = mask {
        out[len..len + 4].copy_from_slice(&key);
        len += 4;
    }
    len
}

/// XORs `data` with the masking key (masking and unmasking are the same).
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    // Eight bytes at a time; 8 is a multiple of 4, so the key stays
    // aligned for the tail.
    let wide = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: u8, len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut out, opcode, len, mask);
        out[..n].to_vec()
    }

    #[test]
    fn headers_round_trip_at_every_length_boundary() {
        for len in [0, 1, 125, 126, 127, 0xFFFF, 0x1_0000, 300_000] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let bytes = header(OP_BINARY, len, mask);
                let parsed = parse_header(&bytes, 1 << 20).unwrap().unwrap();
                assert_eq!(
                    parsed,
                    Header {
                        fin: true,
                        opcode: OP_BINARY,
                        mask,
                        payload_len: len as u64,
                        header_len: bytes.len()
                    }
                );
                // Every strict prefix asks for more bytes.
                for cut in 0..bytes.len() {
                    assert_eq!(
                        parse_header(&bytes[..cut], 1 << 20),
                        Ok(None),
                        "len {len} cut {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_rfc_example_parses() {
        // RFC 6455 5.7: a masked "Hello" from a client.
        let mut frame = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let h = parse_header(&frame, 125).unwrap().unwrap();
        assert_eq!((h.opcode, h.header_len, h.payload_len), (OP_TEXT, 6, 5));
        apply_mask(&mut frame[6..], h.mask.unwrap());
        assert_eq!(&frame[6..], b"Hello");
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(parse_header(&[0xC2, 0x00], 10), Err(FrameError::Reserved));
        assert_eq!(parse_header(&[0x83, 0x00], 10), Err(FrameError::Opcode(3)));
        assert_eq!(parse_header(&[0x09, 0x00], 10), Err(FrameError::BadControl));
        assert_eq!(parse_header(&[0x89, 126, 0, 126], 1000), Err(FrameError::BadControl));
        // The limit is checked on the header, before any payload arrives.
        let big = header(OP_BINARY, 8 << 20, None);
        assert_eq!(
            parse_header(&big, 1 << 20),
            Err(FrameError::TooLarge { len: 8 << 20, limit: 1 << 20 })
        );
    }

    #[test]
    fn masking_matches_the_bytewise_definition_and_undoes_itself() {
        let key = [0xA1, 0x02, 0xF3, 0x44];
        for len in [0, 1, 7, 8, 9, 31, 1000] {
            let original: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let mut data = original.clone();
            apply_mask(&mut data, key);
            let expected: Vec<u8> =
                original.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
            assert_eq!(data, expected);
            apply_mask(&mut data, key);
            assert_eq!(data, original);
        }
    }
}
