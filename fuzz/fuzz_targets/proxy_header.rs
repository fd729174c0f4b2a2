//! Arbitrary bytes as what a load balancer sends first on a mapping
//! listener behind `[proxy_protocol]`: reading the PROXY header never
//! panics, and never takes a byte past the header's limits (the bytes
//! after it are the client's).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let used = agent_cloud::fuzzing::proxy_header(data);
    assert!(used <= data.len());
});
