//! Chaos under load. Four real servers form a live proxy mesh and carry 64
//! checksummed logical connections at once (four on every ordered pair of
//! instances, each instance with itself included) while the proxy worker of
//! dbid 3 is SIGKILLed (the postmaster then restarts all of that instance's
//! processes: a worker with shared memory that crashes counts as a crash),
//! dbid 4 is stopped and started, and every instance reloads its map 100
//! times, alternating an unchanged value with one that adds or removes a
//! phantom dbid 9. Connections between the untouched instances (dbids 1 and
//! 2) must deliver every byte, in order; the others must end on both ends
//! within a deadline, with every byte they did deliver intact. Afterwards
//! every pair carries data again, and no worker holds more descriptors,
//! socket files or memory than before the load.
//!
//! `cargo test -p ic_proxy_cluster_tests --test chaos -- --test-threads=1 --nocapture`
//! prints the counts (streams, bytes checked, faults, reloads, leaks).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use ic_proxy_core::sync::RwLock;
use std::thread;
use std::time::{Duration, Instant};

use ic_proxy_client::{
    fill_pattern, pattern_payload, ClientOptions, ConnSpec, Endpoint, LogicalConn, RecvItem,
    StreamDigest,
};
use ic_proxy_cluster_tests::{
    footprint, signal_process, socket_files, wait_for_exit, wait_until, Footprint, PgCluster,
    PgInstance,
};
use tokio::time::MissedTickBehavior;

/// Instances in the cluster: dbid 1 (coordinator) to 4.
const N: usize = 4;
/// The instances the faults strike; dbids 1 and 2 are never touched.
const FAULTED: [u16; 2] = [3, 4];
/// Logical connections per ordered pair of instances: 4 x 16 pairs = 64
/// at once (16 between dbids 1 and 2 for the whole test, 48 through dbid 3
/// or 4 in each round of faults).
const PER_PAIR: u32 = 4;
/// Rounds of faults; see [`inject`].
const ROUNDS: usize = 3;
/// Map reloads per instance.
const RELOADS: usize = 100;
/// The entry the changed reloads add and remove: no such instance exists;
/// its content is above every other, so the others wait for it to dial.
const PHANTOM_DBID: u16 = 9;
const PHANTOM_CONTENT: i16 = 8;

/// One batch of packets per tick on each loaded connection: slow enough for
/// 64 connections to share two cores with four servers, steady enough to
/// have packets in flight whenever a fault strikes.
const TICK: Duration = Duration::from_millis(20);
/// The largest ic-tcp payload (gp_max_packet_size 8192 minus the length field).
const MAX_PAYLOAD: u64 = 8188;
const MESH_TIMEOUT: Duration = Duration::from_secs(30);
/// A cut connection must have ended on both ends within this after its fault.
const CUT_DEADLINE: Duration = Duration::from_secs(15);
/// Every connection, cut or not, must have ended within this after the load stops.
const END_DEADLINE: Duration = Duration::from_secs(30);
/// Packets of each connection of [`check_every_pair`].
const CHECK_PACKETS: u64 = 100;
/// Resident memory a worker may have grown by, across the whole test. The
/// allocator keeps some of what a load needed, and each link reader's route
/// cache keeps closed sessions until it holds 4096 of them: measured here,
/// +2 to 3 MB for the ~290 connections this test puts through a worker, and
/// a plateau near +30 MB after 14,000 (a leak grows without end). A leak
/// of one read buffer per connection would add 14 MB here.
const RSS_SLACK_KIB: u64 = 6 * 1024;

/// One instance as a backend sees it.
#[derive(Clone, Debug)]
struct Backend {
    dbid: u16,
    content: i16,
    socket: PathBuf,
}

fn backends(cluster: &PgCluster) -> Vec<Backend> {
    cluster
        .members()
        .iter()
        .map(|m| Backend {
            dbid: m.dbid,
            content: m.content,
            socket: ic_proxy_client::socket_path(
                &m.instance.socket_dir(),
                m.instance.port(),
                m.instance.postmaster_pid().expect("the instance runs"),
            ),
        })
        .collect()
}

