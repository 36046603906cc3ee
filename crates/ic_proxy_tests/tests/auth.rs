//! Optional peer authentication: proxies that share the secret link and
//! carry data; a proxy with another secret, or none, is refused with a
//! reason and a counter, and never links.

use std::sync::Arc;

use ic_proxy_core::PeerState;
use ic_proxy_tests::*;

fn secret(s: &str) -> Option<Arc<[u8]>> {
    Some(Arc::from(s.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_sharing_the_secret_link_and_carry_data() {
    let opts = MeshOptions {
        peer_secret: secret("the cluster's shared secret"),
        ..MeshOptions::default()
    };
    let mesh = Mesh::start_with(&[-1, 0, 1], opts);
    mesh.wait_connected().await;
    let (tx, rx) = open_pair(&mesh, 3, 1, 1).await;
    let (sent, got) = tokio::join!(send_stream(tx, 1, 300, 5000), recv_stream(rx));
    assert_eq!(sent.unwrap(), got.unwrap().0);
    for p in &mesh.proxies {
        assert_eq!(p.status.snapshot().auth_failures, 0);
    }
    mesh.shutdown().await;
}

/// Starts proxy 1 (content -1) with `acceptor` and proxy 2 (content 0, the
/// one that dials) with `connector`; returns the mesh once proxy 1 has
/// refused at least two attempts.
async fn refused(
    acceptor: Option<Arc<[u8]>>,
    connector: Option<Arc<[u8]>>,
    counted_on: u16,
) -> Mesh {
    let (l1, a1) = reserve(1, -1);
    let (l2, a2) = reserve(2, 0);
    let map =
        ic_proxy_core::config::AddressMap::from_entries(vec![a1.clone(), a2.clone()]).unwrap();
    let mut mesh = Mesh::start_with(
        &[],
        MeshOptions {
            peer_secret: acceptor,
            ..MeshOptions::default()
        },
    );
    mesh.spawn(a1, l1, map.clone());
    mesh.opts.peer_secret = connector;
    mesh.spawn(a2, l2, map);
    let p = mesh.proxy(counted_on);
    wait_until("refused attempts counted", || {
        p.status.snapshot().auth_failures >= 2
    })
    .await;
    for p in &mesh.proxies {
        let s = p.status.snapshot();
        let other = s
            .peers
            .iter()
            .find(|x| x.state != PeerState::SelfEntry)
            .unwrap();
        assert_ne!(
            other.state,
            PeerState::Connected,
            "dbid {} linked despite the refusal",
            p.addr.dbid
        );
    }
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_secret_is_refused() {
    let mesh = refused(
        secret("the cluster's shared secret"),
        secret("an intruder's guessed secret"),
        1,
    )
    .await;
    // The dialer learns why from the closed link; its last error says so.
    let p2 = mesh.proxy(2);
    wait_until("the dialer's error", || {
        p2.status
            .snapshot()
            .peers
            .iter()
            .any(|x| x.addr.dbid == 1 && !x.last_error.is_empty())
    })
    .await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_secret_is_refused() {
    let mesh = refused(secret("the cluster's shared secret"), None, 1).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_that_requires_the_secret_refuses_an_acceptor_without_it() {
    let mesh = refused(None, secret("the cluster's shared secret"), 2).await;
    let p2 = mesh.proxy(2);
    let err = p2
        .status
        .snapshot()
        .peers
        .iter()
        .find(|x| x.addr.dbid == 1)
        .unwrap()
        .last_error
        .clone();
    assert!(err.contains("authentication"), "{err}");
    mesh.shutdown().await;
}
