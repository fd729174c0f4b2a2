//! Arbitrary bytes as control-API request bodies, then the validation a
//! mapping spec goes through: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = serde_json::from_slice::<api::BatchRequest>(data) {
        for change in batch.changes {
            if let api::Change::Add { spec } = change {
                let _ = spec.to_config();
            }
        }
    }
    if let Ok(spec) = serde_json::from_slice::<api::MappingSpec>(data) {
        let _ = spec.to_config();
    }
    let _ = serde_json::from_slice::<api::DrainRequest>(data);
});
