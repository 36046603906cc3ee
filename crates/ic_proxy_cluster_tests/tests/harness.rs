//! The harness itself: what later cluster tests rely on when they restart
//! or crash a server, and that nothing outlives a test.

use std::time::Duration;

use ic_proxy_cluster_tests::{process_alive, wait_for_exit, PgCluster, PgInstance, PRELOAD};

#[test]
fn restart_and_kill9_keep_the_data_and_drop_cleans_up() {
    let mut server = PgInstance::start_new(&[PRELOAD]).expect("start");
    server
        .psql("CREATE TABLE kept(v int); INSERT INTO kept VALUES (42);")
        .expect("write");

    server.restart().expect("restart");
    assert_eq!(server.psql("SELECT v FROM kept").unwrap(), "42");

    // A crash: the postmaster's children notice its death and exit, and the
    // server starts again on the same data directory (after crash recovery).
    let children = server.kill9().expect("kill -9 the postmaster");
    assert!(!children.is_empty(), "a running server has child processes");
    wait_for_exit(&children, Duration::from_secs(30))
        .expect("every child of the killed postmaster exits by itself");
    assert!(
        server.psql("SELECT 1").is_err(),
        "nobody answers after the kill"
    );
    server.start().expect("start after the crash");
    assert_eq!(server.psql("SELECT v FROM kept").unwrap(), "42");
    server
        .wait_for_log("database system was interrupted", Duration::from_secs(5))
        .expect("the restart after the crash ran recovery");

    let root = server.root_dir().to_path_buf();
    let pid = server.postmaster_pid().expect("running");
    drop(server);
    assert!(!process_alive(pid), "drop stops the server");
    assert!(!root.exists(), "drop removes {}", root.display());
}

#[test]
fn cluster_members_have_their_identity_and_configuration_rows() {
    let cluster = PgCluster::start_preloaded(3, &[]).expect("start 3 servers");
    let identities: Vec<(u16, i16)> = cluster
        .members()
        .iter()
        .map(|m| (m.dbid, m.content))
        .collect();
    assert_eq!(identities, vec![(1, -1), (2, 0), (3, 1)]);

    cluster.fill_segment_configuration().expect("fill");
    // Idempotent: filling again replaces the rows.
    cluster.fill_segment_configuration().expect("fill again");
    let expected: Vec<String> = cluster
        .members()
        .iter()
        .map(|m| {
            format!(
                "{}|{}|p|p|n|u|{}|127.0.0.1|127.0.0.1|{}",
                m.dbid,
                m.content,
                m.instance.port(),
                m.instance.data_dir().display()
            )
        })
        .collect();
    for member in cluster.members() {
        assert_eq!(
            member.instance.show("ic_proxy.dbid").unwrap(),
            member.dbid.to_string()
        );
        let rows = member
            .instance
            .psql("SELECT * FROM gp_segment_configuration ORDER BY dbid")
            .unwrap();
        assert_eq!(rows, expected.join("\n"), "dbid {}", member.dbid);
    }
    let ports: std::collections::HashSet<u16> = cluster
        .members()
        .iter()
        .map(|m| m.instance.port())
        .collect();
    assert_eq!(ports.len(), 3, "every instance has its own port");
}
