//! A real network topology in Linux network namespaces, for tests that run
//! the agents the way they are deployed: behind a NAT, dialling out.
//!
//! ```text
//!  client 198.18.1.10 ─┐
//!  cloud  198.18.1.20 ─┼─ br0 (ns wan) ─ 198.18.1.1 wan0 [nat] lan0 198.19.2.1
//!                      │                                    │
//!                      │                       198.19.2.10 up0 [edge] op0 198.19.3.1
//!                      │                                                │
//!                      │                                 198.19.3.10 eth0 [onprem]
//! ```
//!
//! The nat masquerades LAN → wan and drops every new connection arriving
//! on its wan side; onprem has no route out. Only 198.18.0.0/15 is used, all
//! inside namespaces this module creates (nothing touches the host's own
//! namespace), and dropping the [`Topology`] deletes them.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

mod rig;

pub use rig::{CLOUD_DOWN, EDGE_DOWN, Rig, cloud_toml, count, report, time_of_day};

pub const CLIENT_IP: &str = "198.18.1.10";
pub const CLOUD_IP: &str = "198.18.1.20";
pub const NAT_WAN_IP: &str = "198.18.1.1";
pub const NAT_LAN_IP: &str = "198.19.2.1";
pub const EDGE_LAN_IP: &str = "198.19.2.10";
pub const ONPREM_IP: &str = "198.19.3.10";
/// Where the on-prem echo service listens.
pub const SERVICE: &str = "198.19.3.10:7002";

/// The namespaces of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    Wan,
    Client,
    Cloud,
    Nat,
    Edge,
    Onprem,
}

const ALL: [Ns; 6] = [Ns::Wan, Ns::Client, Ns::Cloud, Ns::Nat, Ns::Edge, Ns::Onprem];

/// The nat's firewall: masquerade out, nothing new (or invalid) in.
const NAT_RULES: &str = r#"table inet relaynat {
  chain inbound {
    type filter hook prerouting priority mangle; policy accept;
    iifname "wan0" ct state { new, invalid } drop
  }
  chain forwarding {
    type filter hook forward priority filter; policy accept;
    ct state invalid drop
  }
  chain outbound_nat {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan0" masquerade
  }
}"#;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The namespaces, veths, addresses and rules; removed on drop.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    created: Vec<Ns>,
    /// The `e2e-probe` binary.
    probe: String,
}

/// Why these tests cannot run here, if they cannot: not root, or a tool
/// missing from `tools`.
pub fn unsupported(tools: &[&str]) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
    if uid.split_whitespace().nth(1) != Some("0") {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    for tool in tools {
        let mut probe = Command::new(tool);
        probe.arg("--version").stdout(Stdio::null()).stderr(Stdio::null());
        if probe.status().is_err() {
            let package = match *tool {
                "ip" | "tc" | "ss" => "iproute2",
                "nft" => "nftables",
                "sysctl" => "procps",
                other => other,
            };
            return Some(format!("`{tool}` is not installed (apt-get install -y {package})"));
        }
    }
    None
}

