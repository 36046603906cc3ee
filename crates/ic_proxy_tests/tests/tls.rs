//! TLS on peer links, with real proxies over loopback and certificates made
//! here: meshes with TLS everywhere (both dialects), every pair of
//! `ic_proxy.tls` modes, certificates refused for each reason on both ends,
//! rotation by reload under a running stream. Hostile TLS openings are in
//! the hostile catalogue (`hostile.rs`).

use ic_proxy_core::protocol::Dialect;
use ic_proxy_core::tls::{TlsMode, TlsPolicy, TlsVerify};
use ic_proxy_core::PeerState;
use ic_proxy_tests::certs::{policy, Flaw, TestCa};
use ic_proxy_tests::*;

/// Every proxy on 127.0.0.1 with a certificate of `ca` in `mode`.
fn tls_options(ca: &TestCa, mode: TlsMode) -> MeshOptions {
    let files = ca.issue("proxy", "127.0.0.1", Flaw::None);
    MeshOptions {
        tls: policy(mode, TlsVerify::Full, &files),
        ..MeshOptions::default()
    }
}

/// Proxy `p`'s row of peer `dbid`; an empty one until the proxy has
/// listed its peers.
fn row(p: &TestProxy, dbid: u16) -> ic_proxy_core::PeerSnapshot {
    let peers = p.status.snapshot().peers;
    match peers.into_iter().find(|x| x.addr.dbid == dbid) {
        Some(r) => r,
        None => ic_proxy_core::PeerSnapshot {
            addr: p.addr.clone(),
            state: PeerState::Down,
            traffic: Default::default(),
            last_error: String::new(),
            protection: String::new(),
        },
    }
}

/// Hands every proxy of `mesh` its configuration with `tls`.
fn reload_tls(mesh: &Mesh, tls: TlsPolicy) {
    for p in &mesh.proxies {
        let mut c = (*p.config()).clone();
        c.tls = tls.clone();
        p.reload(c);
    }
}

/// Streams 200 checked packets from `a` to `b` (connection `n`).
async fn stream(mesh: &Mesh, a: u16, b: u16, n: u32) {
    let (tx, rx) = open_pair(mesh, a, b, n).await;
    let (sent, got) = tokio::join!(send_stream(tx, u64::from(n), 200, 8188), recv_stream(rx));
    let (got, count) = got.expect("receiver");
    assert_eq!(sent.expect("sender"), got, "{a} -> {b} corrupted");
    assert_eq!(count, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_with_tls_everywhere_carries_checked_streams_in_both_dialects() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "mesh");
    for dialect in [Dialect::B, Dialect::C] {
        let opts = MeshOptions {
            dialect,
            ..tls_options(&ca, TlsMode::Require)
        };
        let mesh = Mesh::start_with(&[-1, 0, 1], opts);
        mesh.wait_connected().await;
        let mut n = 0;
        for a in 1..=3u16 {
            for b in 1..=3u16 {
                if a != b {
                    n += 1;
                    stream(&mesh, a, b, n).await;
                }
            }
        }
        for p in &mesh.proxies {
            for other in (1..=3u16).filter(|d| *d != p.addr.dbid) {
                let r = row(p, other);
                assert!(
                    r.protection.starts_with("TLS1.3 TLS13_"),
                    "dialect {dialect}: dbid {} sees dbid {other} as {r:?}",
                    p.addr.dbid
                );
            }
        }
        mesh.shutdown().await;
    }
}

/// What a link between dbid 2 (content 0, the dialer) in `dialer` mode and
/// dbid 1 (content -1, the acceptor) in `acceptor` mode becomes.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Tls,
    Plain,
    /// Refused, with the reason each end shows.
    Refused,
}

