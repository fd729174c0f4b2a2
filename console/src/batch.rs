//! `relayctl batch FILE`: one `mappings ...` or `edges ...` command per
//! line (edges: add, remove, rotate-token, revoke), in the
//! subcommands' syntax with shell quoting; `#` starts a comment (a whole
//! line or the end of one) and blank lines are skipped. The whole file is parsed first (a
//! syntax error names its line and nothing is sent), then applied as one
//! atomic batch through the control API.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use api::{BatchRequest, Change};
use clap::Parser;
use serde::Serialize;

use crate::cli::{BatchCommand, BatchLine, EdgesCommand, MappingsCommand, Output};
use crate::client::ControlClient;

/// A batch file line that is not a valid change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub(crate) line: usize,
    pub(crate) message: String,
}

/// Parses a whole batch file into changes, each with its line number.
///
/// # Errors
/// The first line that is not a `mappings add|drain|remove` command.
pub(crate) fn parse(text: &str) -> Result<Vec<(usize, Change)>, SyntaxError> {
    let mut changes = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let error = |message: String| SyntaxError { line, message };
        let words = shell_words::split(content).map_err(|e| error(e.to_string()))?;
        let parsed = BatchLine::try_parse_from(&words).map_err(|e| {
            // clap's first line carries the reason; the rest is usage help.
            let rendered = e.to_string();
            error(
                rendered
                    .lines()
                    .next()
                    .unwrap_or("invalid command")
                    .trim_start_matches("error: ")
                    .to_owned(),
            )
        })?;
        let command = match parsed.command {
            BatchCommand::Mappings(command) => command,
            BatchCommand::Edges(command) => {
                changes.push((line, edge_change(command).map_err(error)?));
                continue;
            }
        };
        let change = match command {
            MappingsCommand::Add(add) => Change::Add { spec: Box::new(add.spec()) },
            MappingsCommand::Drain { name, deadline } => {
                Change::Drain { name, deadline_secs: deadline.map(|d| d.as_secs()) }
            }
            MappingsCommand::Remove { name } => Change::Remove { name },
            MappingsCommand::SetPolicy(set) => {
                Change::SetPolicy { policy: set.policy(), name: set.name }
            }
            MappingsCommand::List => {
                return Err(error("`mappings list` changes nothing and cannot be batched".into()));
            }
        };
        changes.push((line, change));
    }
    Ok(changes)
}

/// The change an `edges ...` line makes.
fn edge_change(command: EdgesCommand) -> Result<Change, String> {
    Ok(match command {
        EdgesCommand::Add { id, group } => Change::AddEdge { id, group },
        EdgesCommand::Remove { id } => Change::RemoveEdge { id },
        EdgesCommand::RotateToken { id, grace } => {
            Change::RotateToken { id, grace_secs: grace.map(|g| g.as_secs()) }
        }
        EdgesCommand::Revoke { id } => Change::RevokeEdge { id },
        EdgesCommand::List
        | EdgesCommand::Drain { .. }
        | EdgesCommand::Undrain { .. }
        | EdgesCommand::Enroll { .. } => {
            return Err(
                "only `edges add|remove|rotate-token|revoke` can be batched (drain, undrain and \
                 enroll are their own commands)"
                    .into(),
            );
        }
    })
}

#[derive(Debug, Serialize)]
struct LineOutcome {
    line: usize,
    ok: bool,
    message: String,
    /// A new edge token (`edges add`, `edges rotate-token`), shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

#[derive(Debug, Serialize)]
struct BatchReport {
    applied: bool,
    dry_run: bool,
    lines: Vec<LineOutcome>,
    /// In a cluster: the store revision the batch was committed at.
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
    /// In a cluster: what each live node did with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<api::NodeApply>,
}

fn read(file: &Path) -> std::io::Result<String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(file)
    }
}

