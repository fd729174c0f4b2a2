//! Arbitrary bytes as the first bytes of a connection on a shared listen
//! address: telling TLS from HTTP and reading the server name or host
//! never panics, on the input or any prefix of it, and every name it
//! finds is normalized.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    agent_cloud::fuzzing::sniff(data);
});
