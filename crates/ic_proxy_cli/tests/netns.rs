//! Network faults between real `ic-proxy run` processes on three "hosts":
//! network namespaces whose `eth0` is one end of a veth pair, the other end
//! a port of a bridge in a fourth namespace (the switch). Addresses are
//! 10.213.7.1-3/24 and exist only inside namespaces this test creates;
//! nothing is sent anywhere else. The backends (`ic_proxy_client`) run in
//! the test process: a Unix socket's path is not part of a network
//! namespace, so they reach every host's proxy from here.
//!
//! Faults: a bandwidth limit (tbf, 10 mbit) on one host; latency from a
//! user-space TCP relay inserted between hosts 3 and 1 through host 3's map
//! (every byte held 50 ms each way, then also stalls of 1 s at random
//! moments), because this kernel has no `sch_netem`; a cable pulled for 3 s
//! (TCP retransmits, the proxies never notice); a cable pulled until TCP
//! gives up (the hosts' `net.ipv4.tcp_retries2` lowered to 4: 6 to 9 s):
//! both proxies lose the link and end its connections, and they link again
//! once the cable is back.
//!
//! Needs root (namespaces, veth, tc). Without the permission it passes with
//! a "skipped" message. Every namespace, and with them every link, is
//! deleted when the test ends, also when it fails.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};

use ic_proxy_core::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use ic_proxy_client::{
    pattern_payload, ClientOptions, ConnSpec, Endpoint, LogicalConn, RecvItem, StreamDigest,
};

const BIN: &str = env!("CARGO_BIN_EXE_ic-proxy");
/// Bound on every wait; generous because other builds share the 2 cores.
const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

/// The hosts' subnet, private to the namespaces of this test.
const SUBNET: &str = "10.213.7";
/// Peer port of every proxy. Fixed ports are safe here: each host is a
/// namespace of its own that nothing else can bind in.
const PEER_PORT: u16 = 7000;
/// Where the relay listens on host 3 (for host 1's proxy).
const RELAY_PORT: u16 = 7001;
/// The relay's one-way delay, and a stall's length.
const RELAY_DELAY: Duration = Duration::from_millis(50);
const STALL: Duration = Duration::from_secs(1);
/// The bandwidth limit, in bits per second (`tc ... tbf rate 10mbit`).
const LIMIT_BPS: f64 = 10e6;

/// Host k is dbid k with content k - 2: host 1 is the coordinator.
const HOSTS: [u16; 3] = [1, 2, 3];

fn content(dbid: u16) -> i16 {
    dbid as i16 - 2
}

fn addr(dbid: u16) -> String {
    format!("{SUBNET}.{dbid}")
}

/// Runs a command to completion; Err carries its output.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Polls `probe` every 20 ms until it gives Some, for at most `within`.
fn wait_for<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {within:?} waiting for {what}"
        );
        thread::sleep(POLL);
    }
}

// ---- the lab: namespaces, links, proxies -----------------------------------------

