//! Status that tells the truth, and settings that cannot lock the proxy
//! out: every entry of a large map visible (or counted), a state for "this
//! instance's dbid is not in the map", the open-files limits raised and
//! shown, flow-control settings that cannot work refused by ALTER SYSTEM
//! (and, written by hand, reported by the worker, ic_proxy_info() and
//! ic_proxy_ping()), and ic_proxy_ping() unshaken by SIGHUP storms and
//! strict about its argument.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::Duration;

use ic_proxy_cluster_tests::{free_port, wait_until, PgCluster, PgInstance, PRELOAD};

const TIMEOUT: Duration = Duration::from_secs(30);

/// psql's report of a failed statement, without the "psql:<stdin>:N: " prefix.
fn error_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .map(|l| match l.strip_prefix("psql:<stdin>:") {
            Some(rest) => rest.split_once(": ").map_or(rest, |(_, m)| m).to_string(),
            None => l.to_string(),
        })
        .collect()
}

/// A map of `n` entries: this instance (dbid 1) with the highest content,
/// so it dials no one and waits for every peer; the peers on ports nobody
/// needs to open.
fn large_map(n: u16, my_port: u16) -> String {
    let mut entries = vec![format!("1:{}:127.0.0.1:{my_port}", n + 10)];
    entries.extend((2..=n).map(|dbid| format!("{dbid}:{}:127.0.0.1:{}", dbid - 2, 20000 + dbid)));
    entries.join(",")
}

