//! A peer port that is taken is reported and retried, not silent: the
//! proxy's status says "failed" with the error, and once the port is free
//! the listener comes up on its own.

use std::time::Duration;

use ic_proxy_core::address_map::AddressMap;
use ic_proxy_core::{bind_backend_socket, Listeners, ProxyHandle, ProxySettings, RuntimeConfig};
use ic_proxy_tests::{reserve, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_peer_port_is_reported_and_retried_until_free() {
    // Someone else holds this instance's proxy port.
    let (squatter, me) = reserve(1, -1);
    let map = AddressMap::from_entries(vec![me.clone()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join(".s.PGSQL.ic_proxy.5432.1");
    let backend = bind_backend_socket(&socket).unwrap();
    let mut proxy = ProxyHandle::new(RuntimeConfig::new(map));
    proxy.spawn(
        &tokio::runtime::Handle::current(),
        ProxySettings::new(1, socket),
        Listeners {
            peer: None,
            backend: Some(backend),
        },
    );
    let status = proxy.status().clone();
    wait_until("the failure reported", || {
        status.snapshot().peer_listener.0 == "failed"
    })
    .await;
    let (_, detail) = status.snapshot().peer_listener;
    assert!(
        detail.contains(&format!("cannot listen on 127.0.0.1:{}", me.port))
            && detail.contains("in use"),
        "{detail}"
    );
    // The port comes free: the next retry (every second) takes it.
    drop(squatter);
    wait_until("the listener up", || {
        status.snapshot().peer_listener.0 == "up"
    })
    .await;
    assert_eq!(
        status.snapshot().peer_listener.1,
        format!("127.0.0.1:{}", me.port)
    );
    proxy.stop(Duration::from_secs(10)).await.unwrap();
}
