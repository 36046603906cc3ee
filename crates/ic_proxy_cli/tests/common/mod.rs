//! What the tests of real `ic-proxy` processes share: the binary, the
//! `ic-proxy run` process (started, watched, stopped), free ports, signals,
//! waiting for an exit, and a checked stream between a backend on dbid 1
//! and one on dbid 2. Each test file uses a part.
#![allow(dead_code)]

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ic_proxy_client::{ClientOptions, ConnSpec, Endpoint, LogicalConn};
use ic_proxy_tests::{expected_digest, recv_stream, send_stream};

pub const BIN: &str = env!("CARGO_BIN_EXE_ic-proxy");

/// How often a wait looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// Runs `ic-proxy ARGS` to its end.
pub fn ic_proxy(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run ic-proxy")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A port nobody listens on right now: bind port 0 and let it go.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// Sends `sig` to `child`.
pub fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned and have not yet reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({}, {sig})", child.id());
}

/// Waits for `child` to exit; kills it and fails after `within`.
pub fn wait_exit(child: &mut Child, what: &str, within: Duration) -> ExitStatus {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {within:?}");
        }
        thread::sleep(POLL);
    }
}

/// Bytes of each packet a checked stream sends: a full 8 KB ic-tcp packet
/// less its length field.
pub const PAYLOAD: usize = 8188;
/// Packets of a checked stream of at least 1 MiB.
pub const MEGABYTE_PACKETS: u64 = (1 << 20) / PAYLOAD as u64 + 1;

/// A logical connection from a backend on dbid 1 (content -1) to one on
/// dbid 2 (content 0).
pub fn spec_1_to_2(session_id: i32, command_id: u32) -> ConnSpec {
    ConnSpec {
        session_id,
        command_id,
        send_slice: 1,
        recv_slice: 0,
        local: Endpoint {
            content: -1,
            dbid: 1,
            pid: 101,
        },
        remote: Endpoint {
            content: 0,
            dbid: 2,
            pid: 202,
        },
    }
}

/// Sends `packets` pattern packets over a connected pair and checks that
/// the receiver got exactly them, in order, and end of stream, all within
/// `within`. Err says what went wrong.
pub async fn carry(
    tx: LogicalConn,
    rx: LogicalConn,
    seed: u64,
    packets: u64,
    within: Duration,
) -> Result<(), String> {
    let both = async { tokio::join!(send_stream(tx, seed, packets, PAYLOAD), recv_stream(rx)) };
    let (sent, got) = tokio::time::timeout(within, both)
        .await
        .map_err(|_| format!("the stream did not end within {within:?}"))?;
    let sent = sent.map_err(|e| format!("sender: {e}"))?;
    let (got, n) = got.map_err(|e| format!("receiver: {e}"))?;
    let want = expected_digest(seed, packets, PAYLOAD);
    if sent != want || got != want || n != packets {
        return Err(format!(
            "received {n} packets, {} bytes (digest {:x}); sent {packets} packets, {} bytes (digest {:x})",
            got.bytes(),
            got.value(),
            want.bytes(),
            want.value()
        ));
    }
    Ok(())
}

/// Connects both ends of `spec` (its sender behind `from`, its receiver
/// behind `to`) and carries a checked stream of at least 1 MiB.
pub async fn stream_megabyte(
    from: &Path,
    to: &Path,
    spec: ConnSpec,
    seed: u64,
    within: Duration,
) -> Result<(), String> {
    let opts = ClientOptions::default();
    let (tx, rx) = tokio::join!(
        LogicalConn::connect(from, spec, &opts),
        LogicalConn::connect(to, spec.reversed(), &opts)
    );
    let tx = tx.map_err(|e| format!("sender: {e}"))?;
    let rx = rx.map_err(|e| format!("receiver: {e}"))?;
    carry(tx, rx, seed, MEGABYTE_PACKETS, within).await
}

/// Bound on every wait of a test process; generous because other builds
/// share the 2 cores.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(60);

/// `ic-proxy run ARGS`, stdin and stdout closed, stderr into `log`.
pub fn run_command(log: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("log file"));
    cmd
}

/// `ic-proxy run ARGS` for instance `dbid` with its sockets in `dir`, as a
/// server on port 5000 + dbid with postmaster pid 40000 + dbid would have
/// them; the log goes to `dir/proxy<dbid>.log`.
pub fn instance_command(dir: &Path, dbid: u16, args: &[&str]) -> (Command, ProxyNames) {
    let (port, pid) = (5000 + dbid, 40_000 + u32::from(dbid));
    let names = ProxyNames {
        socket: dir.join(format!(".s.PGSQL.ic_proxy.{port}.{pid}")),
        control: dir.join(format!(".s.PGSQL.ic_proxy.{port}.control")),
        log: dir.join(format!("proxy{dbid}.log")),
    };
    let mut cmd = run_command(&names.log, args);
    cmd.args(["--dbid", &dbid.to_string()])
        .args(["--port", &port.to_string(), "--pid", &pid.to_string()])
        .arg("--socket-dir")
        .arg(dir);
    (cmd, names)
}

