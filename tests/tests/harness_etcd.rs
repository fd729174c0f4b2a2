//! The etcd harness (`e2e_tests::etcd`) against real etcd: one member, a
//! three-member cluster losing and regaining quorum, and compaction.
//!
//! Needs etcd and etcdctl: under `CI=true` their absence fails these tests,
//! elsewhere they print "SKIPPED" and return.

use std::time::Duration;

use e2e_tests::etcd::{Etcd, EtcdCluster};

#[tokio::test]
async fn single_member_puts_gets_lists_and_deletes() {
    let Some(etcd) = Etcd::single("single_member").await else { return };
    assert_eq!(etcd.endpoints().len(), 1);
    assert!(etcd.endpoints()[0].starts_with("http://127.0.0.1:"), "{:?}", etcd.endpoints());
    etcd.put("/t/a", "1").await;
    etcd.put("/t/b", "two words\nand a line").await;
    etcd.put("/u/c", "-starts-with-dash").await;
    assert_eq!(etcd.get("/t/a").await.as_deref(), Some("1"));
    assert_eq!(etcd.get("/nothing").await, None);
    assert_eq!(etcd.get("/u/c").await.as_deref(), Some("-starts-with-dash"));
    assert_eq!(
        etcd.get_prefix("/t/").await,
        [("/t/a".to_owned(), "1".to_owned()), ("/t/b".to_owned(), "two words\nand a line".into())]
    );
    assert_eq!(etcd.del("/t/a").await, 1);
    assert_eq!(etcd.del("/t/a").await, 0);
    assert_eq!(etcd.get_prefix("/t/").await.len(), 1);
}

#[tokio::test]
async fn three_members_survive_one_loss_refuse_writes_without_quorum_and_recover() {
    let Some(mut etcd) = EtcdCluster::start("three_members", 3).await else { return };
    assert_eq!(etcd.endpoints().len(), 3);
    etcd.put("/q/k", "0").await;

    etcd.kill(0).await;
    assert!(!etcd.is_running(0));
    etcd.put("/q/k", "1").await;
    assert_eq!(etcd.get("/q/k").await.as_deref(), Some("1"), "one member lost");

    etcd.kill(1).await;
    let refused = etcd.try_put("/q/k", "2").await;
    assert!(refused.is_err(), "a write without quorum succeeded\n{}", etcd.logs());

    etcd.restart(0).await;
    etcd.restart(1).await;
    etcd.put("/q/k", "3").await;
    assert_eq!(etcd.get("/q/k").await.as_deref(), Some("3"), "quorum back\n{}", etcd.logs());

    etcd.kill_all();
    etcd.restart_all().await;
    assert_eq!(etcd.get("/q/k").await.as_deref(), Some("3"), "data kept over a full restart");
}

#[tokio::test]
async fn watching_from_before_a_compaction_reports_compacted() {
    let Some(etcd) = Etcd::single("compaction").await else { return };
    etcd.put("/c/k", "1").await;
    let old = etcd.revision().await;
    etcd.put("/c/k", "2").await;
    etcd.put("/c/k", "3").await;
    let compacted = etcd.compact_to_latest().await;
    assert_eq!(compacted, old + 2);

    let watch = etcd
        .try_etcdctl_within(&["watch", "--rev", &old.to_string(), "/c/k"], Duration::from_secs(5))
        .await;
    let err = watch.expect_err("a watch from a compacted revision kept running");
    assert!(err.output.contains("required revision has been compacted"), "{err}");

    // From the compacted revision itself the watch is fine: it sees the latest put.
    let watch = etcd
        .try_etcdctl_within(
            &["watch", "--rev", &compacted.to_string(), "/c/k"],
            Duration::from_millis(1500),
        )
        .await;
    let err = watch.expect_err("watch ends only by the time limit");
    assert!(err.output.contains("did not finish"), "{err}");
}