/// Runs a batch file. Exit code 0 when everything applied (or, with
/// `--dry-run`, would apply), 1 for a syntax error, otherwise the client's.
pub(crate) fn run(client: &ControlClient, file: &Path, dry_run: bool, output: Output) -> ExitCode {
    let name = file.display();
    let text = match read(file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("relayctl: cannot read {name}: {e}");
            return ExitCode::from(1);
        }
    };
    let changes = match parse(&text) {
        Ok(changes) => changes,
        Err(e) => {
            eprintln!("relayctl: {name}:{}: {}; nothing was applied", e.line, e.message);
            return ExitCode::from(1);
        }
    };
    if changes.is_empty() {
        eprintln!("relayctl: {name}: no changes in the file; nothing to do");
        return ExitCode::SUCCESS;
    }
    let lines: Vec<usize> = changes.iter().map(|(line, _)| *line).collect();
    let request = BatchRequest { changes: changes.into_iter().map(|(_, c)| c).collect(), dry_run };
    let (answer, refusal) = match client.batch(&request) {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("relayctl: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let report = BatchReport {
        applied: answer.applied,
        dry_run,
        lines: answer
            .outcomes
            .iter()
            .map(|o| LineOutcome {
                line: lines.get(o.index).copied().unwrap_or(0),
                ok: o.ok,
                message: o.message.clone(),
                token: o.token.clone(),
            })
            .collect(),
        revision: answer.revision,
        nodes: answer.nodes,
    };
    let all_ok = report.lines.iter().all(|l| l.ok);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
        Output::Table => {
            for l in &report.lines {
                println!("{name}:{}: {} {}", l.line, if l.ok { "ok  " } else { "FAIL" }, l.message);
                if let Some(token) = &l.token {
                    println!("{name}:{}:      token (shown this once): {token}", l.line);
                }
            }
            match (dry_run, report.applied, all_ok) {
                (true, _, true) => println!(
                    "dry run: all {} change(s) would apply; nothing changed",
                    report.lines.len()
                ),
                (true, _, false) => {
                    println!("dry run: the batch would be refused; nothing changed")
                }
                (false, true, _) => println!("applied {} change(s)", report.lines.len()),
                (false, false, _) => println!("refused: nothing was applied"),
            }
            for line in crate::cluster::change_outcomes(report.revision, &report.nodes) {
                println!("{line}");
            }
        }
    }
    if (dry_run && all_ok) || report.applied {
        ExitCode::SUCCESS
    } else {
        match refusal {
            // The batch as a whole, e.g. 409 conflict or 503 store_unavailable.
            Some(e) => eprintln!("relayctl: {name}: {e}; nothing was applied"),
            None if !matches!(output, Output::Table) => {
                eprintln!("relayctl: {name}: batch refused; nothing was applied");
            }
            None => {}
        }
        ExitCode::from(4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_subcommand_syntax_with_comments_and_blanks() {
        let text = "# maintenance\n\nmappings add web --listen 0.0.0.0:8080 --edge e1 --target 10.0.0.5:80 --allow 10.0.0.0/8 --allow 192.0.2.1\n  mappings drain old --deadline 5m  # as in a shell, a comment may end a line\nmappings remove 'test box'\n";
        let changes = parse(text).unwrap();
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[0].0, 3);
        assert!(
            matches!(&changes[0].1, Change::Add { spec } if spec.allow == ["10.0.0.0/8", "192.0.2.1"])
        );
        assert_eq!(changes[1], (4, Change::Drain { name: "old".into(), deadline_secs: Some(300) }));
        assert_eq!(changes[2], (5, Change::Remove { name: "test box".into() }));
    }

    #[test]
    fn policy_lines_carry_their_limits_with_units() {
        let text = "mappings add web --listen 0.0.0.0:443 --edge e1 --target 10.0.0.5:443 --host 'web.example.com' --rate-limit-out 10MiB\nmappings set-policy web --max-connections-per-client 4 --rate-limit-in '2 MiB/s'\n";
        let changes = parse(text).unwrap();
        assert!(matches!(&changes[0].1, Change::Add { spec }
            if spec.host.as_deref() == Some("web.example.com")
                && spec.rate_limit_out_bps == Some(10 << 20)));
        let policy = api::PolicySpec {
            max_connections_per_client: Some(4),
            rate_limit_in_bps: Some(2 << 20),
            ..Default::default()
        };
        assert_eq!(changes[1].1, Change::SetPolicy { name: "web".into(), policy });
    }

    #[test]
    fn edge_lines_become_fleet_changes_and_drains_are_refused() {
        let text = "edges add site-b --group pool\nedges rotate-token site-a --grace 10m\nedges revoke old\nedges remove gone\n";
        let changes: Vec<Change> = parse(text).unwrap().into_iter().map(|(_, c)| c).collect();
        assert_eq!(
            changes,
            [
                Change::AddEdge { id: "site-b".into(), group: Some("pool".into()) },
                Change::RotateToken { id: "site-a".into(), grace_secs: Some(600) },
                Change::RevokeEdge { id: "old".into() },
                Change::RemoveEdge { id: "gone".into() },
            ]
        );
        let err = parse("edges drain site-a\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.message.contains("can be batched"), "{}", err.message);
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let mut text = String::new();
        for i in 0..6 {
            text.push_str(&format!("mappings remove m{i}\n"));
        }
        text.push_str("mappings add web --lisen 0.0.0.0:1 --edge e1 --target h:1\n");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line, 7);
        assert!(err.message.contains("--lisen"), "{}", err.message);
        for bad in [
            "mappings list",
            "edges drain e1",
            "mappings drain x --deadline soon",
            "mappings add 'unterminated",
        ] {
            assert!(parse(bad).is_err(), "{bad} should not parse");
        }
    }
}
