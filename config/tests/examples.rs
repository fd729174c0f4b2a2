//! The shipped `examples/cloud.toml` and `examples/edge.toml` load and
//! describe the loopback demo.

use std::path::{Path, PathBuf};

use config::{CloudConfig, EdgeConfig};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
}

#[test]
fn examples_load_and_agree() {
    let cloud = CloudConfig::load(&example("cloud.toml")).unwrap_or_else(|e| panic!("{e}"));
    let edge = EdgeConfig::load(&example("edge.toml")).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(cloud.tunnel.listen, "127.0.0.1:7000".parse().unwrap());
    assert!(cloud.tunnel.tls.is_none());
    assert_eq!(cloud.edges.len(), 1);
    assert_eq!(cloud.mappings.len(), 1);
    let mapping = &cloud.mappings[0];
    assert_eq!(mapping.name, "echo");
    assert_eq!(mapping.listen, "127.0.0.1:7001".parse().unwrap());
    assert_eq!(mapping.edge, "demo-edge");
    assert_eq!(mapping.target.to_string(), "127.0.0.1:7002");

    assert_eq!(edge.cloud_url.to_string(), "ws://127.0.0.1:7000/tunnel");
    assert_eq!(edge.edge_id, "demo-edge");
    assert_eq!(edge.allow, vec![mapping.target.clone()]);

    // Both sides read the same token file, trimmed of its newline.
    let entry = cloud.edge(&edge.edge_id).expect("the edge's id is configured in the cloud");
    assert_eq!(entry.token.expose(), edge.token.expose());
    assert_eq!(edge.token.expose().len(), 43);
}