/// Polls `sql` until it returns `expected`; the error shows the last answer.
fn wait_for(i: &PgInstance, sql: &str, expected: &str) {
    let mut last = String::new();
    wait_until(&format!("{sql} = {expected:?}"), TIMEOUT, || {
        last = i.psql(sql).unwrap_or_else(|e| e);
        (last == expected).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; last: {last:?}\n---- server log ----\n{}", i.log()));
}

#[test]
fn every_entry_of_a_large_map_is_shown_or_counted() {
    let my_port = free_port();
    let mut server = PgInstance::start_new(&[
        PRELOAD,
        "ic_proxy.dbid = 1",
        &format!("ic_proxy.addresses = '{}'", large_map(4096, my_port)),
    ])
    .expect("start");
    server
        .psql("CREATE EXTENSION cloudberry_ic_proxy")
        .expect("create extension");
    assert_eq!(server.show("ic_proxy.max_status_entries").unwrap(), "4096");
    // All 4,096 entries, each with its own state.
    wait_for(
        &server,
        "SELECT count(*) || '|' || count(*) FILTER (WHERE state = 'connecting') || '|' || \
         count(*) FILTER (WHERE state = 'self') || '|' || max(dbid) FROM ic_proxy_status()",
        "4096|4095|1|4096",
    );
    assert_eq!(
        server
            .psql("SELECT status_entries || '|' || status_entries_missing FROM ic_proxy_info()")
            .unwrap(),
        "4096|0"
    );

    // Four more than the area holds: the missing ones are counted and announced.
    server
        .psql(&format!(
            "ALTER SYSTEM SET ic_proxy.addresses = '{}';\nSELECT pg_reload_conf();",
            large_map(4100, my_port)
        ))
        .expect("a map of 4,100 entries");
    wait_for(
        &server,
        "SELECT status_entries_missing FROM ic_proxy_info()",
        "4",
    );
    assert_eq!(
        server
            .psql("SELECT count(*) FROM ic_proxy_status()")
            .unwrap(),
        "4096"
    );
    let stderr = psql_stderr(&server, "SELECT count(*) FROM ic_proxy_status();");
    assert!(
        stderr.contains(
            "NOTICE:  4 map entries are not shown: the status area holds 4096 (ic_proxy.max_status_entries)"
        ),
        "{stderr}"
    );

    // A larger area, at the next start, shows them all.
    server
        .append_conf(&["ic_proxy.max_status_entries = 8192"])
        .expect("conf");
    server.restart().expect("restart");
    wait_for(
        &server,
        "SELECT count(*) || '|' || max(dbid) FROM ic_proxy_status()",
        "4100|4100",
    );
    assert_eq!(
        server
            .psql("SELECT status_entries || '|' || status_entries_missing FROM ic_proxy_info()")
            .unwrap(),
        "8192|0"
    );
}

/// The NOTICEs and WARNINGs a successful statement printed.
fn psql_stderr(i: &PgInstance, sql: &str) -> String {
    // A failing statement after the query turns its stderr into our Err.
    match i.psql(&format!("{sql}\nSELECT 1/0;")) {
        Ok(out) => panic!("SELECT 1/0 succeeded: {out}"),
        Err(stderr) => stderr,
    }
}

#[test]
fn a_map_without_this_instance_says_so_and_the_fd_limits_are_raised() {
    let ports = [free_port(), free_port()];
    let server = PgInstance::start_new(&[
        PRELOAD,
        "ic_proxy.dbid = 9",
        &format!(
            "ic_proxy.addresses = '1:-1:127.0.0.1:{}, 2:0:127.0.0.1:{}'",
            ports[0], ports[1]
        ),
    ])
    .expect("start");
    server
        .psql("CREATE EXTENSION cloudberry_ic_proxy")
        .expect("create extension");
    let why = "this instance's dbid 9 is not in the address map";
    wait_for(
        &server,
        "SELECT string_agg(dbid || ':' || state || ':' || last_error, ', ' ORDER BY dbid) \
         FROM ic_proxy_status()",
        &format!("1:not in map:{why}, 2:not in map:{why}"),
    );
    assert_eq!(
        server
            .psql("SELECT running || '|' || peer_listener || '|' || peer_listener_detail FROM ic_proxy_info()")
            .unwrap(),
        format!("true|down|{why}")
    );
    assert_eq!(
        server
            .psql("SELECT string_agg(dbid || ':' || ok || ':' || error, ', ' ORDER BY dbid) FROM ic_proxy_ping()")
            .unwrap(),
        format!("1:false:{why}, 2:false:{why}")
    );
    // The view of the links says the same.
    assert_eq!(
        server
            .psql("SELECT count(*) FROM ic_proxy_peers WHERE state = 'not in map'")
            .unwrap(),
        "2"
    );

    // The open-files limits: raised (soft = hard), shown, and what the
    // worker process really has.
    let row = server
        .psql("SELECT worker_pid || '|' || fd_soft_limit || '|' || fd_hard_limit FROM ic_proxy_info()")
        .unwrap();
    let fields: Vec<&str> = row.split('|').collect();
    let [pid, soft, hard] = fields[..] else {
        panic!("{row}")
    };
    let soft: u64 = soft.parse().unwrap();
    let hard: u64 = hard.parse().unwrap();
    assert!(soft > 0 && soft == hard, "{row}");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("{limits}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(numbers, vec![soft, hard], "{line}");
    let log = server.log();
    assert!(
        log.contains(&format!("open files limit soft {soft}, hard {hard}")),
        "{log}"
    );
}

#[test]
fn flow_settings_that_cannot_work_are_refused_or_reported() {
    let ports = [free_port(), free_port()];
    let mut server = PgInstance::start_new(&[
        PRELOAD,
        "ic_proxy.dbid = 1",
        &format!(
            "ic_proxy.addresses = '1:-1:127.0.0.1:{}, 2:0:127.0.0.1:{}'",
            ports[0], ports[1]
        ),
    ])
    .expect("start");
    server
        .psql("CREATE EXTENSION cloudberry_ic_proxy")
        .expect("create extension");

    let err = server
        .psql("ALTER SYSTEM SET ic_proxy.flow_resume_threshold = 150")
        .expect_err("resume above pause is refused");
    assert_eq!(
        error_lines(&err),
        vec![
            "ERROR:  ic_proxy.flow_resume_threshold (150) must be below ic_proxy.flow_pause_threshold (100)".to_string(),
            "DETAIL:  A sender pauses at the pause threshold of unacknowledged DATA packets and resumes at the resume threshold, so the resume threshold must be the lower one.".to_string(),
            "HINT:  Set ic_proxy.flow_resume_threshold below 100 or ic_proxy.flow_pause_threshold above 150 (C proxy: 100 and 30), then restart the server.".to_string(),
        ],
        "{err}"
    );
    let err = server
        .psql("ALTER SYSTEM SET ic_proxy.flow_ack_interval = 40")
        .expect_err("an ack interval above resume + 1 is refused");
    assert_eq!(
        error_lines(&err).first().map(String::as_str),
        Some("ERROR:  ic_proxy.flow_ack_interval (40) must not exceed ic_proxy.flow_resume_threshold + 1 (31)"),
        "{err}"
    );
    let auto_conf =
        std::fs::read_to_string(server.data_dir().join("postgresql.auto.conf")).unwrap();
    assert!(!auto_conf.contains("flow"), "{auto_conf}");

    // Raising both, one command at a time, works: each is checked against
    // the value the other will have at the next start.
    server
        .psql("ALTER SYSTEM SET ic_proxy.flow_pause_threshold = 300")
        .expect("pause 300");
    server
        .psql("ALTER SYSTEM SET ic_proxy.flow_resume_threshold = 200")
        .expect("resume 200, below the pause threshold of the next start");
    server.restart().expect("restart");
    assert_eq!(
        server.show("ic_proxy.flow_resume_threshold").unwrap(),
        "200"
    );
    wait_for(&server, "SELECT running FROM ic_proxy_info()", "t");

    // Written by hand, a bad pair reaches the worker: it stays off, logs
    // why, and every function says it instead of blaming the map.
    server
        .write_data_file(
            "postgresql.auto.conf",
            "ic_proxy.flow_pause_threshold = 20\nic_proxy.flow_resume_threshold = 50\n",
        )
        .expect("write postgresql.auto.conf");
    server
        .restart()
        .expect("the server starts despite the bad pair");
    let problem =
        "ic_proxy.flow_resume_threshold (50) must be below ic_proxy.flow_pause_threshold (20)";
    let fix = "Set ic_proxy.flow_resume_threshold below 20 or ic_proxy.flow_pause_threshold above 50 (C proxy: 100 and 30), then restart the server.";
    server
        .wait_for_log(
            &format!("WARNING:  ic-proxy: cannot start: {problem}"),
            TIMEOUT,
        )
        .expect("the worker logs why it stays off");
    assert!(
        server.log().contains(&format!("HINT:  {fix}")),
        "{}",
        server.log()
    );
    wait_for(
        &server,
        "SELECT running || '|' || last_error FROM ic_proxy_info()",
        &format!("false|{problem}. {fix}"),
    );
    assert_eq!(
        server
            .psql("SELECT ok || '|' || error FROM ic_proxy_ping(2)")
            .unwrap(),
        format!("false|the proxy is off: {problem}. {fix}")
    );
    assert_eq!(
        server
            .psql("SELECT state || '|' || last_error FROM ic_proxy_status() WHERE dbid = 2")
            .unwrap(),
        format!("not running|the proxy is off: {problem}. {fix}")
    );
}

#[test]
fn pings_survive_sighup_storms() {
    let (cluster, _map) = PgCluster::start_mesh(2, TIMEOUT).expect("a mesh of two");
    let coord = cluster.instance(1);
    let stop = AtomicBool::new(false);
    let storms = AtomicU64::new(0);
    let pings = thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Relaxed) {
                // 200 SIGHUPs to the postmaster, which passes each on to
                // every backend, the pinging one included.
                coord
                    .psql("DO $$ BEGIN FOR i IN 1..200 LOOP PERFORM pg_reload_conf(); END LOOP; END $$")
                    .expect("reload storm");
                storms.fetch_add(1, Relaxed);
            }
        });
        // The function is rescanned for each row because its argument
        // changes (to the same dbid).
        let result = (0..4)
            .map(|_| {
                coord.psql(
                    "SELECT count(*) FILTER (WHERE ok) || '|' || count(*) || '|' ||                      coalesce(string_agg(DISTINCT error, '; '), '')                      FROM generate_series(1, 250) g, LATERAL ic_proxy_ping(2 + 0 * g)",
                )
            })
            .collect::<Vec<_>>();
        stop.store(true, Relaxed);
        result
    });
    assert!(storms.load(Relaxed) > 0, "no reload storm ran");
    for p in pings {
        assert_eq!(
            p.as_deref(),
            Ok("250|250|"),
            "every ping is ok under SIGHUPs"
        );
    }
}

#[test]
fn ping_refuses_a_dbid_out_of_range() {
    let server = PgInstance::start_new(&[PRELOAD, "ic_proxy.dbid = 1"]).expect("start");
    server
        .psql("CREATE EXTENSION cloudberry_ic_proxy")
        .expect("create extension");
    for bad in ["70000", "0", "-1", "32768"] {
        let err = server
            .psql(&format!(
                "\\set VERBOSITY verbose\nSELECT * FROM ic_proxy_ping({bad})"
            ))
            .expect_err("out of range");
        let lines = error_lines(&err);
        assert_eq!(
            lines.first().map(String::as_str),
            Some(format!("ERROR:  22003: dbid {bad} is outside 1..32767").as_str()),
            "{err}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("HINT:  Give the dbid of an entry")),
            "{err}"
        );
    }
    // 32767 is a dbid: no map, so no row, and no error.
    assert_eq!(
        server
            .psql("SELECT count(*) FROM ic_proxy_ping(32767)")
            .unwrap(),
        "0"
    );
}
