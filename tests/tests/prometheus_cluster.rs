//! `/metrics` of two cloud agents add up: their latency histograms have the
//! same fixed buckets, so summing the nodes' buckets per `le` (what
//! `sum by (le)` does in PromQL) gives the histogram of all connections.
//! Each exposition is checked against the text format with a small parser.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_cloud::Cloud;
use agent_edge::Edge;
use e2e_tests::{
    ADMIN_TOKEN, Api, TOKEN, cloud_config, cloud_toml_with_control, echo_once, echo_server,
    edge_config, edge_toml, eventually, serves,
};

/// The buckets every node exposes, in seconds (then `+Inf`).
const BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// One sample line: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: each family's declared type, and the samples.
#[derive(Debug)]
struct Exposition {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `{a="x",b="y"}` (the braces already removed) into pairs.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").ok_or(format!("no =\" in {text:?}"))?;
        if !valid_name(name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?} in {text:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {text:?}")),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice in {text:?}"));
        }
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(labels)
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse().map_err(|e| format!("bad value {text:?}: {e}")),
    }
}

/// The family a sample belongs to: histogram samples carry a suffix.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram" || t == "summary") {
                return base;
            }
        }
    }
    name
}

/// Parses the text format (version 0.0.4) strictly: every sample's family
/// declared by `# TYPE` before it, one TYPE per family, no series twice,
/// and every histogram well formed (buckets ascending in `le` with counts
/// that never fall, a `+Inf` bucket equal to `_count`, a `_sum`).
fn parse(text: &str) -> Result<Exposition, String> {
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    let mut seen = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            match words[..] {
                ["TYPE", name, kind] => {
                    let known = ["counter", "gauge", "histogram", "summary", "untyped"];
                    if !valid_name(name) || !known.contains(&kind) {
                        return Err(at("bad TYPE".into()));
                    }
                    if types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(at("second TYPE".into()));
                    }
                }
                ["HELP", name, ..] if !valid_name(name) => return Err(at("bad HELP".into())),
                _ => {}
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').ok_or_else(|| at("no }".into()))?;
                (name, parse_labels(labels).map_err(at)?)
            }
            None => (series, BTreeMap::new()),
        };
        if !valid_name(name) {
            return Err(at("bad metric name".into()));
        }
        if !types.contains_key(family_of(name, &types)) {
            return Err(at("sample before its TYPE".into()));
        }
        if !seen.insert((name.to_owned(), format!("{labels:?}"))) {
            return Err(at("series twice".into()));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: parse_value(value).map_err(at)?,
        });
    }
    let exposition = Exposition { types, samples };
    for (family, kind) in &exposition.types {
        if kind == "histogram" {
            for labels in exposition.series_of(family) {
                exposition.histogram(family, &labels)?;
            }
        }
    }
    Ok(exposition)
}

/// A histogram series read back: `(le, cumulative count)` ending at
/// `+Inf`, the sum and the count.
#[derive(Debug, Clone, PartialEq)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Exposition {
    /// The label sets (without `le`) of histogram `family`'s series.
    fn series_of(&self, family: &str) -> Vec<BTreeMap<String, String>> {
        let count = format!("{family}_count");
        self.samples.iter().filter(|s| s.name == count).map(|s| s.labels.clone()).collect()
    }

    fn value(&self, name: &str, labels: &BTreeMap<String, String>) -> Option<f64> {
        self.samples.iter().find(|s| s.name == name && &s.labels == labels).map(|s| s.value)
    }

    /// Histogram `family` for `labels`, checked for shape.
    fn histogram(
        &self,
        family: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Histogram, String> {
        let bucket = format!("{family}_bucket");
        let mut buckets = Vec::new();
        for s in self.samples.iter().filter(|s| s.name == bucket) {
            let mut rest = s.labels.clone();
            let le = rest.remove("le").ok_or(format!("{bucket} without le"))?;
            if &rest == labels {
                buckets.push((parse_value(&le)?, s.value));
            }
        }
        let name = format!("{family}{labels:?}");
        let sum = self.value(&format!("{family}_sum"), labels).ok_or(format!("{name}: no _sum"))?;
        let count =
            self.value(&format!("{family}_count"), labels).ok_or(format!("{name}: no _count"))?;
        if !buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
            return Err(format!("{name}: buckets out of order or falling: {buckets:?}"));
        }
        match buckets.last() {
            Some(&(le, c)) if le == f64::INFINITY && c == count => {}
            _ => {
                return Err(format!(
                    "{name}: last bucket is not +Inf = count {count}: {buckets:?}"
                ));
            }
        }
        Ok(Histogram { buckets, sum, count })
    }
}