/// One logical connection: who sends, who receives, and the data's seed.
#[derive(Clone, Debug)]
struct Plan {
    session: i32,
    id: u32,
    /// The backends' pids are 10,000,000 and 20,000,000 plus this.
    pids: i32,
    from: Backend,
    to: Backend,
}

impl Plan {
    fn seed(&self) -> u64 {
        (u64::from(self.session as u32) << 32) | u64::from(self.id)
    }

    /// The sender's key; the receiver uses it reversed.
    fn spec(&self) -> ConnSpec {
        let pid = self.pids;
        ConnSpec {
            session_id: self.session,
            command_id: self.id,
            send_slice: 1,
            recv_slice: 0,
            local: Endpoint {
                content: self.from.content,
                dbid: self.from.dbid,
                pid: 10_000_000 + pid,
            },
            remote: Endpoint {
                content: self.to.content,
                dbid: self.to.dbid,
                pid: 20_000_000 + pid,
            },
        }
    }

    fn faulted(&self) -> bool {
        FAULTED.contains(&self.from.dbid) || FAULTED.contains(&self.to.dbid)
    }
}

/// `per_pair` connections on every ordered pair of `nodes`, self included.
fn plans(nodes: &[Backend], session: i32, per_pair: u32) -> Vec<Plan> {
    let mut plans = Vec::new();
    for from in nodes {
        for to in nodes {
            for _ in 0..per_pair {
                let id = plans.len() as u32;
                plans.push(Plan {
                    session,
                    id,
                    // Pids differ between sessions, as real backends' do:
                    // the proxy's key, like the C proxy's, leaves the
                    // session id out.
                    pids: session * 100 + id as i32,
                    from: from.clone(),
                    to: to.clone(),
                });
            }
        }
    }
    plans
}

/// Payload length of packet `index`, 1..=MAX_PAYLOAD, spread over the range
/// so the proxy both merges small packets and carries full ones.
fn packet_len(seed: u64, index: u64) -> usize {
    let mut word = [0u8; 8];
    fill_pattern(!seed, index, &mut word);
    1 + (u64::from_le_bytes(word) % MAX_PAYLOAD) as usize
}

/// How one end of a logical connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Sender: finished, then read the receiver's BYE. Receiver: clean end
    /// of stream after the last whole packet.
    Clean,
    /// Sender: end of stream from its proxy before it had finished.
    Eof,
    Error(String),
}

#[derive(Debug)]
struct SideReport {
    end: End,
    packets: u64,
    digest: StreamDigest,
    at: Instant,
    /// Receiver: the first packet that was not the one sent at its place.
    corrupt: Option<String>,
}

impl SideReport {
    fn new(end: End, packets: u64, digest: StreamDigest) -> SideReport {
        SideReport {
            end,
            packets,
            digest,
            at: Instant::now(),
            corrupt: None,
        }
    }
}

/// How a sender sends: a batch of 1 to 3 packets per `pace` tick (or as
/// fast as it can), until `stop` is set or `max_packets` are sent.
#[derive(Clone)]
struct Load {
    pace: Option<Duration>,
    max_packets: u64,
    stop: Arc<AtomicBool>,
}

async fn send_side(plan: Plan, load: Load) -> SideReport {
    let seed = plan.seed();
    let mut digest = StreamDigest::new();
    let mut packets = 0u64;
    let conn = match LogicalConn::connect(&plan.from.socket, plan.spec(), &ClientOptions::default())
        .await
    {
        Ok(c) => c,
        Err(e) => return SideReport::new(End::Error(format!("connect: {e}")), 0, digest),
    };
    let (mut out, mut incoming) = conn.into_split();
    // The receiver sends nothing but its BYE; anything before it is the end.
    let remote_end = async move {
        loop {
            match incoming.recv().await {
                Ok(RecvItem::Packet(_) | RecvItem::Stop) => {}
                Ok(RecvItem::Eof) => return End::Eof,
                Err(e) => return End::Error(e.to_string()),
            }
        }
    };
    tokio::pin!(remote_end);
    let mut tick = load.pace.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    while !load.stop.load(Relaxed) && packets < load.max_packets {
        if let Some(t) = tick.as_mut() {
            tokio::select! {
                end = &mut remote_end => return SideReport::new(end, packets, digest),
                _ = t.tick() => {}
            }
        }
        let n = (1 + packets % 3).min(load.max_packets - packets);
        let batch: Vec<Vec<u8>> = (packets..packets + n)
            .map(|i| pattern_payload(seed, i, packet_len(seed, i)))
            .collect();
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        tokio::select! {
            end = &mut remote_end => return SideReport::new(end, packets, digest),
            written = out.send_packets(&refs) => if let Err(e) = written {
                return SideReport::new(End::Error(e.to_string()), packets, digest);
            }
        }
        for p in &batch {
            digest.update(p);
        }
        packets += n;
    }
    if let Err(e) = out.finish().await {
        return SideReport::new(End::Error(format!("finish: {e}")), packets, digest);
    }
    let end = match remote_end.await {
        End::Eof => End::Clean,
        other => other,
    };
    SideReport::new(end, packets, digest)
}

