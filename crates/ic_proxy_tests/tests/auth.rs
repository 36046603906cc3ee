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
        assert_eq!(p.status.snapshot().totals.auth_failures, 0);
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
        ic_proxy_core::address_map::AddressMap::from_entries(vec![a1.clone(), a2.clone()]).unwrap();
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
        p.status.snapshot().totals.auth_failures >= 2
    })
    .await;
    let link_state = |p: &TestProxy| {
        p.status
            .snapshot()
            .peers
            .iter()
            .find(|x| x.state != PeerState::SelfEntry)
            .unwrap()
            .state
    };
    // The end that refused never links.
    assert_ne!(
        link_state(p),
        PeerState::Connected,
        "dbid {counted_on} linked despite its refusal"
    );
    // The other end cannot know before the refusing end closes (a link it
    // accepted, or one whose challenge it never answered): its link is
    // gone within a second of that.
    for other in mesh.proxies.iter().filter(|x| x.addr.dbid != counted_on) {
        let start = std::time::Instant::now();
        while link_state(other) == PeerState::Connected {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(1),
                "dbid {} stays linked after the refusal",
                other.addr.dbid
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    mesh
}

/// Waits until both proxies' rows for each other name authentication in
/// their last error.
async fn both_ends_name_authentication(mesh: &Mesh) {
    for (me, other) in [(1u16, 2u16), (2, 1)] {
        let p = mesh.proxy(me);
        let mut last = String::new();
        let start = std::time::Instant::now();
        loop {
            last = p
                .status
                .snapshot()
                .peers
                .iter()
                .find(|x| x.addr.dbid == other)
                .map(|x| x.last_error.clone())
                .unwrap_or(last);
            if last.contains("authentication") {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "dbid {me}'s last error for dbid {other} does not name authentication: {last:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_secret_is_refused() {
    let mesh = refused(
        secret("the cluster's shared secret"),
        secret("an intruder's guessed secret"),
        1,
    )
    .await;
    both_ends_name_authentication(&mesh).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_secret_is_refused() {
    let mesh = refused(secret("the cluster's shared secret"), None, 1).await;
    both_ends_name_authentication(&mesh).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_that_requires_the_secret_refuses_an_acceptor_without_it() {
    let mesh = refused(None, secret("the cluster's shared secret"), 2).await;
    both_ends_name_authentication(&mesh).await;
    mesh.shutdown().await;
}

/// Hands every proxy of `mesh` the same configuration with `peer_secret`.
fn reload_secret(mesh: &Mesh, peer_secret: Option<Arc<[u8]>>) {
    for p in &mesh.proxies {
        let mut c = (*p.config()).clone();
        c.peer_secret = peer_secret.clone();
        p.reload(c);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_authentication_on_by_reload_ends_every_unauthenticated_link() {
    use ic_proxy_client::{LogicalConn, RecvItem};
    use ic_proxy_core::protocol::PacketType;
    use ic_proxy_tests::hostile::{fake_spec, FakePeer, FAKE_DBID};

    let mesh = Mesh::start_with(&[-1, 0], ic_proxy_tests::hostile::case_options());
    mesh.wait_connected().await;
    let p1 = mesh.proxy(1);
    // An impostor linked before the reload, with a backend listening to it.
    let mut fake = FakePeer::link_as_fake(p1).await;
    let conn = fake_spec(p1, 1);
    let mut rx = LogicalConn::connect(&p1.socket, conn, &mesh.client_options())
        .await
        .unwrap();
    fake.send_packet(PacketType::Data, &conn.reversed(), &[4, 0, 0, 0])
        .await
        .unwrap();
    assert!(matches!(rx.recv().await.unwrap(), RecvItem::Packet(_)));

    reload_secret(&mesh, secret("the cluster's shared secret"));

    // The impostor's link is closed: what it injects now reaches nobody.
    let _ = fake
        .send_packet(PacketType::Data, &conn.reversed(), &[4, 0, 0, 0])
        .await;
    while let Ok(Some(_)) = fake.recv().await {}
    let end = rx.recv().await;
    assert!(
        matches!(end, Ok(RecvItem::Eof) | Err(_)),
        "the impostor's DATA after the reload was delivered: {end:?}"
    );
    wait_until("the impostor's link is down", || {
        hostile_state(p1, FAKE_DBID) != Some(PeerState::Connected)
    })
    .await;
    // The genuine link was made again, now authenticated, and carries data.
    wait_until("the real link made again", || {
        mesh.proxies.iter().all(|p| {
            p.status
                .snapshot()
                .peers
                .iter()
                .filter(|x| x.addr.dbid == 1 || x.addr.dbid == 2)
                .filter(|x| x.addr.dbid != p.addr.dbid)
                .all(|x| x.state == PeerState::Connected && x.traffic.reconnects >= 1)
        })
    })
    .await;
    let (tx, rx) = open_pair(&mesh, 2, 1, 7).await;
    let (sent, got) = tokio::join!(send_stream(tx, 3, 100, 2000), recv_stream(rx));
    assert_eq!(sent.unwrap(), got.unwrap().0);
    // The impostor cannot link again without the secret: its PEER HELLO is
    // answered with a challenge it cannot meet.
    let _again = FakePeer::link(p1, fake.me)
        .await
        .expect("its PEER HELLO is acknowledged");
    wait_until("the impostor refused", || {
        p1.status.snapshot().totals.auth_failures >= 1
    })
    .await;
    assert_ne!(hostile_state(p1, FAKE_DBID), Some(PeerState::Connected));
    mesh.shutdown().await;
}

fn hostile_state(p: &TestProxy, dbid: u16) -> Option<PeerState> {
    ic_proxy_tests::hostile::peer_state(p, dbid)
}