/// One `ic-proxy run` inside a host's namespace, its stderr in a file.
struct HostProxy {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl HostProxy {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HostProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The three hosts and the switch. Dropping it stops the proxies and relays
/// and deletes every namespace it created, which deletes their links.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    dir: tempfile::TempDir,
    proxies: Vec<HostProxy>,
    relays: Vec<Relay>,
    /// One lab at a time: the tests of this file run in parallel threads,
    /// and two labs would race for the CPU their timings depend on.
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static LABS: Mutex<()> = Mutex::new(());
static LAB_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Drop for Lab {
    fn drop(&mut self) {
        self.relays.clear();
        self.proxies.clear();
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = run("ip", &["netns", "del", &ns]) {
                eprintln!("netns: cleanup: {e}");
            }
        }
    }
}

/// Why the lab cannot be built here: the test is skipped, not failed.
struct Skip(String);

impl Lab {
    fn ns(&self, dbid: u16) -> String {
        format!("{}-h{dbid}", self.prefix)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// `ip -n <ns> args...`
    fn ip(&self, ns: &str, args: &[&str]) {
        self.try_ip(ns, args).unwrap_or_else(|e| panic!("{e}"));
    }

    fn try_ip(&self, ns: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        run("ip", &all).map(drop)
    }

    fn tc(&self, ns: &str, args: &[&str]) {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        run("tc", &all).unwrap_or_else(|e| panic!("{e}"));
    }

    fn add_namespace(&mut self, name: String) -> Result<(), String> {
        run("ip", &["netns", "add", &name])?;
        self.namespaces.push(name);
        Ok(())
    }

    /// Builds the switch and the three hosts, each host's cable plugged in.
    fn build() -> Result<Lab, Skip> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Skip(
                "not root: network namespaces need CAP_SYS_ADMIN".into(),
            ));
        }
        let one_at_a_time = LABS.lock();
        remove_stale_namespaces();
        let seq = LAB_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut lab = Lab {
            // The pid first: remove_stale_namespaces reads it back.
            prefix: format!("icpx{}-{seq}", std::process::id()),
            namespaces: Vec::new(),
            dir: tempfile::tempdir().map_err(|e| Skip(format!("tempdir: {e}")))?,
            proxies: Vec::new(),
            relays: Vec::new(),
            _one_at_a_time: one_at_a_time,
        };
        lab.add_namespace(lab.switch())
            .map_err(|e| Skip(format!("cannot create a network namespace: {e}")))?;
        let sw = lab.switch();
        let cannot = |e: String| Skip(format!("cannot build the hosts: {e}"));
        lab.try_ip(&sw, &["link", "add", "br0", "type", "bridge"])
            .map_err(cannot)?;
        lab.try_ip(&sw, &["link", "set", "br0", "up"])
            .map_err(cannot)?;
        for dbid in HOSTS {
            lab.add_host(dbid).map_err(cannot)?;
        }
        Ok(lab)
    }

    /// Host `dbid`'s namespace, cabled to the switch.
    fn add_host(&mut self, dbid: u16) -> Result<(), String> {
        let (ns, sw) = (self.ns(dbid), self.switch());
        self.add_namespace(ns.clone())?;
        let port = format!("p{dbid}");
        // Created in the switch, the peer moved into the host at once:
        // nothing ever appears in the namespace this test runs in.
        self.try_ip(
            &sw,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        self.try_ip(&sw, &["link", "set", &port, "master", "br0", "up"])?;
        // A host keeps its network card's address across reboots; so does
        // this one, or its neighbours would keep sending to a stale one.
        self.try_ip(
            &ns,
            &[
                "link",
                "set",
                "eth0",
                "address",
                &format!("02:00:0a:d5:07:{dbid:02x}"),
            ],
        )?;
        self.try_ip(
            &ns,
            &["addr", "add", &format!("{}/24", addr(dbid)), "dev", "eth0"],
        )?;
        self.try_ip(&ns, &["link", "set", "eth0", "up"])?;
        self.try_ip(&ns, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A host that dies and boots again while its cable is out: its proxy
    /// is killed, its namespace (its kernel's sockets, its links) deleted
    /// and made anew, so no FIN or RST ever reaches the others; then it is
    /// cabled again and its proxy started with `map`.
    fn reboot_host(&mut self, dbid: u16, map: &str) {
        self.cable(dbid, false);
        let i = usize::from(dbid) - 1;
        let _ = self.proxies[i].child.kill();
        let _ = self.proxies[i].child.wait();
        let ns = self.ns(dbid);
        // The namespace goes away in the background; its veth would linger
        // in the switch for a while, so that goes first.
        self.ip(&self.switch(), &["link", "del", &format!("p{dbid}")]);
        run("ip", &["netns", "del", &ns]).unwrap_or_else(|e| panic!("{e}"));
        self.namespaces.retain(|n| *n != ns);
        self.add_host(dbid).unwrap_or_else(|e| panic!("{e}"));
        self.start_proxy(dbid, map);
    }

    /// Unplugs (false) or plugs in (true) host `dbid`'s cable at the switch:
    /// the host itself sees its carrier go.
    fn cable(&self, dbid: u16, plugged: bool) {
        let state = if plugged { "up" } else { "down" };
        self.ip(&self.switch(), &["link", "set", &format!("p{dbid}"), state]);
    }

    /// A sysctl inside every host.
    fn sysctl_all(&self, setting: &str) {
        for dbid in HOSTS {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.ns(dbid),
                    "sysctl",
                    "-q",
                    "-w",
                    setting,
                ],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Starts host `dbid`'s proxy with `map` and waits for its socket.
    fn start_proxy(&mut self, dbid: u16, map: &str) {
        let map_file = self.dir.path().join(format!("map{dbid}"));
        std::fs::write(&map_file, map).unwrap();
        // A restarted proxy appends to the same log.
        let log = self.dir.path().join(format!("proxy{dbid}.log"));
        let (port, pid) = (5000 + dbid, 40_000 + u32::from(dbid));
        let ns = self.ns(dbid);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, BIN, "run", "--addresses-file"])
            .arg(&map_file)
            .args(["--dbid", &dbid.to_string(), "--port", &port.to_string()])
            .args(["--pid", &pid.to_string(), "--socket-dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                File::options()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .expect("spawn ip netns exec ic-proxy run");
        let socket = ic_proxy_client::socket_path(self.dir.path(), port, pid);
        let proxy = HostProxy { child, socket, log };
        wait_for(&format!("host {dbid}'s proxy socket"), DEADLINE, || {
            proxy.socket.exists().then_some(())
        });
        let i = usize::from(dbid) - 1;
        if i < self.proxies.len() {
            self.proxies[i] = proxy;
        } else {
            self.proxies.push(proxy);
        }
    }

    fn proxy(&self, dbid: u16) -> &HostProxy {
        &self.proxies[usize::from(dbid) - 1]
    }

    /// How often host `dbid`'s proxy has logged a link to `peer` up or lost.
    fn link_events(&self, dbid: u16, peer: u16) -> (usize, usize) {
        let log = self.proxy(dbid).log();
        let up = format!("peer dbid {peer} (content {}) connected", content(peer));
        let lost = format!("peer dbid {peer}: link lost");
        (log.matches(&up).count(), log.matches(&lost).count())
    }

    /// Waits until host `dbid` has logged its link to `peer` up `ups` times.
    fn wait_linked(&self, dbid: u16, peer: u16, ups: usize) {
        wait_for(
            &format!("host {dbid} linked to host {peer} ({ups} times)"),
            DEADLINE,
            || (self.link_events(dbid, peer).0 >= ups).then_some(()),
        );
    }
}

/// Namespaces of an earlier run of this test that died before its cleanup,
/// and the proxies still running in them.
fn remove_stale_namespaces() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let pid = name
            .strip_prefix("icpx")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let pids = run("ip", &["netns", "pids", name]).unwrap_or_default();
                for p in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: kill(2) has no memory effects.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    }
}

/// The map host `dbid` uses: every host's address, except that with
/// `relay` host 3 reaches host 1 through the relay on its own address.
fn map_for(dbid: u16, relay: bool) -> String {
    HOSTS
        .iter()
        .map(|&d| {
            let (host, port) = if relay && dbid == 3 && d == 1 {
                (addr(3), RELAY_PORT)
            } else {
                (addr(d), PEER_PORT)
            };
            format!("{d}:{}:{host}:{port}", content(d))
        })
        .collect::<Vec<_>>()
        .join(",")
}

// ---- the latency relay --------------------------------------------------------

/// Moves the calling thread into namespace `ns`: sockets it creates from
/// now on live there (and stay there, whichever thread uses them).
fn enter_namespace(ns: &str) -> std::io::Result<()> {
    let f = File::open(format!("/var/run/netns/{ns}"))?;
    // SAFETY: setns on an fd we own; it only changes this thread's namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A TCP relay inside a host: every byte is forwarded [`RELAY_DELAY`] after
/// it arrived; with stalls on, each direction also stops for [`STALL`] at
/// random moments (0.2 to 1.2 s apart). The latency netem would add.
struct Relay {
    listener: TcpListener,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stalls_on: Arc<AtomicBool>,
    stalls: Arc<AtomicU64>,
}

impl Relay {
    fn start(ns: &str, listen: SocketAddr, upstream: SocketAddr) -> Relay {
        let (tx, rx) = mpsc::channel();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stalls_on = Arc::new(AtomicBool::new(false));
        let stalls = Arc::new(AtomicU64::new(0));
        let (ns, c, on, n) = (
            ns.to_string(),
            conns.clone(),
            stalls_on.clone(),
            stalls.clone(),
        );
        thread::spawn(move || {
            let bound = enter_namespace(&ns).and_then(|()| TcpListener::bind(listen));
            let listener = match bound {
                Ok(l) => l,
                Err(e) => return tx.send(Err(e.to_string())).unwrap(),
            };
            tx.send(Ok(listener.try_clone().unwrap())).unwrap();
            let mut seed = 0x5eed_u64;
            // Ends when Drop shuts the listener down.
            for down in listener.incoming() {
                let Ok(down) = down else { break };
                // This thread is in the host's namespace: so is this socket.
                let Ok(up) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                c.lock()
                    .extend([down.try_clone().unwrap(), up.try_clone().unwrap()]);
                for (from, to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    pipe(from, to, on.clone(), n.clone(), seed);
                }
            }
        });
        let listener = rx.recv().unwrap().unwrap_or_else(|e| panic!("relay: {e}"));
        Relay {
            listener,
            conns,
            stalls_on,
            stalls,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // SAFETY: shutdown(2) on a listening socket we own wakes its accept().
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        for c in self.conns.lock().iter() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

/// One direction of a relayed connection: a reader stamps each chunk, a
/// writer sends it once its delay (and any stall) is over.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    stalls_on: Arc<AtomicBool>,
    stalls: Arc<AtomicU64>,
    seed: u64,
) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_end = from.try_clone().unwrap();
    thread::spawn(move || loop {
        let mut buf = vec![0; 64 * 1024];
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.truncate(n);
                if tx.send((Instant::now() + RELAY_DELAY, buf)).is_err() {
                    break;
                }
            }
        }
    });
    thread::spawn(move || {
        let mut rng = seed | 1;
        let mut next_stall: Option<Instant> = None;
        for (due, chunk) in rx {
            if stalls_on.load(Relaxed) {
                let at = *next_stall.get_or_insert_with(|| Instant::now() + random_gap(&mut rng));
                if Instant::now() >= at {
                    // The stall is the fault itself, not a synchronization.
                    thread::sleep(STALL);
                    stalls.fetch_add(1, Relaxed);
                    next_stall = Some(Instant::now() + random_gap(&mut rng));
                }
            }
            // The delay is the fault itself: hold each byte RELAY_DELAY.
            thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        let _ = reader_end.shutdown(Shutdown::Read);
    });
}

/// 0.2 to 1.2 s, from a xorshift generator.
fn random_gap(x: &mut u64) -> Duration {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    Duration::from_millis(200 + *x % 1000)
}

// ---- backends -----------------------------------------------------------------

/// A fresh key each time: pids never repeat, as real backends' do not.
fn spec(from: u16, to: u16) -> ConnSpec {
    static NEXT: AtomicI32 = AtomicI32::new(1);
    let n = NEXT.fetch_add(1, Relaxed);
    ConnSpec {
        session_id: 77,
        command_id: n as u32,
        send_slice: 1,
        recv_slice: 0,
        local: Endpoint {
            content: content(from),
            dbid: from,
            pid: 100_000 + n,
        },
        remote: Endpoint {
            content: content(to),
            dbid: to,
            pid: 200_000 + n,
        },
    }
}

/// How one end of a stream ended, what it carried, and the longest wait
/// between two packets it received.
#[derive(Debug)]
struct Side {
    result: Result<(), String>,
    packets: u64,
    digest: StreamDigest,
    longest_gap: Duration,
}

/// What a sender sends: `packets` packets of `len` bytes, one per `pace`
/// (or as fast as it can), stopping early when `stop` is set. The receiver
/// counts what it got in `received`.
#[derive(Clone)]
struct Load {
    packets: u64,
    len: usize,
    pace: Option<Duration>,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
}

impl Load {
    fn bulk(packets: u64) -> Load {
        Load::paced(packets, 8188, None)
    }

    fn paced(packets: u64, len: usize, pace: Option<Duration>) -> Load {
        Load {
            packets,
            len,
            pace,
            stop: Arc::new(AtomicBool::new(false)),
            received: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Waits until the receiver has `n` packets: data is in flight.
    fn wait_received(&self, n: u64) {
        wait_for("data in flight", DEADLINE, || {
            (self.received.load(Relaxed) >= n).then_some(())
        });
    }
}

/// Both ends of one logical connection: the sender on the proxy of
/// `lab_sockets[0]`, the receiver on that of `lab_sockets[1]`.
async fn stream(lab_sockets: [PathBuf; 2], s: ConnSpec, load: Load) -> (Side, Side) {
    let seed = u64::from(s.command_id);
    let [sa, sb] = lab_sockets;
    let opts = ClientOptions::default();
    let (tx, rx) = tokio::join!(
        LogicalConn::connect(&sa, s, &opts),
        LogicalConn::connect(&sb, s.reversed(), &opts)
    );
    let failed = |e: String| Side {
        result: Err(e),
        packets: 0,
        digest: StreamDigest::new(),
        longest_gap: Duration::ZERO,
    };
    let (mut tx, mut rx) = match (tx, rx) {
        (Ok(t), Ok(r)) => (t, r),
        (t, r) => {
            let e = format!("connect: {:?} / {:?}", t.err(), r.err());
            return (failed(e.clone()), failed(e));
        }
    };
    let received = load.received.clone();
    let send = async move {
        let mut d = StreamDigest::new();
        let mut i = 0;
        let mut tick = load.pace.map(tokio::time::interval);
        let r: Result<(), String> = async {
            while i < load.packets && !load.stop.load(Relaxed) {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let p = pattern_payload(seed, i, load.len);
                tx.send_packet(&p).await.map_err(|e| e.to_string())?;
                d.update(&p);
                i += 1;
            }
            tx.finish().await.map_err(|e| e.to_string())?;
            match tx.recv().await.map_err(|e| e.to_string())? {
                RecvItem::Eof => Ok(()),
                other => Err(format!("expected the receiver's BYE, got {other:?}")),
            }
        }
        .await;
        Side {
            result: r,
            packets: i,
            digest: d,
            longest_gap: Duration::ZERO,
        }
    };
    let recv = async move {
        let mut d = StreamDigest::new();
        let (mut n, mut gap, mut last) = (0, Duration::ZERO, Instant::now());
        let r = loop {
            match rx.recv().await {
                Ok(RecvItem::Packet(p)) => {
                    d.update(&p);
                    n += 1;
                    received.fetch_add(1, Relaxed);
                    gap = gap.max(last.elapsed());
                    last = Instant::now();
                }
                Ok(RecvItem::Eof) => break rx.finish().await.map_err(|e| e.to_string()),
                Ok(RecvItem::Stop) => break Err("unexpected STOP".to_string()),
                Err(e) => break Err(e.to_string()),
            }
        };
        Side {
            result: r,
            packets: n,
            digest: d,
            longest_gap: gap,
        }
    };
    tokio::join!(send, recv)
}

/// The digest of the first `packets` packets of `len` bytes [`stream`] sends.
fn prefix_digest(s: &ConnSpec, packets: u64, len: usize) -> StreamDigest {
    let mut d = StreamDigest::new();
    for i in 0..packets {
        d.update(&pattern_payload(u64::from(s.command_id), i, len));
    }
    d
}

/// A stream that must arrive whole: returns the bytes and how long it took.
async fn intact(lab_sockets: [PathBuf; 2], s: ConnSpec, load: Load) -> (u64, Duration) {
    let t = Instant::now();
    let want = load.packets;
    let (a, b) = stream(lab_sockets, s, load).await;
    let what = format!("dbid {} -> dbid {}", s.local.dbid, s.remote.dbid);
    assert_eq!((&a.result, &b.result), (&Ok(()), &Ok(())), "{what}");
    assert_eq!((a.packets, b.packets), (want, want), "{what}");
    assert_eq!(a.digest, b.digest, "{what}: bytes lost or reordered");
    (b.digest.bytes(), t.elapsed())
}

/// `rounds` 64-byte packets from host `from` bounced back by host `to` on
/// one logical connection (both directions carry data); the round trips.
async fn ping_pong(lab_sockets: [PathBuf; 2], s: ConnSpec, rounds: u8) -> Vec<Duration> {
    let [sa, sb] = lab_sockets;
    let opts = ClientOptions::default();
    let (a, b) = tokio::join!(
        LogicalConn::connect(&sa, s, &opts),
        LogicalConn::connect(&sb, s.reversed(), &opts)
    );
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    let echo = tokio::spawn(async move {
        while let RecvItem::Packet(p) = b.recv().await.unwrap() {
            b.send_packet(&p).await.unwrap();
        }
        b.finish().await.unwrap();
    });
    let mut rtts = Vec::new();
    for i in 0..rounds {
        let t = Instant::now();
        a.send_packet(&[i; 64]).await.unwrap();
        assert_eq!(
            a.recv().await.unwrap(),
            RecvItem::Packet(vec![i; 64].into())
        );
        rtts.push(t.elapsed());
    }
    a.finish().await.unwrap();
    assert_eq!(a.recv().await.unwrap(), RecvItem::Eof);
    echo.await.unwrap();
    rtts
}

// ---- the test ---------------------------------------------------------------------

#[test]
fn the_mesh_rides_out_bandwidth_limits_latency_stalls_and_pulled_cables() {
    let started = Instant::now();
    let mut lab = match Lab::build() {
        Ok(lab) => lab,
        Err(Skip(why)) => {
            eprintln!("netns: skipped: {why}");
            return;
        }
    };
    let relay = Relay::start(
        &lab.ns(3),
        format!("{}:{RELAY_PORT}", addr(3)).parse().unwrap(),
        format!("{}:{PEER_PORT}", addr(1)).parse().unwrap(),
    );
    let (stalls_on, stalls) = (relay.stalls_on.clone(), relay.stalls.clone());
    lab.relays.push(relay);
    for dbid in HOSTS {
        lab.start_proxy(dbid, &map_for(dbid, true));
    }
    for (a, b) in [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)] {
        lab.wait_linked(a, b, 1);
    }
    let sockets =
        |from: u16, to: u16| [lab.proxy(from).socket.clone(), lab.proxy(to).socket.clone()];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut bytes = 0;
    let mut report = Vec::new();

    // Every pair carries data, at full speed.
    for (a, b) in [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)] {
        bytes += rt
            .block_on(intact(sockets(a, b), spec(a, b), Load::bulk(128)))
            .0;
    }

    // Bandwidth: host 2 sends through a 10 mbit token bucket.
    let (fast, t_fast) = rt.block_on(intact(sockets(2, 1), spec(2, 1), Load::bulk(384)));
    lab.tc(
        &lab.ns(2),
        &[
            "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "10mbit", "burst", "32kbit",
            "latency", "400ms",
        ],
    );
    let (slow, t_slow) = rt.block_on(intact(sockets(2, 1), spec(2, 1), Load::bulk(384)));
    lab.tc(&lab.ns(2), &["qdisc", "del", "dev", "eth0", "root"]);
    let floor = Duration::from_secs_f64(slow as f64 * 8.0 / LIMIT_BPS * 0.9);
    assert!(
        t_slow >= floor,
        "{slow} bytes in {t_slow:?} through a 10 mbit limit"
    );
    bytes += fast + slow;
    report.push(format!(
        "tbf 10mbit on host 2: {slow} bytes intact in {t_slow:?} ({:.1} mbit/s; {:?} without the limit)",
        slow as f64 * 8.0 / t_slow.as_secs_f64() / 1e6,
        t_fast
    ));

    // Latency: host 3 reaches host 1 through the relay, 50 ms each way.
    let direct = rt.block_on(ping_pong(sockets(2, 1), spec(2, 1), 10));
    let relayed = rt.block_on(ping_pong(sockets(3, 1), spec(3, 1), 10));
    let min = |v: &[Duration]| *v.iter().min().unwrap();
    let max = |v: &[Duration]| *v.iter().max().unwrap();
    assert!(
        min(&relayed) >= 2 * RELAY_DELAY,
        "round trips through the relay: {relayed:?}"
    );
    let (n, t) = rt.block_on(intact(sockets(3, 1), spec(3, 1), Load::bulk(256)));
    bytes += n;
    report.push(format!(
        "relay +50 ms each way between hosts 3 and 1: round trips {:?}..{:?} (direct 2-1: {:?}..{:?}); {n} bytes intact in {t:?}",
        min(&relayed), max(&relayed), min(&direct), max(&direct)
    ));

    // Stalls: the relay also stops for 1 s at random moments.
    stalls_on.store(true, Relaxed);
    let paced = || Load::paced(400, 4096, Some(Duration::from_millis(10)));
    let (n, t) = rt.block_on(async {
        let (a, b) = tokio::join!(
            intact(sockets(3, 1), spec(3, 1), paced()),
            intact(sockets(1, 3), spec(1, 3), paced())
        );
        (a.0 + b.0, a.1.max(b.1))
    });
    stalls_on.store(false, Relaxed);
    let stalled = stalls.load(Relaxed);
    assert!(stalled >= 2, "only {stalled} stalls happened");
    bytes += n;
    report.push(format!(
        "relay stalls: {stalled} stalls of 1 s; {n} bytes intact both ways in {t:?}"
    ));

    // A short cut: host 2's cable out for 3 s while it streams to host 1.
    let ups_before = lab.link_events(1, 2);
    let load = Load::paced(600, 2048, Some(Duration::from_millis(10)));
    let run = rt.spawn(stream(sockets(2, 1), spec(2, 1), load.clone()));
    load.wait_received(20);
    lab.cable(2, false);
    // The fault's duration, not a synchronization.
    thread::sleep(Duration::from_secs(3));
    lab.cable(2, true);
    let (a, b) = rt.block_on(run).unwrap();
    assert_eq!((&a.result, &b.result), (&Ok(()), &Ok(())));
    assert_eq!((a.packets, b.packets, a.digest), (600, 600, b.digest));
    let (n, gap) = (b.digest.bytes(), b.longest_gap);
    assert_eq!(
        lab.link_events(1, 2),
        ups_before,
        "the proxies noticed a 3 s cut"
    );
    bytes += n;
    report.push(format!(
        "cable of host 2 out for 3 s: TCP retransmitted, no link lost, stream intact ({n} bytes), longest wait {gap:?}"
    ));

    // A long cut: TCP gives up after about 6 s of unacknowledged data.
    lab.sysctl_all("net.ipv4.tcp_retries2=4");
    let before: Vec<_> = [(1, 2), (2, 1), (3, 2), (2, 3)]
        .iter()
        .map(|&(a, b)| lab.link_events(a, b))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let pairs = [(2, 1), (1, 2), (2, 3), (3, 2), (3, 1)];
    let loads: Vec<Load> = pairs
        .iter()
        .map(|_| Load {
            stop: stop.clone(),
            ..Load::paced(u64::MAX, 2048, Some(Duration::from_millis(10)))
        })
        .collect();
    let specs: Vec<ConnSpec> = pairs.iter().map(|&(a, b)| spec(a, b)).collect();
    let runs: Vec<_> = pairs
        .iter()
        .zip(&loads)
        .zip(&specs)
        .map(|((&(a, b), load), s)| rt.spawn(stream(sockets(a, b), *s, load.clone())))
        .collect();
    for load in &loads {
        load.wait_received(20);
    }
    lab.cable(2, false);
    let cut_at = Instant::now();
    // The cable stays out until both ends of both links have given up.
    wait_for("both ends of host 2's links lost", DEADLINE, || {
        [(1, 2), (2, 1), (3, 2), (2, 3)]
            .iter()
            .zip(&before)
            .all(|(&(a, b), was)| lab.link_events(a, b).1 > was.1)
            .then_some(())
    });
    let detected = cut_at.elapsed();
    lab.cable(2, true);
    let replug = Instant::now();
    for ((a, b), was) in [(1, 2), (2, 1), (3, 2), (2, 3)].into_iter().zip(&before) {
        lab.wait_linked(a, b, was.0 + 1);
    }
    let relinked = replug.elapsed();
    stop.store(true, Relaxed);
    let mut ends = Vec::new();
    for (((a, b), run), spec) in pairs.iter().zip(runs).zip(&specs) {
        let (s, r) = rt
            .block_on(async { tokio::time::timeout(DEADLINE, run).await })
            .unwrap_or_else(|_| panic!("dbid {a} -> dbid {b} hangs"))
            .unwrap();
        if (*a, *b) == (3, 1) {
            // Through the relay, not through host 2: untouched.
            assert_eq!((&s.result, &r.result), (&Ok(()), &Ok(())), "3 -> 1");
            assert_eq!((s.packets, s.digest), (r.packets, r.digest), "3 -> 1");
        } else {
            // The sender's proxy closed its socket; the receiver read the end
            // of the stream early (a premature end, as with the C proxy) or
            // an error; what it did get is the exact start of what was sent.
            let what = format!("{a} -> {b}: sender {s:?}, receiver {r:?}");
            assert!(s.result.is_err(), "{what}: the sender did not see the cut");
            assert!(
                r.result.is_err() || r.packets < s.packets,
                "{what}: the receiver did not see the cut"
            );
            assert_eq!(
                r.digest,
                prefix_digest(spec, r.packets, 2048),
                "{what}: bytes changed"
            );
            ends.push(format!(
                "{a}->{b}: sender {:?} after {} packets, receiver {} after {} packets (an intact prefix)",
                s.result, s.packets, r.result.as_ref().map_or_else(|e| e.clone(), |()| "end of stream".to_string()), r.packets
            ));
        }
    }
    for (a, b) in [(1, 2), (2, 1), (2, 3), (3, 2)] {
        bytes += rt
            .block_on(intact(sockets(a, b), spec(a, b), Load::bulk(64)))
            .0;
    }
    report.push(format!(
        "cable of host 2 out until TCP gave up: both ends lost both links {detected:?} after the cut; relinked {relinked:?} after the replug; new streams intact"
    ));
    for e in &ends {
        report.push(format!("  cut stream {e}"));
    }
    for dbid in HOSTS {
        for line in lab
            .proxy(dbid)
            .log()
            .lines()
            .filter(|l| l.contains("link lost"))
        {
            report.push(format!("  host {dbid}: {line}"));
        }
    }

    for line in &report {
        println!("netns: {line}");
    }
    println!(
        "netns: {bytes} bytes checked; {:?} in all",
        started.elapsed()
    );
}

/// A host that dies and comes back while cut off (power loss, kernel
/// panic, reboot) must be back in the mesh within seconds. Today it is not
/// (the proxy bug in the netns report): the survivors still hold their
/// half-open links to the dead host, so host 1 refuses host 2's new dial
/// ("dbid 2 is already connected") and host 3, whose job it is to dial host
/// 2, never dials again; both links stay dead until TCP keepalive (60 s
/// idle, then probes 10 s apart) or a write (tcp_retries2, about 15 min
/// with unacknowledged data) ends the old link.
///
/// Host 1 learns it from host 2's new PEER_HELLO: it probes the old link,
/// which gets no answer (or a reset), and takes the new connection. Host 3
/// learns it from TCP keepalive: after 5 s of silence its first probe draws
/// a reset from the rebooted host.
#[test]
fn a_rebooted_host_is_linked_again_at_once() {
    let mut lab = match Lab::build() {
        Ok(lab) => lab,
        Err(Skip(why)) => {
            eprintln!("netns: skipped: {why}");
            return;
        }
    };
    for dbid in HOSTS {
        lab.start_proxy(dbid, &map_for(dbid, false));
    }
    for (a, b) in [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)] {
        lab.wait_linked(a, b, 1);
    }
    let before = [lab.link_events(1, 2), lab.link_events(3, 2)];
    lab.reboot_host(2, &map_for(2, false));
    let rebooted = Instant::now();
    let linked = std::panic::catch_unwind(|| {
        wait_for(
            "host 2 linked to hosts 1 and 3 again",
            Duration::from_secs(10),
            || {
                (lab.link_events(1, 2).0 > before[0].0 && lab.link_events(3, 2).0 > before[1].0)
                    .then_some(())
            },
        )
    });
    let refused = lab
        .proxy(1)
        .log()
        .matches("dbid 2 is already connected")
        .count();
    assert!(
        linked.is_ok(),
        "{:?} after the reboot host 2 is not linked again; host 1 refused its dial {refused} times \
         (\"dbid 2 is already connected\")",
        rebooted.elapsed()
    );
}