async fn recv_side(plan: Plan, progress: Arc<AtomicU64>) -> SideReport {
    let seed = plan.seed();
    let mut digest = StreamDigest::new();
    let mut packets = 0u64;
    let spec = plan.spec().reversed();
    let mut conn =
        match LogicalConn::connect(&plan.to.socket, spec, &ClientOptions::default()).await {
            Ok(c) => c,
            Err(e) => return SideReport::new(End::Error(format!("connect: {e}")), 0, digest),
        };
    let mut expected = Vec::new();
    let end = loop {
        match conn.recv().await {
            Ok(RecvItem::Packet(p)) => {
                // Every packet is checked where it arrives, so even a cut
                // connection proves it delivered an intact prefix.
                expected.resize(packet_len(seed, packets), 0);
                fill_pattern(seed, packets, &mut expected);
                if p[..] != expected[..] {
                    let mut r =
                        SideReport::new(End::Error("corrupt packet".into()), packets, digest);
                    r.corrupt = Some(format!(
                        "packet {packets}: {} bytes, not the {} bytes sent at that place",
                        p.len(),
                        expected.len()
                    ));
                    return r;
                }
                digest.update(&p);
                packets += 1;
                progress.store(packets, Relaxed);
            }
            Ok(RecvItem::Eof) => break End::Clean,
            Ok(RecvItem::Stop) => break End::Error("unexpected STOP".into()),
            Err(e) => break End::Error(e.to_string()),
        }
    };
    if end == End::Clean {
        // Our BYE tells the sender we are done; on a cut connection this
        // may fail, which changes nothing.
        let _ = conn.finish().await;
    }
    SideReport::new(end, packets, digest)
}

/// Runs both ends of every plan on `rt`; the handles yield (sender, receiver).
fn spawn_all(
    rt: &tokio::runtime::Runtime,
    plans: &[Plan],
    load: &Load,
    progress: &[Arc<AtomicU64>],
) -> Vec<tokio::task::JoinHandle<(SideReport, SideReport)>> {
    plans
        .iter()
        .zip(progress)
        .map(|(p, prog)| {
            let send = send_side(p.clone(), load.clone());
            let recv = recv_side(p.clone(), prog.clone());
            rt.spawn(async move { tokio::join!(send, recv) })
        })
        .collect()
}

/// Waits for every handle, bounded by `deadline`; a connection still open
/// then is a hang.
fn collect(
    rt: &tokio::runtime::Runtime,
    handles: Vec<tokio::task::JoinHandle<(SideReport, SideReport)>>,
    deadline: Duration,
) -> Vec<(SideReport, SideReport)> {
    rt.block_on(async {
        let until = tokio::time::Instant::now() + deadline;
        let mut out = Vec::new();
        for (i, h) in handles.into_iter().enumerate() {
            match tokio::time::timeout_at(until, h).await {
                Ok(r) => out.push(r.expect("connection task")),
                Err(_) => panic!(
                    "logical connection {i} still open {deadline:?} after the load stopped: a hang"
                ),
            }
        }
        out
    })
}

