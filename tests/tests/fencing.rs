//! Session fencing seen from the wire: hand-driven runs of edge `fake`
//! handshake one after another and at the same time, and the cloud keeps
//! one run, the newest, within `max_tunnels_per_edge`.

use std::net::SocketAddr;
use std::time::Duration;

use agent_cloud::Cloud;
use e2e_tests::fake_edge::{FAKE_TOKEN, Ws, challenge, finish_handshake, recv_frames};
use e2e_tests::{cloud_config, eventually};
use futures_util::future::join_all;
use proto::{Frame, GoAwayCode, RefuseCode};
use tokio::net::TcpStream;

/// A cloud with edge `fake` (mapping `fakemap`) and `extra` in `[tunnel]`.
async fn cloud(extra: &str) -> Cloud {
    let toml = format!(
        "[tunnel]\nlisten = \"127.0.0.1:0\"\nhandshake_timeout = \"5s\"\n{extra}\n\
         [[edges]]\nid = \"fake\"\ntoken = \"{FAKE_TOKEN}\"\n\
         [[mappings]]\nname = \"fakemap\"\nlisten = \"127.0.0.1:0\"\nedge = \"fake\"\ntarget = \"127.0.0.1:9\"\n"
    );
    Cloud::start(cloud_config(&toml)).await.expect("cloud")
}

/// Frames until one matches, for at most 5 s of silence.
async fn next_matching(ws: &mut Ws, want: impl Fn(&Frame) -> bool) -> Option<Frame> {
    while let Some(frames) = recv_frames(ws).await {
        if let Some(f) = frames.into_iter().find(&want) {
            return Some(f);
        }
    }
    None
}

/// Whether the cloud sends new streams on `ws`: a client of `fakemap`
/// makes it open one there.
async fn carries_streams(cloud: &Cloud, ws: &mut Ws) -> bool {
    let addr: SocketAddr = cloud.mapping_addr("fakemap").expect("fakemap");
    let _client = TcpStream::connect(addr).await.expect("client");
    next_matching(ws, |f| matches!(f, Frame::Open { .. })).await.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_run_supersedes_the_old_one_and_the_old_one_is_then_refused() {
    let cloud = cloud("").await;
    let (ws, nonce) = challenge(cloud.tunnel_addr()).await;
    let mut old = finish_handshake(ws, &nonce, 100).await.expect("run 100 welcomed");
    assert!(eventually(Duration::from_secs(5), || async { cloud.live_tunnels("fake") == 1 }).await);

    let (ws, nonce) = challenge(cloud.tunnel_addr()).await;
    let mut new = finish_handshake(ws, &nonce, 200).await.expect("run 200 welcomed");
    let go_away = next_matching(&mut old, |f| matches!(f, Frame::GoAway { .. })).await;
    let Some(Frame::GoAway { code, message }) = go_away else {
        panic!("the old run's tunnel was not closed: {go_away:?}")
    };
    assert_eq!(code, GoAwayCode::Superseded, "{message}");

    // The old run redials: refused while the new one is connected.
    let (ws, nonce) = challenge(cloud.tunnel_addr()).await;
    match finish_handshake(ws, &nonce, 100).await {
        Err(Some(Frame::Refuse { code, .. })) => assert_eq!(code, RefuseCode::Superseded),
        Ok(_) => panic!("an older run was welcomed while the newer one is connected"),
        Err(other) => panic!("expected a refusal, got {other:?}"),
    }
    assert!(eventually(Duration::from_secs(5), || async { cloud.live_tunnels("fake") == 1 }).await);
    assert!(carries_streams(&cloud, &mut new).await, "the new run does not carry streams");
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_run_cannot_win_a_concurrent_handshake() {
    let cloud = cloud("").await;
    for round in 0..10u64 {
        let (old_epoch, new_epoch) = (1000 + 2 * round, 1001 + 2 * round);
        let (ws_new, nonce_new) = challenge(cloud.tunnel_addr()).await;
        let (ws_old, nonce_old) = challenge(cloud.tunnel_addr()).await;
        // The newer run's proof goes out first, the older one's right after.
        let (new, old) = tokio::join!(finish_handshake(ws_new, &nonce_new, new_epoch), async {
            tokio::task::yield_now().await;
            finish_handshake(ws_old, &nonce_old, old_epoch).await
        });
        let mut new =
            new.unwrap_or_else(|f| panic!("round {round}: newer run not welcomed: {f:?}"));
        // The older run is refused, or welcomed and then superseded.
        match old {
            Err(Some(Frame::Refuse { code, .. })) => assert_eq!(code, RefuseCode::Superseded),
            Ok(mut old) => {
                let f = next_matching(&mut old, |f| matches!(f, Frame::GoAway { .. })).await;
                assert!(
                    matches!(f, Some(Frame::GoAway { code: GoAwayCode::Superseded, .. })),
                    "round {round}: the older run kept its tunnel: {f:?}"
                );
            }
            Err(other) => panic!("round {round}: older run: {other:?}"),
        }
        let closed = next_matching(&mut new, |f| matches!(f, Frame::GoAway { .. }));
        let closed = tokio::time::timeout(Duration::from_millis(300), closed).await;
        assert!(
            !matches!(closed, Ok(Some(_))),
            "round {round}: the newer run's tunnel was closed: {closed:?}"
        );
        assert!(
            eventually(Duration::from_secs(5), || async { cloud.live_tunnels("fake") == 1 }).await,
            "round {round}: {} live tunnels",
            cloud.live_tunnels("fake")
        );
        assert!(carries_streams(&cloud, &mut new).await, "round {round}: newer run idle");
        drop(new);
        assert!(
            eventually(Duration::from_secs(10), || async { cloud.live_tunnels("fake") == 0 }).await
        );
    }
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handshakes_cannot_exceed_max_tunnels_per_edge() {
    const MAX: usize = 2;
    const TRIES: usize = 12;
    let cloud = cloud(&format!("max_tunnels_per_edge = {MAX}")).await;
    for round in 0..5 {
        let mut challenged = Vec::new();
        for _ in 0..TRIES {
            challenged.push(challenge(cloud.tunnel_addr()).await);
        }
        // Every proof at once: the handshakes are in flight together.
        let results = join_all(
            challenged
                .into_iter()
                .map(|(ws, nonce)| async move { finish_handshake(ws, &nonce, 7).await }),
        )
        .await;
        let mut welcomed = Vec::new();
        for r in results {
            match r {
                Ok(ws) => welcomed.push(ws),
                Err(Some(Frame::Refuse { code, .. })) => {
                    assert_eq!(code, RefuseCode::TooManyTunnels, "round {round}")
                }
                Err(other) => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(
            welcomed.len(),
            MAX,
            "round {round}: {} of {TRIES} concurrent handshakes welcomed with \
             max_tunnels_per_edge = {MAX}",
            welcomed.len()
        );
        assert!(
            eventually(Duration::from_secs(5), || async { cloud.live_tunnels("fake") == MAX })
                .await,
            "round {round}: {} live tunnels",
            cloud.live_tunnels("fake")
        );
        drop(welcomed);
        assert!(
            eventually(Duration::from_secs(10), || async { cloud.live_tunnels("fake") == 0 }).await
        );
    }
    cloud.shutdown().await;
}
