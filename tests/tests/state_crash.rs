//! Killing the cloud agent with SIGKILL at random moments while mappings
//! change: every restart finds a valid state, old or new, never torn, and
//! every change the API acknowledged is still there.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_tests::{ADMIN_TOKEN, Agent, Api, cloud_toml_with_control, free_port};
use serde_json::json;

const ROUNDS: usize = 12;

#[derive(Debug, Default)]
struct Ledger {
    /// Mappings whose add was acknowledged and not later removed.
    durable: BTreeSet<String>,
    /// The change in flight when the agent died, if any.
    in_flight: Option<(bool, String)>,
    /// Changes acknowledged over the whole test.
    acknowledged: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_mapping_changes_leaves_a_valid_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state_file = dir.path().join("state.json");
    let control = free_port();
    let toml = cloud_toml_with_control("127.0.0.1:0", &[], &state_file).replacen(
        "listen = \"127.0.0.1:0\"\nadmin_token",
        &format!("listen = \"{control}\"\nadmin_token"),
        1,
    );
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..ROUNDS {
        let mut cloud = Agent::spawn("relay-cloud", &toml);
        cloud.wait_for_log(&["control API listening"], Duration::from_secs(10)).await;
        let api = Api::new(control, Some(ADMIN_TOKEN));

        // What survived the last kill: everything acknowledged, plus at
        // most the one change that was in flight.
        let (status, listed) = api.call("GET", "/v1/mappings", None).await;
        assert_eq!(status, 200);
        let present: BTreeSet<String> = listed
            .as_array()
            .expect("array")
            .iter()
            .map(|m| m["name"].as_str().expect("name").to_owned())
            .collect();
        {
            let mut l = ledger.lock().expect("ledger");
            let mut allowed = l.durable.clone();
            if let Some((true, name)) = &l.in_flight {
                allowed.insert(name.clone());
            }
            let mut required = l.durable.clone();
            if let Some((false, name)) = &l.in_flight {
                required.remove(name);
            }
            assert!(
                required.is_subset(&present),
                "round {round}: lost acknowledged mappings {required:?} vs {present:?}"
            );
            assert!(
                present.is_subset(&allowed),
                "round {round}: unexpected mappings {present:?} vs {allowed:?}"
            );
            l.durable = present.clone();
            l.in_flight = None;
        }

        // Change mappings as fast as the API allows, and kill mid-way.
        let changer = {
            let api = api.clone();
            let ledger = Arc::clone(&ledger);
            tokio::spawn(async move {
                for i in 0.. {
                    let remove = {
                        let l = ledger.lock().expect("ledger");
                        (i % 3 == 2).then(|| l.durable.iter().next().cloned()).flatten()
                    };
                    let (adding, name) = match remove {
                        Some(name) => (false, name),
                        None => (true, format!("m{round}-{i}")),
                    };
                    ledger.lock().expect("ledger").in_flight = Some((adding, name.clone()));
                    let result = if adding {
                        let body = json!({"name": name, "listen": "127.0.0.1:0", "edge": "e1", "target": "127.0.0.1:9"});
                        api.try_call("POST", "/v1/mappings", Some(body)).await
                    } else {
                        api.try_call("DELETE", &format!("/v1/mappings/{name}"), None).await
                    };
                    let Ok((status, _)) = result else { return };
                    let mut l = ledger.lock().expect("ledger");
                    assert!(status == 201 || status == 204, "change refused: {status}");
                    if adding {
                        l.durable.insert(name);
                    } else {
                        l.durable.remove(&name);
                    }
                    l.in_flight = None;
                    l.acknowledged += 1;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(rng.u64(5..60))).await;
        cloud.signal("KILL");
        assert_eq!(cloud.wait_exit(Duration::from_secs(5)).await, None, "killed by a signal");
        let _ =
            tokio::time::timeout(Duration::from_secs(15), changer).await.expect("changer stops");

        // The file on disk is whole: valid JSON of the expected shape.
        if state_file.exists() {
            let text = std::fs::read_to_string(&state_file).expect("read state");
            let parsed: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("round {round}: torn state file ({e}): {text:?}"));
            assert_eq!(parsed["version"], 1);
            assert!(parsed["added"].is_array() && parsed["removed"].is_array());
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&state_file).expect("state metadata").permissions(),
            );
            assert_eq!(mode & 0o777, 0o600, "round {round}: state file mode {mode:o}");
        }
    }
    let l = ledger.lock().expect("ledger");
    eprintln!(
        "{ROUNDS} kills, {} changes acknowledged, {} mappings durable at the end",
        l.acknowledged,
        l.durable.len()
    );
    assert!(l.acknowledged >= ROUNDS, "too few changes happened between kills to test anything");
}
