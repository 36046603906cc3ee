//! The extension in action: real PostgreSQL 15 servers whose workers form
//! the proxy mesh from a map generated with ic_proxy_addresses_generate() and
//! applied with ALTER SYSTEM + reload, carrying checksummed data between
//! backends (played by ic_proxy_client) on different instances; probes,
//! expansion, a refused map, killed workers, stopped instances and a killed
//! postmaster.

use std::path::PathBuf;
use std::time::Duration;

use ic_proxy_client::{
    pattern_payload, ClientOptions, ConnSpec, Endpoint, LogicalConn, RecvItem, StreamDigest,
};
use ic_proxy_cluster_tests::builtin::BuiltinProxy;
use ic_proxy_cluster_tests::{give_to_server_user, server_owned_tempdir};
use ic_proxy_cluster_tests::{
    process_alive, wait_for_exit, wait_until, PgCluster, PgInstance, PRELOAD,
};
use ic_proxy_tests::certs::{Flaw, TestCa};

const MESH_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a test needs of one instance to play its backends.
#[derive(Clone)]
struct Node {
    dbid: u16,
    content: i16,
    socket_dir: PathBuf,
}

fn conf_for(dbid: u16, socket_dir: &std::path::Path) -> Vec<String> {
    vec![
        PRELOAD.to_string(),
        format!("ic_proxy.dbid = {dbid}"),
        format!("ic_proxy.socket_dir = '{}'", socket_dir.display()),
        "ic_proxy.peer_retry_interval = '200ms'".to_string(),
    ]
}

/// A delta that puts every instance's proxy port on a free port.
fn free_delta(ports: &[u16]) -> i32 {
    for delta in (1000..20000).step_by(97) {
        let ok = ports.iter().all(|p| {
            let proxy = i32::from(*p) + delta;
            proxy < 65535 && std::net::TcpListener::bind(("127.0.0.1", proxy as u16)).is_ok()
        });
        if ok {
            return delta;
        }
    }
    panic!("no free delta for ports {ports:?}");
}

/// Starts `n` instances and brings up their mesh the way a user does.
fn start_mesh(n: usize) -> (PgCluster, Vec<Node>, i32) {
    start_mesh_with(n, &[])
}

