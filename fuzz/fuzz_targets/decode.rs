//! Raw bytes into the frame decoder: it must never panic, never consume
//! bytes when it asks for more, and whatever it decodes must re-encode to
//! the same bytes.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Bytes::copy_from_slice(data);
    loop {
        let before = input.clone();
        match proto::decode(&mut input, 64 * 1024) {
            Ok(Some(frame)) => {
                let consumed = before.len() - input.len();
                let mut again = BytesMut::new();
                frame.encode(&mut again);
                assert_eq!(&again[..], &before[..consumed], "re-encoding differs");
            }
            Ok(None) => {
                assert_eq!(input.len(), before.len());
                break;
            }
            Err(_) => break,
        }
    }
});
