//! Arbitrary bytes as control-API request bodies, then what the cloud
//! agent does with them before committing: the validation a mapping spec
//! goes through and the planning of every change (names, addresses, edges,
//! drain deadlines) against a small table. Never a panic, and planning
//! never lets through a change the commit cannot apply.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = serde_json::from_slice::<api::BatchRequest>(data) {
        for change in &batch.changes {
            if let api::Change::Add { spec } = change {
                let _ = spec.to_config();
            }
        }
        agent_cloud::fuzzing::plan(&batch.changes);
    }
    if let Ok(spec) = serde_json::from_slice::<api::MappingSpec>(data) {
        let _ = spec.to_config();
        agent_cloud::fuzzing::plan(&[api::Change::Add { spec: Box::new(spec) }]);
    }
    if let Ok(drain) = serde_json::from_slice::<api::DrainRequest>(data) {
        for name in ["web", "db", "nobody"] {
            let change = api::Change::Drain { name: name.into(), deadline_secs: drain.deadline_secs };
            agent_cloud::fuzzing::plan(&[change]);
        }
    }
});