impl Topology {
    /// Builds the topology; `probe` is the path of the `e2e-probe` binary.
    /// `Err` says why it cannot be built here (the caller skips).
    pub fn build(probe: &str) -> Result<Topology, String> {
        if let Some(why) = unsupported(&["ip", "nft", "tc", "ss", "sysctl"]) {
            return Err(why);
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut topo = Topology {
            prefix: format!("e2e{}x{n}", std::process::id()),
            created: Vec::new(),
            probe: probe.into(),
        };
        for ns in ALL {
            let name = topo.ns(ns);
            try_cmd(&["ip", "netns", "add", &name])
                .map_err(|e| format!("`ip netns add` failed: {e}"))?;
            topo.created.push(ns);
            topo.ip(ns, "link set lo up");
        }
        topo.ip(Ns::Wan, "link add br0 type bridge");
        topo.ip(Ns::Wan, "link set br0 up");
        for (ns, addr) in [(Ns::Client, CLIENT_IP), (Ns::Cloud, CLOUD_IP), (Ns::Nat, NAT_WAN_IP)] {
            let port = format!("p{}", ns.short());
            topo.veth(ns, "wan0", Ns::Wan, &port);
            topo.ip(Ns::Wan, &format!("link set {port} master br0"));
            topo.ip(ns, &format!("addr add {addr}/24 dev wan0"));
        }
        topo.veth(Ns::Nat, "lan0", Ns::Edge, "up0");
        topo.ip(Ns::Nat, &format!("addr add {NAT_LAN_IP}/24 dev lan0"));
        topo.ip(Ns::Edge, &format!("addr add {EDGE_LAN_IP}/24 dev up0"));
        topo.ip(Ns::Edge, &format!("route add default via {NAT_LAN_IP}"));
        topo.veth(Ns::Edge, "op0", Ns::Onprem, "eth0");
        topo.ip(Ns::Edge, "addr add 198.19.3.1/24 dev op0");
        topo.ip(Ns::Onprem, &format!("addr add {ONPREM_IP}/24 dev eth0"));
        // The outside knows the way to the nat's LAN (as an attacker on the
        // wan would): only the firewall keeps it out.
        for ns in [Ns::Client, Ns::Cloud] {
            topo.ip(ns, &format!("route add 198.19.0.0/16 via {NAT_WAN_IP}"));
        }
        topo.sysctl(Ns::Nat, "net.ipv4.ip_forward", "1").unwrap_or_else(|e| panic!("{e}"));
        topo.nft(Ns::Nat, NAT_RULES);
        Ok(topo)
    }

    /// The name of namespace `ns`.
    pub fn ns(&self, ns: Ns) -> String {
        format!("{}-{}", self.prefix, ns.short())
    }

    fn veth(&self, a: Ns, a_name: &str, b: Ns, b_name: &str) {
        let (na, nb) = (self.ns(a), self.ns(b));
        let args = [
            "ip", "-n", &na, "link", "add", a_name, "type", "veth", "peer", "name", b_name,
            "netns", &nb,
        ];
        try_cmd(&args).unwrap_or_else(|e| panic!("{e}"));
        self.ip(a, &format!("link set {a_name} up"));
        self.ip(b, &format!("link set {b_name} up"));
    }

    /// `ip -n NS <args>`; panics if it fails.
    pub fn ip(&self, ns: Ns, args: &str) {
        let name = self.ns(ns);
        let mut all = vec!["ip", "-n", &name];
        all.extend(args.split_whitespace());
        try_cmd(&all).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs `args` inside `ns` and returns its stdout.
    ///
    /// # Errors
    /// The command's failure, with its output.
    pub fn exec(&self, ns: Ns, args: &[&str]) -> Result<String, String> {
        let name = self.ns(ns);
        let mut all = vec!["ip", "netns", "exec", &name];
        all.extend(args);
        try_cmd(&all)
    }

    /// Sets a sysctl inside `ns` (network sysctls are per namespace).
    ///
    /// # Errors
    /// When the key does not exist or cannot be set in a namespace.
    pub fn sysctl(&self, ns: Ns, key: &str, value: &str) -> Result<(), String> {
        self.exec(ns, &["sysctl", "-qw", &format!("{key}={value}")])?;
        let now = self.exec(ns, &["sysctl", "-n", key])?;
        match now.trim() == value {
            true => Ok(()),
            false => Err(format!("{key} reads {now:?} after setting it to {value}")),
        }
    }

    /// Loads an nft script in `ns`; panics if nft rejects it.
    pub fn nft(&self, ns: Ns, script: &str) {
        let name = self.ns(ns);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft");
        child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("nft stdin");
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft in {name}: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Cuts the nat silently in both directions: every packet arriving on
    /// either side is dropped before conntrack sees it (no RST, no ICMP).
    pub fn partition(&self) {
        self.nft(
            Ns::Nat,
            "table inet partition {\n chain cut {\n  type filter hook prerouting priority raw - 100;\n  \
             iifname { \"wan0\", \"lan0\" } drop\n }\n}\n",
        );
    }

    /// Undoes [`partition`](Self::partition).
    pub fn heal(&self) {
        self.nft(Ns::Nat, "delete table inet partition");
    }

    /// Drops `percent` % of forwarded packets at random.
    pub fn add_loss(&self, percent: u32) {
        self.nft(
            Ns::Nat,
            &format!(
                "table inet loss {{\n chain lossy {{\n  type filter hook forward priority filter - 5;\n  \
                 numgen random mod 100 < {percent} counter drop\n }}\n}}\n"
            ),
        );
    }

    /// Rate-limits both directions through the nat (tbf on each side), and
    /// makes the senders emit single segments so the loss is per packet.
    pub fn shape(&self, rate: &str) {
        for dev in ["lan0", "wan0"] {
            let name = self.ns(Ns::Nat);
            let args = [
                "tc", "-n", &name, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                "burst", "64kb", "latency", "50ms",
            ];
            try_cmd(&args).unwrap_or_else(|e| panic!("{e}"));
        }
        self.ip(Ns::Edge, "link set dev up0 gso_max_segs 1");
        self.ip(Ns::Cloud, "link set dev wan0 gso_max_segs 1");
    }

    /// Flushes the nat's connection tracking table.
    pub fn flush_conntrack(&self) {
        self.exec(Ns::Nat, &["conntrack", "-F"]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Established TCP connections in `ns` as `(local, peer)`.
    pub fn tcp_established(&self, ns: Ns) -> Vec<(SocketAddr, SocketAddr)> {
        let out = self
            .exec(ns, &["ss", "-Htn", "state", "established"])
            .unwrap_or_else(|e| panic!("{e}"));
        let parse =
            |s: &str| s.parse::<SocketAddr>().unwrap_or_else(|e| panic!("ss field {s:?}: {e}"));
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 4).then(|| (parse(f[f.len() - 2]), parse(f[f.len() - 1])))
            })
            .collect()
    }
}

impl Ns {
    fn short(self) -> &'static str {
        match self {
            Ns::Wan => "wan",
            Ns::Client => "client",
            Ns::Cloud => "cloud",
            Ns::Nat => "nat",
            Ns::Edge => "edge",
            Ns::Onprem => "onprem",
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            let name = format!("{}-{}", self.prefix, ns.short());
            if let Err(e) = try_cmd(&["ip", "netns", "del", &name]) {
                let _ = writeln!(std::io::stderr(), "cleanup: {e}");
            }
        }
    }
}

fn try_cmd(args: &[&str]) -> Result<String, String> {
    let out =
        Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{args:?}: {e}"))?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(format!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
    }
}
