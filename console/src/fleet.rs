//! `relayctl edges add|remove|rotate-token|revoke|enroll`: the fleet's changes.

use api::{AddEdgeRequest, EdgeCredential, EnrollRequest};

use crate::cli::Output;
use crate::client::{Changed, ClientError, ControlClient};

/// What to tell the operator with a new token, for people.
fn token_lines(id: &str, credential: &EdgeCredential) -> String {
    let mut text = format!(
        "token for edge {id} (shown this once; the cloud keeps it, relayctl does not):\n  {}\n\
         on the edge: write it to the file `token_file` names in edge.toml (mode 0600), with \
         `edge_id = \"{id}\"`, and restart relay-edge\n",
        credential.token
    );
    if let Some(until) = credential.edge.as_ref().and_then(|e| e.previous_token_until_unix_ms) {
        let left = until.saturating_sub(crate::cluster::unix_ms());
        text.push_str(&format!(
            "the old token is still accepted for {}: switch the edge over before then\n",
            crate::format::duration_ms(left)
        ));
    }
    text
}

fn print_credential(output: Output, id: &str, sentence: &str, c: &Changed<EdgeCredential>) {
    match output {
        Output::Json => {
            let body = c.body.clone().unwrap_or_default();
            println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
        }
        Output::Table => {
            println!("{sentence}");
            print!("{}", token_lines(id, &c.value));
            for line in crate::cluster::change_outcomes(c.applied.revision, &c.applied.nodes) {
                println!("{line}");
            }
        }
    }
}

/// Adds edge `id`, printing its token.
pub(crate) fn add(
    client: &ControlClient,
    id: &str,
    group: Option<String>,
    output: Output,
) -> Result<(), ClientError> {
    let sentence = match &group {
        Some(g) => format!("edge {id} added, in group {g}"),
        None => format!("edge {id} added"),
    };
    let request = AddEdgeRequest { id: id.to_owned(), group };
    let c = client.add_edge(&request)?;
    print_credential(output, id, &sentence, &c);
    Ok(())
}

/// Gives edge `id` a new token, printing it.
pub(crate) fn rotate(
    client: &ControlClient,
    id: &str,
    grace_secs: Option<u64>,
    output: Output,
) -> Result<(), ClientError> {
    let c = client.rotate_token(id, grace_secs)?;
    print_credential(output, id, &format!("edge {id} has a new token"), &c);
    Ok(())
}

/// Makes an enrolment code for edge `id`, printing it with the command to
/// run on the on-prem machine.
pub(crate) fn enroll(
    client: &ControlClient,
    id: &str,
    group: Option<String>,
    ttl_secs: Option<u64>,
    output: Output,
) -> Result<(), ClientError> {
    let c = client.enroll(id, &EnrollRequest { group, ttl_secs })?;
    match output {
        Output::Json => {
            let body = c.body.clone().unwrap_or_default();
            println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
        }
        Output::Table => {
            let left = c.value.expires_unix_ms.saturating_sub(crate::cluster::unix_ms());
            println!(
                "enrolment code for edge {id} (works once, for {}; shown this once):\n  {}",
                crate::format::duration_ms(left),
                c.value.code
            );
            println!("on the on-prem machine, run:\n  {}", c.value.command);
            println!(
                "  (add --allow HOST:PORT for each destination the edge may reach; check that \
                 {} is the URL edges reach this cloud at)",
                c.value.cloud_url
            );
            for line in crate::cluster::change_outcomes(c.applied.revision, &c.applied.nodes) {
                println!("{line}");
            }
        }
    }
    Ok(())
}