async fn pair(ca: &TestCa, dialer: TlsMode, acceptor: TlsMode) -> (Outcome, String, String) {
    let files = ca.issue("pair", "127.0.0.1", Flaw::None);
    let load = |mode| TlsPolicy::load(mode, TlsVerify::Full, Some(&files)).unwrap();
    let opts = MeshOptions {
        tls_of: vec![(1, load(acceptor)), (2, load(dialer))],
        ..MeshOptions::default()
    };
    let mesh = Mesh::start_with(&[-1, 0], opts);
    let (p1, p2) = (mesh.proxy(1), mesh.proxy(2));
    let settled = || {
        let (a, b) = (row(p1, 2), row(p2, 1));
        let up = a.state == PeerState::Connected && b.state == PeerState::Connected;
        up || (a.last_error.contains("TLS") && b.last_error.contains("TLS"))
    };
    wait_until("the pair linked or refused on both ends", settled).await;
    let (a, b) = (row(p1, 2), row(p2, 1));
    let outcome = if a.state == PeerState::Connected {
        assert_eq!(a.protection, b.protection, "both ends see the same link");
        if a.protection.starts_with("TLS1.3") {
            Outcome::Tls
        } else {
            assert_eq!(a.protection, "plaintext");
            Outcome::Plain
        }
    } else {
        Outcome::Refused
    };
    mesh.shutdown().await;
    (outcome, a.last_error, b.last_error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pair_of_modes_links_refuses_or_falls_back_as_documented() {
    use Outcome::*;
    use TlsMode::*;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "pairs");
    let table = [
        (Off, Off, Plain),
        (Off, On, Plain),
        (Off, Require, Refused),
        (On, Off, Plain),
        (On, On, Tls),
        (On, Require, Tls),
        (Require, Off, Refused),
        (Require, On, Tls),
        (Require, Require, Tls),
    ];
    for (dialer, acceptor, want) in table {
        let (got, acceptor_error, dialer_error) = pair(&ca, dialer, acceptor).await;
        assert_eq!(
            got, want,
            "dialer {dialer}, acceptor {acceptor}: acceptor says {acceptor_error:?}, dialer says {dialer_error:?}"
        );
        if want == Refused {
            // Both ends say why, naming the setting.
            for (end, error) in [("acceptor", &acceptor_error), ("dialer", &dialer_error)] {
                assert!(
                    error.contains("ic_proxy.tls"),
                    "dialer {dialer}, acceptor {acceptor}: the {end} says {error:?}"
                );
            }
        }
    }
}

/// A pair where dbid 2 (the dialer) has `dialer_files` and dbid 1 `files`;
/// returns what each end's row says once both show an error.
async fn refused_pair(
    files: &ic_proxy_core::tls::TlsFiles,
    dialer_files: &ic_proxy_core::tls::TlsFiles,
) -> (String, String) {
    let opts = MeshOptions {
        tls_of: vec![
            (1, policy(TlsMode::Require, TlsVerify::Full, files)),
            (2, policy(TlsMode::Require, TlsVerify::Full, dialer_files)),
        ],
        ..MeshOptions::default()
    };
    let mesh = Mesh::start_with(&[-1, 0], opts);
    let (p1, p2) = (mesh.proxy(1), mesh.proxy(2));
    wait_until("both ends show the refusal", || {
        !row(p1, 2).last_error.is_empty() && !row(p2, 1).last_error.is_empty()
    })
    .await;
    let (a, b) = (row(p1, 2), row(p2, 1));
    assert_ne!(a.state, PeerState::Connected);
    assert!(mesh.proxy(1).status.snapshot().totals.auth_failures >= 1);
    mesh.shutdown().await;
    (a.last_error, b.last_error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_a_name_mismatch_and_an_expired_certificate_are_refused_on_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "good");
    let other = TestCa::new(dir.path(), "other");
    let good = ca.issue("good", "127.0.0.1", Flaw::None);

    // The dialer's certificate comes from another CA (and it trusts that
    // CA only): each end refuses the other's.
    let stranger = other.issue("stranger", "127.0.0.1", Flaw::None);
    let (acceptor, dialer) = refused_pair(&good, &stranger).await;
    for (end, e) in [("acceptor", &acceptor), ("dialer", &dialer)] {
        assert!(e.contains("unknown CA"), "the {end} says {e:?}");
    }

    // The dialer's certificate names another host than its map entry's.
    let misnamed = ca.issue("misnamed", "sdw9.example", Flaw::None);
    let (acceptor, dialer) = refused_pair(&good, &misnamed).await;
    assert!(
        acceptor.contains("name mismatch"),
        "the acceptor says {acceptor:?}"
    );
    assert!(
        dialer.contains("name mismatch") || dialer.contains("refused our certificate"),
        "the dialer says {dialer:?}"
    );

    // The acceptor's certificate has expired.
    let expired = ca.issue("expired", "127.0.0.1", Flaw::Expired);
    let err = ic_proxy_core::tls::TlsPolicy::load(TlsMode::On, TlsVerify::Full, Some(&expired))
        .expect_err("an expired certificate of our own is refused at load");
    assert!(err.to_string().contains("expired"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_peer_certificate_is_refused_on_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "exp");
    let good = ca.issue("good", "127.0.0.1", Flaw::None);
    let expired = ca.issue("expired", "127.0.0.1", Flaw::Expired);
    // Loading refuses a proxy's own expired certificate; one that expires
    // while its proxy runs is what this dialer presents.
    let dialer = TlsPolicy::load_unchecked(TlsMode::Require, TlsVerify::Full, &expired)
        .expect("the expired files parse");
    let opts = MeshOptions {
        tls_of: vec![
            (1, policy(TlsMode::Require, TlsVerify::Full, &good)),
            (2, dialer),
        ],
        ..MeshOptions::default()
    };
    let mesh = Mesh::start_with(&[-1, 0], opts);
    let (p1, p2) = (mesh.proxy(1), mesh.proxy(2));
    wait_until("both ends show the refusal", || {
        !row(p1, 2).last_error.is_empty() && !row(p2, 1).last_error.is_empty()
    })
    .await;
    let (a, b) = (row(p1, 2).last_error, row(p2, 1).last_error);
    assert!(a.contains("expired"), "the acceptor says {a:?}");
    assert!(b.contains("expired"), "the dialer says {b:?}");
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_by_reload_under_a_running_stream_without_losing_a_byte() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "rot");
    let mesh = Mesh::start_with(&[-1, 0], tls_options(&ca, TlsMode::Require));
    mesh.wait_connected().await;
    let (tx, rx) = open_pair(&mesh, 2, 1, 1).await;
    let running =
        tokio::spawn(
            async move { tokio::join!(send_stream(tx, 7, 20_000, 8188), recv_stream(rx)) },
        );
    // New certificates of the same CA: the links in use carry on.
    let next = ca.issue("next", "127.0.0.1", Flaw::None);
    reload_tls(&mesh, policy(TlsMode::Require, TlsVerify::Full, &next));
    let (sent, got) = running.await.unwrap();
    let (got, count) = got.expect("receiver");
    assert_eq!(
        sent.expect("sender"),
        got,
        "the stream through the rotation corrupted"
    );
    assert_eq!(count, 20_000);
    for (p, other) in [(mesh.proxy(1), 2), (mesh.proxy(2), 1)] {
        let r = row(p, other);
        assert_eq!(
            (r.state, r.traffic.reconnects),
            (PeerState::Connected, 0),
            "{r:?}"
        );
    }

    // A new CA that does not validate the links in use ends them; they are
    // made again with the new certificates and carry data.
    let ca2 = TestCa::new(dir.path(), "rot2");
    let files2 = ca2.issue("proxy", "127.0.0.1", Flaw::None);
    reload_tls(&mesh, policy(TlsMode::Require, TlsVerify::Full, &files2));
    let p1 = mesh.proxy(1);
    wait_until("the link made again under the new CA", || {
        let r = row(p1, 2);
        r.state == PeerState::Connected && r.traffic.reconnects >= 1
    })
    .await;
    mesh.wait_connected().await;
    stream(&mesh, 2, 1, 2).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_require_ends_plaintext_links_and_makes_them_again_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "up");
    let files = ca.issue("proxy", "127.0.0.1", Flaw::None);
    let mesh = Mesh::start(&[-1, 0]);
    mesh.wait_connected().await;
    assert_eq!(row(mesh.proxy(1), 2).protection, "plaintext");
    reload_tls(&mesh, policy(TlsMode::Require, TlsVerify::Full, &files));
    let p1 = mesh.proxy(1);
    wait_until("the link made again with TLS", || {
        let r = row(p1, 2);
        r.state == PeerState::Connected && r.protection.starts_with("TLS1.3")
    })
    .await;
    mesh.wait_connected().await;
    stream(&mesh, 1, 2, 3).await;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_secret_authenticates_inside_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "both");
    let opts = MeshOptions {
        peer_secret: Some(std::sync::Arc::from(
            &b"a secret of at least sixteen bytes"[..],
        )),
        ..tls_options(&ca, TlsMode::Require)
    };
    let mesh = Mesh::start_with(&[-1, 0], opts);
    mesh.wait_connected().await;
    let r = row(mesh.proxy(2), 1);
    assert!(
        r.protection.starts_with("TLS1.3") && r.protection.ends_with("+ auth"),
        "{r:?}"
    );
    stream(&mesh, 2, 1, 4).await;
    mesh.shutdown().await;
}