/// Short, unpaced connections, [`PER_PAIR`] on every ordered pair at once;
/// each must arrive whole.
fn check_every_pair(rt: &tokio::runtime::Runtime, nodes: &[Backend], session: i32) -> u64 {
    let plans = plans(nodes, session, PER_PAIR);
    let progress: Vec<_> = plans.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let load = Load {
        pace: None,
        max_packets: CHECK_PACKETS,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let handles = spawn_all(rt, &plans, &load, &progress);
    let mut bytes = 0;
    for (plan, (s, r)) in plans.iter().zip(collect(rt, handles, END_DEADLINE)) {
        let what = format!("dbid {} -> dbid {}", plan.from.dbid, plan.to.dbid);
        assert_eq!(r.corrupt, None, "{what}");
        assert_eq!((&s.end, &r.end), (&End::Clean, &End::Clean), "{what}");
        assert_eq!((s.packets, s.digest), (r.packets, r.digest), "{what}");
        assert_eq!(r.packets, CHECK_PACKETS, "{what}");
        bytes += r.digest.bytes();
    }
    bytes
}

/// Waits until the instance's proxy has every real instance (dbids 1..=n)
/// as self or connected; a phantom entry may come and go meanwhile.
fn wait_linked(i: &PgInstance, n: usize, timeout: Duration) -> Result<(), String> {
    let sql = format!(
        "SELECT count(*) FROM ic_proxy_status() WHERE dbid <= {n} AND state IN ('self', 'connected')"
    );
    let mut last = String::new();
    wait_until("every real peer connected", timeout, || {
        last = i.psql(&sql).unwrap_or_else(|e| e);
        (last == n.to_string()).then_some(())
    })
    .map_err(|e| format!("{e}: {last}"))
}

/// What an idle worker holds, and the socket files next to it.
#[derive(Debug)]
struct Idle {
    worker: u32,
    footprint: Footprint,
    sockets: Vec<PathBuf>,
    /// `early_cache_bytes|early_dropped_connections` of `ic_proxy_info()`.
    early_cache: String,
}

/// Once the instance's proxy has no logical connection left: its worker's
/// footprint and the socket files in the instance's socket directory.
fn idle_state(i: &PgInstance) -> Idle {
    let mut last = String::new();
    let early_cache = wait_until("no logical connection left", MESH_TIMEOUT, || {
        last = i
            .psql(
                "SELECT logical_connections || '|' || early_cache_bytes || '|' || \
                 early_dropped_connections FROM ic_proxy_info() WHERE running",
            )
            .unwrap_or_else(|e| e);
        last.strip_prefix("0|").map(str::to_string)
    })
    .unwrap_or_else(|e| panic!("{e}: logical_connections|early cache {last}"));
    let worker = i.proxy_worker_pid().expect("a running worker");
    Idle {
        worker,
        footprint: footprint(worker).expect("the worker's footprint"),
        sockets: socket_files(&i.socket_dir()),
        early_cache,
    }
}

/// Sets its flag when dropped, by a failing test's unwinding too.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

/// One instance's 100 reloads, alternating: add the phantom entry, reload
/// unchanged, remove it, reload unchanged. After each change it waits until
/// the worker shows the new map, so no two changes merge into one. Retries
/// while the instance is down (it is being restarted). Returns (changed,
/// unchanged) reloads done.
fn reload_many(
    cluster: &RwLock<PgCluster>,
    dbid: u16,
    plain: &str,
    with_phantom: &str,
    done: &AtomicUsize,
    abandon: &AtomicBool,
) -> Result<(usize, usize), String> {
    let (mut changed, mut unchanged) = (0, 0);
    for step in 0..RELOADS {
        if abandon.load(Relaxed) {
            return Err(format!("abandoned at reload {step}: the test failed"));
        }
        let (sql, rows) = match step % 4 {
            0 => (
                format!("ALTER SYSTEM SET ic_proxy.addresses = '{with_phantom}';\nSELECT pg_reload_conf();"),
                Some(N + 1),
            ),
            2 => (
                format!("ALTER SYSTEM SET ic_proxy.addresses = '{plain}';\nSELECT pg_reload_conf();"),
                Some(N),
            ),
            _ => ("SELECT pg_reload_conf();".to_string(), None),
        };
        let psql = |sql: &str| cluster.read().instance(dbid).psql(sql);
        let mut last = String::new();
        wait_until(
            &format!("reload {step} on dbid {dbid}"),
            MESH_TIMEOUT,
            || psql(&sql).map_err(|e| last = e).ok(),
        )
        .map_err(|e| format!("{e}: {last}"))?;
        match rows {
            Some(rows) => {
                wait_until(
                    &format!("dbid {dbid}'s worker applying reload {step}"),
                    MESH_TIMEOUT,
                    || {
                        last = psql(
                            "SELECT count(*) FROM ic_proxy_status() WHERE state <> 'not running'",
                        )
                        .unwrap_or_else(|e| e);
                        (last == rows.to_string()).then_some(())
                    },
                )
                .map_err(|e| format!("{e}: {last}"))?;
                changed += 1;
            }
            None => unchanged += 1,
        }
        done.fetch_add(1, Relaxed);
    }
    Ok((changed, unchanged))
}

/// SIGKILLs the instance's worker and waits for its replacement; returns
/// when the fault struck. The postmaster treats the death as a crash and
/// restarts every process of the instance, the worker with them.
fn kill_worker(cluster: &RwLock<PgCluster>, dbid: u16) -> Instant {
    let worker = || cluster.read().instance(dbid).proxy_worker_pid();
    let old = worker().expect("a running worker");
    // Taken first: the ends of the connections it cuts may be seen before
    // this thread runs again after kill(2).
    let at = Instant::now();
    signal_process(old, libc::SIGKILL).unwrap();
    wait_for_exit(&[old], MESH_TIMEOUT).unwrap();
    wait_until(
        &format!("a new worker on dbid {dbid}"),
        MESH_TIMEOUT,
        || worker().filter(|p| *p != old),
    )
    .unwrap();
    at
}

/// Stops the instance (`pg_ctl stop -m fast`: its worker ends every
/// connection it serves) and waits until dbid 1 sees the link gone;
/// returns when the stop began.
fn stop_instance(cluster: &RwLock<PgCluster>, dbid: u16) -> Instant {
    let at = Instant::now();
    cluster.write().instance_mut(dbid).stop().unwrap();
    let mut last = String::new();
    wait_until(
        &format!("dbid 1 sees dbid {dbid} gone"),
        MESH_TIMEOUT,
        || {
            last = cluster
                .read()
                .instance(1)
                .psql(&format!(
                    "SELECT state FROM ic_proxy_status() WHERE dbid = {dbid}"
                ))
                .unwrap_or_else(|e| e);
            (last == "down" || last == "connecting").then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {last}"));
    at
}

fn start_instance(cluster: &RwLock<PgCluster>, dbid: u16) {
    cluster.write().instance_mut(dbid).start().unwrap();
}

fn wait_all_linked(cluster: &RwLock<PgCluster>, after: &str) {
    let cluster = cluster.read();
    for m in cluster.members() {
        wait_linked(&m.instance, cluster.members().len(), MESH_TIMEOUT)
            .unwrap_or_else(|e| panic!("after {after}, dbid {}: {e}", m.dbid));
    }
}

/// Round `round`'s faults, each after the mesh has healed from the one
/// before, except in the last round where they overlap. Returns when each
/// faulted instance was struck first, and what was done.
fn inject(cluster: &RwLock<PgCluster>, round: usize) -> ([Option<Instant>; N + 1], String) {
    let mut at = [None; N + 1];
    let (a, b) = (FAULTED[round % 2], FAULTED[(round + 1) % 2]);
    let what = if round + 1 < ROUNDS {
        at[a as usize] = Some(kill_worker(cluster, a));
        wait_all_linked(cluster, &format!("the kill of dbid {a}'s worker"));
        at[b as usize] = Some(stop_instance(cluster, b));
        start_instance(cluster, b);
        format!("SIGKILL of dbid {a}'s worker, then stop + start of dbid {b}")
    } else {
        at[b as usize] = Some(stop_instance(cluster, b));
        at[a as usize] = Some(kill_worker(cluster, a));
        start_instance(cluster, b);
        format!(
            "stop of dbid {b}, SIGKILL of dbid {a}'s worker while it is down, start of dbid {b}"
        )
    };
    wait_all_linked(cluster, &what);
    (at, what)
}

/// The backends on every instance as they are now (a restarted instance
/// has a new postmaster pid, so a new socket name).
fn backends_now(cluster: &RwLock<PgCluster>) -> Vec<Backend> {
    backends(&cluster.read())
}

#[test]
fn connections_survive_or_end_cleanly_through_kills_restarts_and_reloads() {
    let started = Instant::now();
    let (cluster, map) = PgCluster::start_mesh(N, MESH_TIMEOUT).expect("the mesh");
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let with_phantom = format!("{map},{PHANTOM_DBID}:{PHANTOM_CONTENT}:127.0.0.1:{free_port}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Every pair works, and the workers have carried 64 connections at
    // once, so the baseline is what an idle worker holds after a load of
    // that size (the allocator keeps some of what such a load needed).
    let mut bytes_checked = check_every_pair(&rt, &backends(&cluster), 6999);
    let before: Vec<Idle> = cluster
        .members()
        .iter()
        .map(|m| idle_state(&m.instance))
        .collect();

    // The survivors: 16 paced connections between dbids 1 and 2 (and each
    // with itself) for the whole test, until `stop`.
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load {
        pace: Some(TICK),
        max_packets: u64::MAX,
        stop: stop.clone(),
    };
    let survivors: Vec<Plan> = plans(&backends(&cluster), 7000, PER_PAIR)
        .into_iter()
        .filter(|p| !p.faulted())
        .collect();
    let survivor_progress: Vec<_> = survivors
        .iter()
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let survivor_handles = spawn_all(&rt, &survivors, &load, &survivor_progress);

    let cluster = RwLock::new(cluster);
    let (mut cut, mut slowest_cut, mut faults) = (0usize, Duration::ZERO, Vec::new());
    let (reloads_done, abandon) = (AtomicUsize::new(0), AtomicBool::new(false));
    let reload_window = thread::scope(|s| {
        let reloaders: Vec<_> = (1..=N as u16)
            .map(|dbid| {
                let (cluster, map, with_phantom, done, abandon) =
                    (&cluster, &map, &with_phantom, &reloads_done, &abandon);
                s.spawn(move || reload_many(cluster, dbid, map, with_phantom, done, abandon))
            })
            .collect();
        // A failure below must not leave the scope waiting for 400 reloads.
        let _abandon_on_failure = SetOnDrop(&abandon);
        let reloads_began = started.elapsed();

        for round in 0..ROUNDS {
            // The rounds spread over the reloads: round r strikes once r
            // thirds of them are done.
            let due = round * N * RELOADS / ROUNDS;
            wait_until("the reloads of this round's share", MESH_TIMEOUT, || {
                (reloads_done.load(Relaxed) >= due).then_some(())
            })
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
            // A fresh wave through dbids 3 and 4: with the survivors, 64
            // connections at once, all carrying data when the faults strike.
            let wave: Vec<Plan> = plans(&backends_now(&cluster), 7100 + round as i32, PER_PAIR)
                .into_iter()
                .filter(Plan::faulted)
                .collect();
            assert_eq!(wave.len() + survivors.len(), 64);
            let progress: Vec<_> = wave.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
            let handles = spawn_all(&rt, &wave, &load, &progress);
            wait_until("data on every connection", MESH_TIMEOUT, || {
                progress
                    .iter()
                    .chain(&survivor_progress)
                    .all(|p| p.load(Relaxed) >= 5)
                    .then_some(())
            })
            .unwrap_or_else(|e| panic!("round {round}: {e}"));

            let (fault_at, what) = inject(&cluster, round);
            faults.push(what);
            for (plan, (s, r)) in wave.iter().zip(collect(&rt, handles, CUT_DEADLINE)) {
                let what = format!(
                    "round {round}: connection {} dbid {} -> dbid {} (sender {:?}, receiver {:?})",
                    plan.id, plan.from.dbid, plan.to.dbid, s.end, r.end
                );
                assert_eq!(r.corrupt, None, "{what}: a byte changed or moved");
                // Cut by the first fault on its way and by nothing before it
                // (a fault elsewhere, a reload); ended on both ends soon after.
                assert_ne!(s.end, End::Clean, "{what}: not cut by the fault");
                assert!(
                    r.packets <= s.packets + 3,
                    "{what}: received more than sent"
                );
                let fault = [plan.from.dbid, plan.to.dbid]
                    .iter()
                    .filter_map(|d| fault_at[*d as usize])
                    .min()
                    .expect("a faulted instance on its way");
                let first_end = s.at.min(r.at);
                assert!(
                    first_end >= fault,
                    "{what}: ended {:?} before the fault on its way",
                    fault - first_end
                );
                let took = s.at.max(r.at) - fault;
                assert!(
                    took <= CUT_DEADLINE,
                    "{what}: ended {took:?} after its fault"
                );
                slowest_cut = slowest_cut.max(took);
                bytes_checked += r.digest.bytes();
                cut += 1;
            }
        }
        let faults_done = started.elapsed();

        let (changed, unchanged) = reloaders.into_iter().fold((0, 0), |(c, u), r| {
            let (rc, ru) = r.join().unwrap().unwrap_or_else(|e| panic!("reloads: {e}"));
            (c + rc, u + ru)
        });
        (
            changed,
            unchanged,
            reloads_began,
            faults_done,
            started.elapsed(),
        )
    });
    let (reloads_changed, reloads_unchanged, reloads_began, faults_done, reloads_done) =
        reload_window;
    let cluster = cluster.into_inner();

    // The survivors still flow after all of it; then the load stops.
    let seen: Vec<u64> = survivor_progress.iter().map(|p| p.load(Relaxed)).collect();
    wait_until("the survivors still flowing", MESH_TIMEOUT, || {
        survivor_progress
            .iter()
            .zip(&seen)
            .all(|(p, seen)| p.load(Relaxed) >= seen + 5)
            .then_some(())
    })
    .expect("survivors flowing");
    stop.store(true, Relaxed);
    let mut survivor_bytes = 0u64;
    for (plan, (s, r)) in survivors
        .iter()
        .zip(collect(&rt, survivor_handles, END_DEADLINE))
    {
        let what = format!(
            "connection {} dbid {} -> dbid {} (sender {:?}, receiver {:?})",
            plan.id, plan.from.dbid, plan.to.dbid, s.end, r.end
        );
        assert_eq!(r.corrupt, None, "{what}: a byte changed or moved");
        assert_eq!((&s.end, &r.end), (&End::Clean, &End::Clean), "{what}");
        assert_eq!(s.packets, r.packets, "{what}: packets lost");
        assert_eq!(s.digest, r.digest, "{what}: bytes lost or reordered");
        survivor_bytes += r.digest.bytes();
    }
    bytes_checked += survivor_bytes;

    // The reloads and the faults left the link between the survivors alone.
    for (me, peer) in [(1, 2), (2, 1)] {
        let reconnects = cluster
            .instance(me)
            .psql(&format!(
                "SELECT reconnects FROM ic_proxy_status() WHERE dbid = {peer}"
            ))
            .unwrap();
        assert_eq!(reconnects, "0", "dbid {me}'s link to dbid {peer} was cut");
    }

    // Every pair works again, through the restarted instances too.
    bytes_checked += check_every_pair(&rt, &backends(&cluster), 7001);

    // Nothing leaked: once idle, each worker (a new process on dbids 3 and 4)
    // holds what the idle worker held before the load.
    let mut leaks = Vec::new();
    let mut table = Vec::new();
    for (m, b) in cluster.members().iter().zip(&before) {
        let mut after = idle_state(&m.instance);
        // Sockets of ended connections close a moment after the count drops.
        let _ = wait_until(
            "descriptors back to the baseline",
            Duration::from_secs(10),
            || {
                after.footprint = footprint(after.worker).ok()?;
                (after.footprint.fds <= b.footprint.fds).then_some(())
            },
        );
        if after.footprint.fds > b.footprint.fds {
            leaks.push(format!(
                "dbid {}: {} fds, {} before",
                m.dbid, after.footprint.fds, b.footprint.fds
            ));
        }
        if after.sockets.len() != b.sockets.len() {
            leaks.push(format!(
                "dbid {}: socket files {:?}, before {:?}",
                m.dbid, after.sockets, b.sockets
            ));
        }
        if after.footprint.rss_kib > b.footprint.rss_kib + RSS_SLACK_KIB {
            leaks.push(format!(
                "dbid {}: RSS {} kB, {} kB before",
                m.dbid, after.footprint.rss_kib, b.footprint.rss_kib
            ));
        }
        table.push(format!(
            "dbid {}: worker {} -> {}, fds {} -> {}, socket files {} -> {}, RSS {} kB -> {} kB, \
             early cache bytes|dropped connections {} -> {}",
            m.dbid,
            b.worker,
            after.worker,
            b.footprint.fds,
            after.footprint.fds,
            b.sockets.len(),
            after.sockets.len(),
            b.footprint.rss_kib,
            after.footprint.rss_kib,
            b.early_cache,
            after.early_cache
        ));
        let log = m.instance.log();
        assert!(
            !log.contains("panicked"),
            "dbid {}: a panic in the log:\n{log}",
            m.dbid
        );
    }

    println!(
        "chaos: {} logical connections: {} between untouched instances for the whole test, \
         {cut} through a faulted one ({} per round, 64 at once)",
        survivors.len() + cut,
        survivors.len(),
        cut / ROUNDS
    );
    println!(
        "chaos: {bytes_checked} bytes checked packet by packet ({survivor_bytes} on the survivors, \
         also by digest and packet count); 128 more connections before and after"
    );
    for (round, f) in faults.iter().enumerate() {
        println!("chaos: faults, round {round}: {f}");
    }
    println!("chaos: slowest cut connection ended on both ends {slowest_cut:?} after its fault");
    println!(
        "chaos: reloads: {} ({reloads_changed} changed, {reloads_unchanged} unchanged) over {N} \
         instances, from {reloads_began:?} to {reloads_done:?}; faults until {faults_done:?}",
        reloads_changed + reloads_unchanged
    );
    for line in &table {
        println!("chaos: {line}");
    }
    println!(
        "chaos: leaks: {} {leaks:?}; {:?} in all",
        leaks.len(),
        started.elapsed()
    );
    assert!(leaks.is_empty(), "leaks: {leaks:#?}");
    assert_eq!(reloads_changed + reloads_unchanged, N * RELOADS);
}

/// A connection cut by a lost link must leave nothing for the next link:
/// the BYEs the ended sessions still send belong to the old link's
/// generation and are dropped, instead of waiting for the next link, landing
/// in the restarted peer's early-packet cache and ending the next connection
/// with the same key (the key, like the C proxy's, leaves out the session
/// id) before it delivered anything.
#[test]
fn a_cut_connection_leaves_nothing_for_the_next_link() {
    let (cluster, _) = PgCluster::start_mesh(2, MESH_TIMEOUT).expect("the mesh");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let nodes = backends(&cluster);
    let cut = Plan {
        session: 1,
        id: 0,
        pids: 42,
        from: nodes[0].clone(),
        to: nodes[1].clone(),
    };
    let progress = [Arc::new(AtomicU64::new(0))];
    let load = Load {
        pace: Some(TICK),
        max_packets: u64::MAX,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let handles = spawn_all(&rt, std::slice::from_ref(&cut), &load, &progress);
    wait_until("data flowing", MESH_TIMEOUT, || {
        (progress[0].load(Relaxed) >= 5).then_some(())
    })
    .unwrap();
    let cluster = RwLock::new(cluster);
    kill_worker(&cluster, 2);
    wait_all_linked(&cluster, "the kill of dbid 2's worker");
    let (s, _) = collect(&rt, handles, CUT_DEADLINE).pop().unwrap();
    assert_ne!(s.end, End::Clean, "the kill did not cut the connection");

    // The next statement: the same backends and command, another session.
    let next = Plan {
        session: 2,
        to: backends_now(&cluster)[1].clone(),
        ..cut
    };
    let load = Load {
        pace: None,
        max_packets: 50,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let handles = spawn_all(&rt, &[next], &load, &progress);
    let (s, r) = collect(&rt, handles, END_DEADLINE).pop().unwrap();
    assert_eq!((&s.end, &r.end, r.packets), (&End::Clean, &End::Clean, 50));
    assert_eq!(s.digest, r.digest);
    let early = cluster
        .read()
        .instance(2)
        .psql("SELECT early_cache_bytes || '|' || early_dropped_connections FROM ic_proxy_info()")
        .unwrap();
    assert_eq!(
        early, "0|0",
        "early_cache_bytes|early_dropped_connections on dbid 2"
    );
}
