//! The command line. Batch files use the same `mappings ...` syntax, so
//! the mapping commands are parsed by the same definitions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The operator's console for hybrid relay.
///
/// With no command on a terminal it opens the TUI. The endpoint(s) and
/// admin token come from --endpoint / --token-file, else RELAYCTL_ENDPOINT
/// (comma-separated) / RELAYCTL_TOKEN, else the config file
/// (RELAYCTL_CONFIG, or ~/.config/relayctl/config.toml with `endpoint`, a
/// URL or a list of them, and `token_file`), else the default
/// http://127.0.0.1:7070.
#[derive(Debug, Parser)]
#[command(name = "relayctl", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Control API of the cloud agent, e.g. http://127.0.0.1:7070. For a
    /// cluster, several (repeat it, or separate them with commas): each
    /// command uses the first that answers.
    #[arg(long, visible_alias = "url", global = true, value_name = "URL", value_delimiter = ',')]
    pub(crate) endpoint: Vec<String>,
    /// Say on stderr which endpoint answered, and why others did not.
    #[arg(long, short = 'v', global = true)]
    pub(crate) verbose: bool,
    /// File holding the admin token.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
    /// The same as `-o json`.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl GlobalArgs {
    /// The output format asked for, `--json` winning.
    pub(crate) fn output(&self) -> Output {
        if self.json { Output::Json } else { self.output }
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON with stable field names, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
// Parsed once per run (or per batch line): its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    /// Open the terminal UI.
    Tui,
    /// One-line health of the cloud agent, its edges and mappings.
    Status,
    /// List or drain edges.
    #[command(subcommand)]
    Edges(EdgesCommand),
    /// List, add, drain or remove mappings.
    #[command(subcommand)]
    Mappings(MappingsCommand),
    /// List, drain or undrain the nodes of a cluster.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// What happened on the cloud agent: tunnels up and down, mappings
    /// added, drained and removed, edges drained, nodes joining and
    /// leaving, limits hit. Oldest first; `-o json` prints JSON lines.
    Events {
        /// Only events after this seq (0: every event the agent holds).
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        since: u64,
        /// Keep printing new events as they happen, like `tail -f`;
        /// reconnects and resumes after the last one seen if the
        /// connection drops.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Apply a file of `mappings ...` lines atomically (`-` reads stdin).
    Batch {
        /// The batch file: one mapping command per line, `#` comments.
        file: PathBuf,
        /// Validate and print the plan without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run a cloud agent, an edge agent and a sample service on loopback,
    /// and open the TUI on them.
    Demo,
    /// Time the TUI on a made-up fleet of this size: parse, apply, draw
    /// and keys (for relay-bench; needs no cloud agent).
    #[command(hide = true)]
    MeasureTui {
        #[arg(long, default_value_t = 1000)]
        edges: usize,
        #[arg(long, default_value_t = 5000)]
        mappings: usize,
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EdgesCommand {
    /// List edges with health, tunnels and round-trip times.
    List,
    /// Stop sending new connections to an edge; open ones finish. Lasts
    /// across cloud restarts, until `edges undrain`.
    Drain {
        /// The edge id.
        id: String,
    },
    /// Send new connections to a drained edge again.
    Undrain {
        /// The edge id.
        id: String,
    },
    /// Add an edge (kept across restarts). Prints its token, shown this
    /// once: put it in the edge's token file.
    Add {
        /// The edge id: 1 to 64 of A-Z a-z 0-9 . _ -
        id: String,
        /// A group to join (created by its first member); mappings that
        /// name the group use any healthy member.
        #[arg(long)]
        group: Option<String>,
    },
    /// Remove an edge added at run time, closing its tunnels. Refused for a
    /// config-file edge (revoke it, or edit the file) and while a mapping
    /// has no other edge.
    Remove {
        /// The edge id.
        id: String,
    },
    /// Give an edge a new token (printed, shown this once). The old token
    /// is still accepted for the grace, so the edge can be switched over
    /// without a gap.
    RotateToken {
        /// The edge id.
        id: String,
        /// How long the old token stays valid, e.g. 10m, 1h, 7d (at most
        /// 30 days; 0s refuses it at once). Default 1h.
        #[arg(long, value_parser = parse_grace)]
        grace: Option<Duration>,
    },
    /// Revoke an edge: its tunnels close at once (on every node of a
    /// cluster) and it is refused until it gets a new token.
    Revoke {
        /// The edge id.
        id: String,
    },
    /// Make a one-time enrolment code for an edge (creating the edge if
    /// it does not exist) and print the command to run on the on-prem
    /// machine: `relay-edge enroll` redeems it and writes a ready config.
    Enroll {
        /// The edge id: 1 to 64 of A-Z a-z 0-9 . _ -
        id: String,
        /// A group for an edge this creates.
        #[arg(long)]
        group: Option<String>,
        /// How long the code works, e.g. 15m, 1h (1s to 7 days). Default 15m.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodesCommand {
    /// List the nodes: ready, draining, store reachable, the revision each
    /// has applied, connections, edges, mappings it could not serve.
    List,
    /// Make a node report not-ready, so that the load balancer stops
    /// sending to it; its open connections may finish until the deadline.
    Drain {
        /// The node id.
        node: String,
        /// How long open connections may continue (e.g. 30s, 5m); the
        /// agent's default is 30s.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        deadline: Option<Duration>,
    },
    /// Make a drained node ready again.
    Undrain {
        /// The node id.
        node: String,
    },
}

/// `relayctl mappings add` (also a batch line).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct AddMapping {
    /// Unique name: letters, digits, `.`, `_`, `-`.
    name: String,
    /// Public address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// The edge that carries the connections.
    #[arg(long, value_name = "ID")]
    edge: String,
    /// Destination as the edge sees it, host:port.
    #[arg(long, value_name = "HOST:PORT")]
    target: String,
    /// Client network allowed (CIDR or IP); repeat for more. Default: any.
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<String>,
    /// Concurrent client connections allowed.
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
    /// Check through the edge that the target takes connections this
    /// often (1s to 1h), e.g. 10s: the probe column then tells "site
    /// down" from "service down".
    #[arg(long, value_name = "DURATION", value_parser = parse_probe_interval)]
    probe_interval: Option<Duration>,
    /// With --probe-interval: what the probe writes after connecting,
    /// e.g. 'PING\r\n' (\r \n \t \\ are understood).
    #[arg(long, value_name = "TEXT", value_parser = parse_probe_text)]
    probe_send: Option<String>,
    /// With --probe-interval: what the service must answer for the probe
    /// to pass, e.g. SSH- or +PONG.
    #[arg(long, value_name = "TEXT", value_parser = parse_probe_text)]
    probe_expect: Option<String>,
    /// Have the edge write a PROXY protocol header (v1 or v2) naming the
    /// real client to the target before its bytes; the service must expect
    /// it (nginx `listen ... proxy_protocol`, HAProxy `accept-proxy`).
    #[arg(long, value_name = "VERSION")]
    proxy_protocol: Option<config::ProxyVersion>,
    /// Share --listen with other mappings, taking connections for this
    /// name: by TLS server name (TLS is not terminated) or HTTP Host.
    /// app.example.com, *.example.com (one label), or '*' (the default).
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// A probe text with `\r`, `\n`, `\t` and `\\` read as escapes, since a
/// shell or batch line cannot easily hold a line break.
fn parse_probe_text(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            other => {
                let got = other.map_or_else(|| "the end".to_owned(), |c| format!("\\{c}"));
                return Err(format!("unknown escape {got}: use \\r, \\n, \\t or \\\\"));
            }
        }
    }
    Ok(out)
}

impl AddMapping {
    /// The mapping as the control API takes it.
    pub(crate) fn spec(self) -> api::MappingSpec {
        api::MappingSpec {
            name: self.name,
            listen: self.listen,
            edge: self.edge,
            target: self.target,
            allow: self.allow,
            max_connections: self.max_connections,
            probe_interval_secs: self.probe_interval.map(|d| d.as_secs()),
            probe_send: self.probe_send,
            probe_expect: self.probe_expect,
            proxy_protocol: self.proxy_protocol,
            host: self.host,
            max_connections_per_client: self.policy.max_connections_per_client,
            new_connections_per_client: self.policy.new_connections_per_client,
            rate_limit_in_bps: self.policy.rate_limit_in,
            rate_limit_out_bps: self.policy.rate_limit_out,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
// Parsed once per run (or per batch line): its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum MappingsCommand {
    /// List mappings with state and live figures.
    List,
    /// Add a mapping; it listens at once and survives restarts.
    Add(AddMapping),
    /// Drain a mapping: stop new connections, let open ones finish.
    Drain {
        /// The mapping's name.
        name: String,
        /// How long open connections may continue (e.g. 90s, 5m).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        deadline: Option<Duration>,
    },
    /// Remove a mapping at once, resetting its open connections.
    Remove {
        /// The mapping's name.
        name: String,
    },
    /// Replace a mapping's traffic policy, live: the limits given are the
    /// whole new policy (one left out is no limit).
    SetPolicy(SetPolicy),
}

/// `mappings set-policy`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct SetPolicy {
    /// The mapping's name.
    pub(crate) name: String,
    #[command(flatten)]
    policy: PolicyArgs,
}

impl SetPolicy {
    /// The policy as the control API takes it.
    pub(crate) fn policy(&self) -> api::PolicySpec {
        let p = &self.policy;
        api::PolicySpec {
            max_connections_per_client: p.max_connections_per_client,
            new_connections_per_client: p.new_connections_per_client,
            rate_limit_in_bps: p.rate_limit_in,
            rate_limit_out_bps: p.rate_limit_out,
        }
    }
}

/// The traffic policy flags of `mappings add` and `mappings set-policy`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct PolicyArgs {
    /// Concurrent connections one client address (an IPv6 /64) may hold.
    #[arg(long, value_name = "N")]
    max_connections_per_client: Option<u32>,
    /// New connections one client address may open per second.
    #[arg(long, value_name = "N")]
    new_connections_per_client: Option<u32>,
    /// Bytes per second from all clients to the service, e.g. 10MiB.
    #[arg(long, value_name = "RATE", value_parser = config::parse_rate)]
    rate_limit_in: Option<u64>,
    /// Bytes per second from the service to all clients, e.g. 10MiB.
    #[arg(long, value_name = "RATE", value_parser = config::parse_rate)]
    rate_limit_out: Option<u64>,
}

/// A line of a batch file, parsed with the same definitions.
#[derive(Debug, Parser)]
#[command(name = "batch line", no_binary_name = true, disable_help_flag = true)]
pub(crate) struct BatchLine {
    #[command(subcommand)]
    pub(crate) command: BatchCommand,
}

#[derive(Debug, Subcommand)]
// Parsed once per run (or per batch line): its size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum BatchCommand {
    /// A mapping command.
    #[command(subcommand)]
    Mappings(MappingsCommand),
    /// An edge command.
    #[command(subcommand)]
    Edges(EdgesCommand),
}

/// A rotation's grace: at most the 30 days the API accepts.
fn parse_grace(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 10m, 1h, 7d)"))?;
    if d.as_secs() > api::MAX_ROTATION_GRACE_SECS {
        return Err(format!("{s} is longer than the 30 days a grace may last"));
    }
    Ok(d)
}

/// A probe interval: 1 s to 1 h.
fn parse_probe_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 10s, 1m)"))?;
    config::check_probe_interval(d)
}

/// An enrolment code's lifetime: 1 s to 7 days.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 15m, 1h)"))?;
    if !(1..=api::MAX_ENROL_TTL_SECS).contains(&d.as_secs()) {
        return Err(format!("{s}: a code lives 1s to 7 days"));
    }
    Ok(d)
}

/// A drain deadline: a duration of at most the 7 days the API accepts.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 90s, 5m, 1h)"))?;
    crate::format::check_deadline(s, d.as_secs())?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_deadline_beyond_seven_days_is_refused_before_sending() {
        assert_eq!(super::parse_duration("7d"), Ok(std::time::Duration::from_secs(604_800)));
        let err = super::parse_duration("8d").expect_err("8d");
        assert!(err.contains("at most 7 days"), "{err}");
    }
}