/// The same, every instance with the settings `extra` too.
fn start_mesh_with(n: usize, extra: &[String]) -> (PgCluster, Vec<Node>, i32) {
    let mut cluster = PgCluster::new(n, |_, _| vec![]).expect("initdb");
    for m in cluster.members() {
        let mut lines = conf_for(m.dbid, &m.instance.socket_dir());
        lines.extend(extra.iter().cloned());
        m.instance
            .append_conf(&lines.iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap();
    }
    cluster.start_all().expect("start");
    cluster
        .fill_segment_configuration()
        .expect("fill gp_segment_configuration");
    let ports: Vec<u16> = cluster
        .members()
        .iter()
        .map(|m| m.instance.port())
        .collect();
    let delta = free_delta(&ports);
    apply_generated_map(
        &cluster
            .members()
            .iter()
            .map(|m| &m.instance)
            .collect::<Vec<_>>(),
        delta,
    );
    let nodes = cluster
        .members()
        .iter()
        .map(|m| Node {
            dbid: m.dbid,
            content: m.content,
            socket_dir: m.instance.socket_dir(),
        })
        .collect();
    for m in cluster.members() {
        wait_mesh(&m.instance, n);
    }
    (cluster, nodes, delta)
}

/// Generates the map on the first instance and applies it on all of them.
fn apply_generated_map(instances: &[&PgInstance], delta: i32) -> String {
    let map = instances[0]
        .psql(&format!("SELECT ic_proxy_addresses_generate({delta})"))
        .unwrap();
    for i in instances {
        i.psql(&format!("ALTER SYSTEM SET ic_proxy.addresses = '{map}'"))
            .unwrap();
        i.reload().unwrap();
    }
    map
}

/// Waits until the instance's proxy lists `n` entries, all self or connected.
fn wait_mesh(i: &PgInstance, n: usize) {
    let mut last = String::new();
    wait_until("every peer connected", MESH_TIMEOUT, || {
        last = i
            .psql("SELECT string_agg(dbid || ':' || state || ':' || coalesce(last_error, ''), ', ' ORDER BY dbid) FROM ic_proxy_status()")
            .unwrap_or_else(|e| e);
        let states: Vec<&str> = last.split(", ").collect();
        (states.len() == n && states.iter().all(|s| s.contains(":self:") || s.contains(":connected:"))).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {last}\n{}", i.log()));
}

/// `ic_proxy_ping()` on instance `dbid` answers ok from every other node.
fn assert_every_probe_answers(i: &PgInstance, dbid: u16, nodes: &[Node]) {
    let rows = i
        .psql("SELECT dbid || ':' || ok || ':' || coalesce(error, '') FROM ic_proxy_ping() ORDER BY dbid")
        .unwrap();
    let expected: Vec<String> = nodes
        .iter()
        .filter(|n| n.dbid != dbid)
        .map(|n| format!("{}:true:", n.dbid))
        .collect();
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        expected,
        "probes from dbid {dbid}"
    );
}

fn socket_of(i: &PgInstance, dir: &std::path::Path) -> PathBuf {
    let pid = i.postmaster_pid().expect("running");
    ic_proxy_client::socket_path(dir, i.port(), pid)
}

fn spec(from: &Node, to: &Node, n: u32) -> ConnSpec {
    ConnSpec {
        session_id: 4242,
        command_id: n,
        send_slice: 1,
        recv_slice: 0,
        local: Endpoint {
            content: from.content,
            dbid: from.dbid,
            pid: 50_000 + n as i32,
        },
        remote: Endpoint {
            content: to.content,
            dbid: to.dbid,
            pid: 60_000 + n as i32,
        },
    }
}

/// Streams `packets` pattern packets from a backend on `a` to one on `b`
/// through the two workers; returns (sent, received, count).
async fn stream(
    sa: PathBuf,
    sb: PathBuf,
    s: ConnSpec,
    seed: u64,
    packets: u64,
    len: usize,
) -> Result<(StreamDigest, StreamDigest, u64), String> {
    let opts = ClientOptions::default();
    let (tx, rx) = tokio::join!(
        LogicalConn::connect(&sa, s, &opts),
        LogicalConn::connect(&sb, s.reversed(), &opts)
    );
    let (mut tx, mut rx) = (
        tx.map_err(|e| e.to_string())?,
        rx.map_err(|e| e.to_string())?,
    );
    let send = async move {
        let mut d = StreamDigest::new();
        for i in 0..packets {
            let p = pattern_payload(seed, i, len);
            d.update(&p);
            tx.send_packet(&p).await.map_err(|e| e.to_string())?;
        }
        tx.finish().await.map_err(|e| e.to_string())?;
        while let RecvItem::Packet(_) = tx.recv().await.map_err(|e| e.to_string())? {}
        Ok::<_, String>(d)
    };
    let recv = async move {
        let mut d = StreamDigest::new();
        let mut n = 0;
        while let RecvItem::Packet(p) = rx.recv().await.map_err(|e| e.to_string())? {
            d.update(&p);
            n += 1;
        }
        rx.finish().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((d, n))
    };
    let (sent, got) = tokio::join!(send, recv);
    let (got, n) = got?;
    Ok((sent?, got, n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_comes_up_carries_data_and_answers_probes() {
    let (cluster, nodes, _) = start_mesh(3);
    // Probes from every instance to every peer.
    for m in cluster.members() {
        assert_every_probe_answers(&m.instance, m.dbid, &nodes);
    }
    // Checksummed data on every pair, both directions, at once.
    let mut tasks = Vec::new();
    let mut k = 0;
    for a in &nodes {
        for b in &nodes {
            if a.dbid == b.dbid {
                continue;
            }
            k += 1;
            let sa = socket_of(cluster.instance(a.dbid), &a.socket_dir);
            let sb = socket_of(cluster.instance(b.dbid), &b.socket_dir);
            let s = spec(a, b, k);
            tasks.push(tokio::spawn(stream(sa, sb, s, u64::from(k), 500, 8188)));
        }
    }
    for t in tasks {
        let (sent, got, n) = t.await.unwrap().expect("stream");
        assert_eq!(n, 500);
        assert_eq!(sent, got, "bytes lost or reordered");
    }
    // The counters moved (status is published a few times a second).
    let mut moved = 0i64;
    wait_until("bytes_out published", MESH_TIMEOUT, || {
        moved = cluster
            .instance(1)
            .psql("SELECT sum(bytes_out) FROM ic_proxy_status()")
            .unwrap()
            .parse()
            .unwrap();
        (moved > 2 * 500 * 8188).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: bytes_out {moved}"));
    let info = cluster
        .instance(1)
        .psql("SELECT running, peer_listener, backend_socket, dialect FROM ic_proxy_info()")
        .unwrap();
    assert_eq!(info, "t|up|up|c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_over_tls_answers_probes_carries_data_and_shows_each_link_protected() {
    // Certificates made here, readable by the server user.
    let certs = server_owned_tempdir("ic-proxy-tls.").expect("a directory");
    let ca = TestCa::new(certs.path(), "cluster");
    let files = ca.issue("node", "127.0.0.1", Flaw::None);
    give_to_server_user(certs.path()).expect("chown");
    let extra = vec![
        "ic_proxy.tls = 'require'".to_string(),
        format!("ic_proxy.tls_cert_file = '{}'", files.cert.display()),
        format!("ic_proxy.tls_key_file = '{}'", files.key.display()),
        format!("ic_proxy.tls_ca_file = '{}'", files.ca.display()),
    ];
    let (cluster, nodes, _) = start_mesh_with(3, &extra);
    for m in cluster.members() {
        assert_every_probe_answers(&m.instance, m.dbid, &nodes);
        let protection = m
            .instance
            .psql("SELECT string_agg(protection, ',' ORDER BY dbid) FROM ic_proxy_peers")
            .unwrap();
        for p in protection.split(',') {
            assert!(
                p.starts_with("TLS1.3 TLS13_"),
                "dbid {}: {protection}",
                m.dbid
            );
        }
        let info = m
            .instance
            .psql("SELECT tls || '|' || tls_certificate || '|' || (tls_certificate_expires > now()) FROM ic_proxy_info()")
            .unwrap();
        assert_eq!(info, "require|CN=ic-proxy node|true", "dbid {}", m.dbid);
    }
    let (a, b) = (&nodes[1], &nodes[0]);
    let sa = socket_of(cluster.instance(a.dbid), &a.socket_dir);
    let sb = socket_of(cluster.instance(b.dbid), &b.socket_dir);
    let (sent, got, n) = stream(sa, sb, spec(a, b, 1), 5, 500, 8188)
        .await
        .expect("stream");
    assert_eq!((n, sent), (500, got), "bytes lost or reordered over TLS");

    // A reload to a certificate file that cannot be used: a WARNING, and the
    // certificates in force stay in use; the mesh carries on over TLS.
    let junk = certs.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("write junk.pem");
    give_to_server_user(&junk).expect("chown");
    let i = cluster.instance(a.dbid);
    i.psql(&format!(
        "ALTER SYSTEM SET ic_proxy.tls_cert_file = '{}'",
        junk.display()
    ))
    .unwrap();
    i.psql("SELECT pg_reload_conf()").unwrap();
    i.wait_for_log(
        "TLS on peer links cannot use its files",
        Duration::from_secs(30),
    )
    .expect("a WARNING");
    let log = i.log();
    let line = log
        .lines()
        .find(|l| l.contains("TLS on peer links cannot use its files"))
        .unwrap();
    assert!(line.contains("WARNING"), "{line}");
    assert!(line.contains(&junk.display().to_string()), "{line}");
    assert!(
        line.contains("the certificates in force stay in use"),
        "{line}"
    );
    let info = i
        .psql("SELECT tls || '|' || tls_certificate FROM ic_proxy_info()")
        .unwrap();
    assert_eq!(info, "require|CN=ic-proxy node");
    assert_every_probe_answers(i, a.dbid, &nodes);
    let (sent, got, n) = stream(
        socket_of(i, &a.socket_dir),
        socket_of(cluster.instance(b.dbid), &b.socket_dir),
        spec(a, b, 2),
        5,
        200,
        8188,
    )
    .await
    .expect("a stream after the refused reload");
    assert_eq!(
        (n, sent),
        (200, got),
        "bytes lost or reordered after the reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_is_reported_down_and_comes_back() {
    let (mut cluster, _nodes, _) = start_mesh(3);
    cluster.instance_mut(3).stop().unwrap();
    let coord = cluster.instance(1);
    let mut last = String::new();
    wait_until("dbid 3 reported down", MESH_TIMEOUT, || {
        last = coord
            .psql("SELECT state FROM ic_proxy_status() WHERE dbid = 3")
            .unwrap();
        (last == "down" || last == "connecting").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {last}"));
    let ping = coord
        .psql("SELECT ok || '|' || error FROM ic_proxy_ping(3)")
        .unwrap();
    assert!(ping.starts_with("false|peer is "), "{ping}");
    // The others are untouched.
    assert_eq!(coord.psql("SELECT ok FROM ic_proxy_ping(2)").unwrap(), "t");
    cluster.instance_mut(3).start().unwrap();
    wait_mesh(cluster.instance(1), 3);
    wait_mesh(cluster.instance(3), 3);
    assert_eq!(
        cluster
            .instance(1)
            .psql("SELECT ok FROM ic_proxy_ping(3)")
            .unwrap(),
        "t"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_expansion_keeps_streams_flowing() {
    let (cluster, nodes, delta) = start_mesh(3);
    // A long stream between the coordinator and segment 0.
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    let sa = socket_of(cluster.instance(1), &a.socket_dir);
    let sb = socket_of(cluster.instance(2), &b.socket_dir);
    let long = tokio::spawn(stream(sa, sb, spec(&a, &b, 1), 7, 6000, 8188));

    // A fourth instance joins: new row everywhere, regenerate, reload.
    let new = PgInstance::new(&[]).unwrap();
    let lines = conf_for(4, &new.socket_dir());
    new.append_conf(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap();
    let mut new = new;
    new.start().unwrap();
    let port4 = new.port();
    let proxy4 = i32::from(port4) + delta;
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", proxy4 as u16)).is_ok(),
        "proxy port of the new instance is taken"
    );
    let row = format!(
        "INSERT INTO gp_segment_configuration VALUES (4, 2, 'p', 'p', 'n', 'u', {port4}, '127.0.0.1', '127.0.0.1', '{}')",
        new.data_dir().display()
    );
    for m in cluster.members() {
        m.instance.psql(&row).unwrap();
    }
    new.psql("CREATE EXTENSION cloudberry_ic_proxy").unwrap();
    new.psql(&cluster.segment_configuration_insert()).unwrap();
    new.psql(&row).unwrap();
    let mut all: Vec<&PgInstance> = cluster.members().iter().map(|m| &m.instance).collect();
    all.push(&new);
    apply_generated_map(&all, delta);
    for i in &all {
        wait_mesh(i, 4);
    }
    assert_eq!(
        cluster
            .instance(1)
            .psql("SELECT ok FROM ic_proxy_ping(4)")
            .unwrap(),
        "t"
    );
    let (sent, got, n) = long.await.unwrap().expect("the long stream");
    assert_eq!(n, 6000);
    assert_eq!(sent, got, "the expansion disturbed a running stream");
    let reconnects = cluster
        .instance(1)
        .psql("SELECT reconnects FROM ic_proxy_status() WHERE dbid = 2")
        .unwrap();
    assert_eq!(reconnects, "0", "the link to an unchanged peer was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_map_is_refused_and_the_mesh_is_untouched() {
    let (cluster, _nodes, _) = start_mesh(3);
    let i = cluster.instance(2);
    let before = i.show("ic_proxy.addresses").unwrap();
    let generation = i
        .psql("SELECT map_generation FROM ic_proxy_info()")
        .unwrap();
    let err = i
        .psql("ALTER SYSTEM SET ic_proxy.addresses = '1:-1:127.0.0.1:70000'")
        .unwrap_err();
    assert!(err.contains("port 70000 is outside 1..65535"), "{err}");
    i.reload().unwrap();
    assert_eq!(i.show("ic_proxy.addresses").unwrap(), before);
    assert_eq!(
        i.psql("SELECT map_generation FROM ic_proxy_info()")
            .unwrap(),
        generation
    );
    assert_eq!(
        i.psql("SELECT count(*) FROM ic_proxy_ping() WHERE ok")
            .unwrap(),
        "2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_comes_back_and_the_mesh_with_it() {
    let (cluster, _nodes, _) = start_mesh(3);
    let i = cluster.instance(2);
    let pid: u32 = i
        .psql("SELECT worker_pid FROM ic_proxy_info()")
        .unwrap()
        .parse()
        .unwrap();
    assert!(process_alive(pid));
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_for_exit(&[pid], MESH_TIMEOUT).unwrap();
    // The postmaster restarts it (after resetting shared memory: a crashed
    // worker with shared-memory access counts as a crash).
    let mut last = String::new();
    wait_until("a new worker", MESH_TIMEOUT, || {
        last = i
            .psql("SELECT worker_pid || '|' || running FROM ic_proxy_info()")
            .unwrap_or_else(|e| e);
        let mut it = last.split('|');
        let new_pid = it.next().and_then(|p| p.parse::<u32>().ok());
        (new_pid.is_some_and(|p| p != pid) && it.next() == Some("true")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {last}"));
    for m in cluster.members() {
        wait_mesh(&m.instance, 3);
    }
    assert_eq!(
        cluster
            .instance(1)
            .psql("SELECT ok FROM ic_proxy_ping(2)")
            .unwrap(),
        "t"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_postmaster_takes_the_worker_with_it_and_a_restart_replaces_the_socket() {
    let (mut cluster, nodes, _) = start_mesh(2);
    let node = nodes[1].clone();
    let old_socket = socket_of(cluster.instance(2), &node.socket_dir);
    assert!(old_socket.exists());
    let worker: u32 = cluster
        .instance(2)
        .psql("SELECT worker_pid FROM ic_proxy_info()")
        .unwrap()
        .parse()
        .unwrap();
    cluster.instance_mut(2).kill9().unwrap();
    let t0 = std::time::Instant::now();
    wait_for_exit(&[worker], Duration::from_secs(5)).unwrap();
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "the worker outlived its postmaster by {:?}",
        t0.elapsed()
    );
    wait_until("the old socket removed", Duration::from_secs(5), || {
        (!old_socket.exists()).then_some(())
    })
    .unwrap();
    cluster.instance_mut(2).start().unwrap();
    let new_socket = socket_of(cluster.instance(2), &node.socket_dir);
    wait_until("the new socket", MESH_TIMEOUT, || {
        new_socket.exists().then_some(())
    })
    .unwrap();
    wait_mesh(cluster.instance(2), 2);
    wait_mesh(cluster.instance(1), 2);
}

/// Waits until the stand-in no longer holds its path; returns how long.
fn taken_back(b: &BuiltinProxy) -> Duration {
    let start = std::time::Instant::now();
    wait_until("the worker takes its path back", MESH_TIMEOUT, || {
        (!b.holds_path()).then_some(())
    })
    .unwrap();
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_takes_its_socket_back_from_the_built_in_proxy() {
    let (cluster, nodes, _) = start_mesh(2);
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    let i2 = cluster.instance(2);
    let sa = socket_of(cluster.instance(1), &a.socket_dir);
    let sb = socket_of(i2, &b.socket_dir);
    let takeovers = || {
        i2.psql("SELECT socket_takeovers FROM ic_proxy_info()")
            .unwrap()
    };
    // The worker publishes its figures a few times a second.
    let wait_takeovers = |n: &str| {
        let mut last = String::new();
        wait_until("the takeover counted", MESH_TIMEOUT, || {
            last = takeovers();
            (last == n).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: socket_takeovers {last}, expected {n}"));
    };
    assert_eq!(takeovers(), "0");

    // The built-in proxy starts after ours and takes the path.
    let mut builtin = BuiltinProxy::start(&sb);
    let took = taken_back(&builtin);
    assert!(
        took < Duration::from_millis(2500),
        "taken back after {took:?}"
    );
    let (sent, got, n) = stream(sa.clone(), sb.clone(), spec(&a, &b, 1), 1, 128, 8188)
        .await
        .unwrap();
    assert_eq!((sent, n), (got, 128));
    wait_takeovers("1");
    i2.wait_for_log(
        "most likely the built-in \"ic proxy process\"",
        MESH_TIMEOUT,
    )
    .unwrap();
    assert!(i2
        .log()
        .contains("Leave gp_interconnect_proxy_addresses empty"));

    // It restarts later and takes the path again.
    builtin.restart();
    let took = taken_back(&builtin);
    assert!(
        took < Duration::from_millis(2500),
        "taken back after {took:?}"
    );
    let (sent, got, _) = stream(sa.clone(), sb.clone(), spec(&a, &b, 2), 2, 64, 8188)
        .await
        .unwrap();
    assert_eq!(sent, got);
    wait_takeovers("2");

    // It holds the path when our worker starts (after a crash restart).
    let worker: u32 = i2
        .psql("SELECT worker_pid FROM ic_proxy_info()")
        .unwrap()
        .parse()
        .unwrap();
    unsafe { libc::kill(worker as i32, libc::SIGSTOP) };
    builtin.restart();
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    wait_for_exit(&[worker], MESH_TIMEOUT).unwrap();
    taken_back(&builtin);
    wait_mesh(i2, 2);
    let (sent, got, _) = stream(sa, sb, spec(&a, &b, 3), 3, 64, 8188).await.unwrap();
    assert_eq!(sent, got);
    let restarted: u32 = i2
        .psql("SELECT worker_pid FROM ic_proxy_info()")
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(restarted, worker);
    // The new worker counts from its own start.
    wait_takeovers("1");
}