impl Histogram {
    /// The bucket holding quantile `q` and PromQL's `histogram_quantile`
    /// estimate in it: `(lower le, upper le, estimate)`, interpolated
    /// linearly as Prometheus does (the first bucket starts at 0).
    fn quantile(&self, q: f64) -> (f64, f64, f64) {
        let rank = q * self.count;
        let i = self.buckets.iter().position(|&(_, c)| c >= rank).expect("rank within count");
        let (lower, below) = if i == 0 { (0.0, 0.0) } else { self.buckets[i - 1] };
        let (upper, at) = self.buckets[i];
        if upper == f64::INFINITY {
            return (lower, upper, lower);
        }
        (lower, upper, lower + (upper - lower) * (rank - below) / (at - below))
    }

    /// Adds `other`'s counts bucket by bucket (`sum by (le)`).
    fn add(&self, other: &Histogram) -> Histogram {
        let les: Vec<f64> = self.buckets.iter().map(|b| b.0).collect();
        assert_eq!(
            les,
            other.buckets.iter().map(|b| b.0).collect::<Vec<_>>(),
            "bucket bounds differ"
        );
        Histogram {
            buckets: self
                .buckets
                .iter()
                .zip(&other.buckets)
                .map(|(a, b)| (a.0, a.1 + b.1))
                .collect(),
            sum: self.sum + other.sum,
            count: self.count + other.count,
        }
    }
}

struct Node {
    cloud: Cloud,
    edge: Edge,
    api: Api,
    web: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A cloud agent with mappings `probe` (to see it serve) and `web` (the
/// one measured) to `echo`, and its edge.
async fn node(echo: SocketAddr) -> Node {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = echo.to_string();
    let toml = cloud_toml_with_control(
        "127.0.0.1:0",
        &[("probe", &target), ("web", &target)],
        &dir.path().join("state.json"),
    );
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud starts");
    let edge = Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[target], TOKEN)))
        .expect("edge starts");
    let api = Api::new(cloud.control_addr().expect("control API"), Some(ADMIN_TOKEN));
    let probe = cloud.mapping_addr("probe").expect("probe mapping");
    assert!(eventually(Duration::from_secs(10), || serves(probe)).await, "never served");
    let web = cloud.mapping_addr("web").expect("web mapping");
    Node { cloud, edge, api, web, _dir: dir }
}

async fn scrape(api: &Api) -> (String, Exposition) {
    let (status, body) = api.call("GET", "/metrics", None).await;
    assert_eq!(status, 200, "{body}");
    let text = body.as_str().expect("text body").to_owned();
    let parsed = parse(&text).unwrap_or_else(|e| panic!("invalid exposition: {e}\n{text}"));
    (text, parsed)
}

fn labels(key: &str, value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(key.to_owned(), value.to_owned())])
}