/// Where an instance's proxy puts its backend socket, control socket and
/// log.
#[derive(Clone, Debug, Default)]
pub struct ProxyNames {
    pub socket: PathBuf,
    pub control: PathBuf,
    pub log: PathBuf,
}

/// One `ic-proxy run` process a test started, killed if the test ends
/// (or fails) before stopping it.
pub struct ProxyProcess {
    pub child: Child,
    /// Its sockets (checked gone after a clean stop) and its log.
    pub names: ProxyNames,
}

impl ProxyProcess {
    /// Spawns `cmd`, whose log is `log` (a process with no sockets of
    /// its own to check).
    pub fn spawn(cmd: Command, log: PathBuf) -> ProxyProcess {
        Self::spawn_named(
            cmd,
            ProxyNames {
                log,
                ..ProxyNames::default()
            },
        )
    }

    /// Spawns `cmd` (from [`instance_command`]) without waiting for it.
    pub fn spawn_named(mut cmd: Command, names: ProxyNames) -> ProxyProcess {
        let child = cmd.spawn().expect("spawn ic-proxy run");
        ProxyProcess { child, names }
    }

    /// `ic-proxy run ARGS` for instance `dbid` (see [`instance_command`]),
    /// once its backend socket exists.
    pub fn start(dir: &Path, dbid: u16, args: &[&str]) -> ProxyProcess {
        let (cmd, names) = instance_command(dir, dbid, args);
        let mut p = Self::spawn_named(cmd, names);
        p.wait_for(|p| p.names.socket.exists(), "backend socket");
        p
    }

    pub fn socket(&self) -> &Path {
        &self.names.socket
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.names.log).unwrap_or_default()
    }

    /// Fails if the process is gone.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("proxy exited with {status}:\n{}", self.log());
        }
    }

    /// Waits until `ready`; fails if the process exits first, or after
    /// [`PROCESS_DEADLINE`].
    pub fn wait_for(&mut self, ready: impl Fn(&ProxyProcess) -> bool, what: &str) {
        let until = Instant::now() + PROCESS_DEADLINE;
        while !ready(self) {
            self.assert_running();
            assert!(
                Instant::now() < until,
                "no {what} within {PROCESS_DEADLINE:?}:\n{}",
                self.log()
            );
            thread::sleep(POLL);
        }
    }

    /// The log once it contains `needle`.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        self.wait_for(
            |p| p.log().contains(needle),
            &format!("{needle:?} in the log"),
        );
        self.log()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sends `sig` and asserts a clean stop: exit 0, and its sockets gone.
    pub fn stop_with(&mut self, sig: libc::c_int) {
        signal(&self.child, sig);
        let status = wait_exit(&mut self.child, "proxy", Duration::from_secs(20));
        assert!(
            status.success(),
            "proxy exited with {status}:\n{}",
            self.log()
        );
        for path in [&self.names.socket, &self.names.control] {
            assert!(
                path.as_os_str().is_empty() || !path.exists(),
                "{} left behind:\n{}",
                path.display(),
                self.log()
            );
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The address `--metrics-listen 127.0.0.1:0` was given.
pub fn metrics_addr(p: &mut ProxyProcess) -> String {
    const AT: &str = "metrics at http://";
    let log = p.wait_for_log(AT);
    let rest = &log[log.find(AT).unwrap() + AT.len()..];
    rest[..rest.find("/metrics").unwrap()].to_string()
}

/// One raw HTTP/1.1 GET; (status line, body).
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the sample `series` (name and labels exactly).
pub fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{body}"))
        .parse()
        .unwrap()
}

/// `ic-proxy run` for dbid 1 of a one-entry map with its sockets in `dir`
/// and `extra`: it must exit 2 at start, saying `why`, and leave no
/// backend socket behind.
pub fn assert_run_refused(dir: &Path, extra: &[&str], why: &str) {
    let map = format!("1:-1:127.0.0.1:{}", free_port());
    let dir_arg = dir.display().to_string();
    let mut args = vec!["run", "--addresses", &map, "--dbid", "1", "--port", "5001"];
    args.extend(["--pid", "40001", "--socket-dir", &dir_arg]);
    args.extend(extra);
    let out = ic_proxy(&args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(why), "{why:?} not in {stderr}");
    assert!(!dir.join(".s.PGSQL.ic_proxy.5001.40001").exists());
}