/// Echoes `n` times through `addr`; the time each took as the client saw it
/// (from before connecting until the echo ended), which is at least the
/// agent's connect latency for that connection.
async fn connections(addr: SocketAddr, n: usize) -> Vec<f64> {
    let mut took = Vec::new();
    for i in 0..n {
        let payload = format!("connection {i}");
        let started = Instant::now();
        let back = echo_once(addr, payload.as_bytes()).await.expect("echo");
        took.push(started.elapsed().as_secs_f64());
        assert_eq!(back, payload.as_bytes());
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_latency_histograms_sum_to_the_histogram_of_all_connections() {
    let echo = echo_server().await;
    let (a, b) = (node(echo).await, node(echo).await);
    let mut observed = connections(a.web, 5).await;
    observed.extend(connections(b.web, 7).await);
    observed.sort_by(f64::total_cmp);

    let family = "relay_mapping_connect_latency_seconds";
    let web = labels("mapping", "web");
    let mut per_node = Vec::new();
    for (node, expected) in [(&a, 5.0), (&b, 7.0)] {
        let (text, metrics) = scrape(&node.api).await;
        assert_eq!(metrics.types[family], "histogram");
        let h = metrics.histogram(family, &web).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let les: Vec<f64> = h.buckets.iter().map(|b| b.0).collect();
        assert_eq!(les[..BOUNDS.len()], BOUNDS, "fixed bounds on every node");
        assert_eq!(les.len(), BOUNDS.len() + 1);
        assert_eq!(h.count, expected, "{text}");
        // The console's windowed figures count the same connections.
        let (_, snap) = node.api.call("GET", "/v1/snapshot", None).await;
        let series = snap["series"].as_array().expect("series");
        let windowed = series.iter().find(|s| s["name"] == "web").expect("web series");
        assert_eq!(windowed["connect_latency_us"]["count"].as_f64(), Some(expected));
        // ... and the slowest of them is in the histogram's last non-empty
        // bucket (the window keeps two significant digits: within 1%).
        let max = windowed["connect_latency_us"]["max"].as_f64().expect("max") / 1e6;
        let full = h.buckets.iter().position(|b| b.1 == h.count).expect("a full bucket");
        let lower = if full == 0 { 0.0 } else { h.buckets[full - 1].0 };
        let upper = h.buckets[full].0;
        assert!(lower < max * 1.01 && max * 0.99 <= upper, "max {max} not in ({lower}, {upper}]");
        per_node.push(h);
    }
    let all = per_node[0].add(&per_node[1]);
    eprintln!("summed connect latency buckets: {:?}, sum {:.6} s", all.buckets, all.sum);
    assert_eq!(all.count, 12.0);
    assert_eq!(all.buckets.last(), Some(&(f64::INFINITY, 12.0)));
    assert!(all.buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{:?}", all.buckets);
    let client_total: f64 = observed.iter().sum();
    assert!(
        all.sum > 0.0 && all.sum <= client_total,
        "agent sum {} client {client_total}",
        all.sum
    );
    for q in [0.5, 0.9, 0.99, 1.0] {
        let (lower, upper, estimate) = all.quantile(q);
        // The agent's q-quantile connection lies in (lower, upper]; it took
        // the agent no longer than the client saw that connection take.
        let kth = observed[((q * 12.0).ceil() as usize).max(1) - 1];
        eprintln!(
            "q{q}: bucket ({lower}, {upper}], estimate {estimate:.6} s, client saw {kth:.6} s"
        );
        assert!(lower <= kth, "q{q}: bucket ({lower}, {upper}] above the client's {kth}");
        assert!(lower <= estimate && estimate <= upper, "q{q}: {estimate} not in its bucket");
    }

    // Edge round trips: histograms too, one value per tunnel per second.
    let rtt = "relay_edge_rtt_seconds";
    let e1 = labels("edge", "e1");
    for node in [&a, &b] {
        let api = node.api.clone();
        let sampled = eventually(Duration::from_secs(10), || {
            let api = api.clone();
            async move {
                let (_, m) = scrape(&api).await;
                m.histogram(rtt, &labels("edge", "e1")).is_ok_and(|h| h.count > 0.0)
            }
        })
        .await;
        assert!(sampled, "no round trip recorded:\n{}", scrape(&node.api).await.0);
    }
    let (_, at_a) = scrape(&a.api).await;
    let (_, at_b) = scrape(&b.api).await;
    let (rtt_a, rtt_b) = (at_a.histogram(rtt, &e1), at_b.histogram(rtt, &e1));
    let rtt_all = rtt_a.expect("rtt at a").add(&rtt_b.expect("rtt at b"));
    assert!(rtt_all.buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{:?}", rtt_all.buckets);
    assert_eq!(rtt_all.buckets.last().map(|b| b.1), Some(rtt_all.count));

    for node in [a, b] {
        node.edge.shutdown().await;
        node.cloud.shutdown().await;
    }
}

/// The checker catches what it is there to catch.
#[test]
fn the_exposition_checker_refuses_malformed_text() {
    let good = "# TYPE h histogram\nh_bucket{m=\"a\",le=\"0.1\"} 1\nh_bucket{m=\"a\",le=\"+Inf\"} 2\n\
                h_sum{m=\"a\"} 0.3\nh_count{m=\"a\"} 2\n";
    assert!(parse(good).is_ok(), "{:?}", parse(good));
    let bad = [
        ("no TYPE", "x 1\n"),
        ("two TYPEs", "# TYPE x gauge\n# TYPE x gauge\nx 1\n"),
        ("bad value", "# TYPE x gauge\nx one\n"),
        ("unterminated label", "# TYPE x gauge\nx{a=\"b} 1\n"),
        ("series twice", "# TYPE x gauge\nx{a=\"b\"} 1\nx{a=\"b\"} 2\n"),
        ("falling buckets", &good.replace("le=\"0.1\"} 1", "le=\"0.1\"} 3")),
        ("+Inf is not the count", &good.replace("h_count{m=\"a\"} 2", "h_count{m=\"a\"} 5")),
        ("no +Inf", &good.replace("le=\"+Inf\"", "le=\"0.2\"")),
        ("no sum", &good.replace("h_sum{m=\"a\"} 0.3\n", "")),
    ];
    for (why, text) in bad {
        assert!(parse(text).is_err(), "{why} accepted:\n{text}");
    }
}
