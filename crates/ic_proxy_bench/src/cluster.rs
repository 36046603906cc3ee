//! Real proxies for the bench: standalone `ic-proxy run` processes on
//! 127.0.0.1 with free ports and a temporary socket directory, each its own
//! process so its CPU time and memory can be read from /proc. Their stderr is
//! watched for the links they report and for any warning.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use ic_proxy_core::sync::Mutex;
use std::time::{Duration, Instant};

use crate::transport::ProxyEnd;

/// The longest a proxy may take to come up and link with its peers.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Warnings kept per proxy for the report.
const KEPT_WARNINGS: usize = 50;

/// Environment every proxy process gets (`--proxy-env`), e.g. an allocator
/// to preload for an experiment. Set once, before the first proxy starts.
pub static PROXY_ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();
/// Flags added to every `ic-proxy run` (`--proxy-arg`).
pub static PROXY_ARGS: OnceLock<Vec<String>> = OnceLock::new();

/// What a proxy's stderr has said so far.
#[derive(Default)]
pub struct LogWatch {
    /// Links up now: "peer dbid N ... connected" minus "link lost".
    links: AtomicI64,
    backend_listening: AtomicBool,
    peer_listening: AtomicBool,
    warnings: Mutex<Vec<String>>,
    tail: Mutex<Vec<String>>,
}

impl LogWatch {
    fn see(&self, line: &str) {
        // "peer dbid 2 (content 0) connected", then how (newer builds).
        let linked = line.ends_with(" connected") || line.contains(" connected (");
        if line.contains("ic-proxy: peer dbid") && linked {
            self.links.fetch_add(1, Relaxed);
        } else if line.contains("link lost") {
            self.links.fetch_sub(1, Relaxed);
        }
        if line.contains("listening for backends") {
            self.backend_listening.store(true, Relaxed);
        }
        if line.contains("listening for peers") {
            self.peer_listening.store(true, Relaxed);
        }
        if line.contains(" WARN ") || line.contains(" ERROR ") {
            let mut w = self.warnings.lock();
            if w.len() < KEPT_WARNINGS {
                w.push(line.to_string());
            }
        }
        let mut t = self.tail.lock();
        if t.len() >= 20 {
            t.remove(0);
        }
        t.push(line.to_string());
    }

    pub fn links(&self) -> i64 {
        self.links.load(Relaxed)
    }

    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().clone()
    }

    fn tail(&self) -> String {
        self.tail.lock().join("\n")
    }
}

/// One `ic-proxy run` process.
pub struct ProxyProc {
    pub end: ProxyEnd,
    pub log: Arc<LogWatch>,
    child: Child,
}

impl ProxyProc {
    /// Starts `ic-proxy run` for map entry `dbid` of the map in `map_file`,
    /// its backend socket in `dir`.
    pub fn spawn(
        bin: &Path,
        dir: &Path,
        map_file: &Path,
        end: (u16, i16, u16),
        threads: u16,
    ) -> Result<ProxyProc, String> {
        Self::spawn_with(bin, dir, map_file, end, threads, &[])
    }

    /// The same with `extra` flags (e.g. TLS).
    pub fn spawn_with(
        bin: &Path,
        dir: &Path,
        map_file: &Path,
        end: (u16, i16, u16),
        threads: u16,
        extra: &[String],
    ) -> Result<ProxyProc, String> {
        let (dbid, content, port) = end;
        let mut child = Command::new(bin)
            .arg("run")
            .arg("--addresses-file")
            .arg(map_file)
            .args(["--dbid", &dbid.to_string()])
            .args(["--port", &port.to_string(), "--pid", "1"])
            .arg("--socket-dir")
            .arg(dir)
            .args(["--threads", &threads.to_string(), "--log-level", "info"])
            .args(extra)
            .args(PROXY_ARGS.get().into_iter().flatten())
            .envs(PROXY_ENV.get().into_iter().flatten().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let log = Arc::new(LogWatch::default());
        let stderr = child.stderr.take().expect("stderr is piped");
        let watch = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(l) => watch.see(&l),
                    Err(_) => break,
                }
            }
        });
        Ok(ProxyProc {
            end: ProxyEnd {
                socket: ic_proxy_core::socket_path(dir, port, 1),
                dbid,
                content,
            },
            log,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ok while the process runs; Err with its last lines once it has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!(
                "proxy dbid {} exited ({st}); its last lines:\n{}",
                self.end.dbid,
                self.log.tail()
            )),
            Err(e) => Err(format!("cannot watch proxy dbid {}: {e}", self.end.dbid)),
        }
    }

    /// Waits until its backend socket is up and `links` peer links are.
    pub async fn wait_ready(&mut self, links: i64, deadline: Instant) -> Result<(), String> {
        loop {
            self.check_alive()?;
            if self.log.backend_listening.load(Relaxed)
                && self.log.peer_listening.load(Relaxed)
                && self.log.links() >= links
                && self.end.socket.exists()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "proxy dbid {} not ready in time ({} of {links} links); its last lines:\n{}",
                    self.end.dbid,
                    self.log.links(),
                    self.log.tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        // SIGTERM first so it removes its socket and closes its links cleanly.
        // SAFETY: kill() with our own child's pid only sends a signal.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Free ports on `host`: all bound at once so they are distinct, then
/// released for the proxies to bind.
pub fn free_ports(host: &str, n: usize) -> Result<Vec<u16>, String> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((host, 0)).map_err(|e| format!("cannot bind {host}:0: {e}")))
        .collect::<Result<_, _>>()?;
    ls.iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string()))
        .collect()
}

/// Proxies that all know each other: instance i has dbid i + 1 and content
/// `contents[i]`.
pub struct Cluster {
    pub procs: Vec<ProxyProc>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(bin: &Path, contents: &[i16], threads: u16) -> Result<Cluster, String> {
        Self::start_with(bin, contents, threads, &[]).await
    }

    /// The same, every proxy with `extra` flags.
    pub async fn start_with(
        bin: &Path,
        contents: &[i16],
        threads: u16,
        extra: &[String],
    ) -> Result<Cluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("ic-proxy-bench.")
            .tempdir()
            .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
        let ports = free_ports("127.0.0.1", contents.len())?;
        let map: Vec<String> = contents
            .iter()
            .zip(&ports)
            .enumerate()
            .map(|(i, (c, p))| format!("{}:{c}:127.0.0.1:{p}", i + 1))
            .collect();
        let map_file = dir.path().join("map.txt");
        std::fs::write(&map_file, map.join(","))
            .map_err(|e| format!("cannot write {}: {e}", map_file.display()))?;
        let mut procs = Vec::new();
        for (i, (c, p)) in contents.iter().zip(&ports).enumerate() {
            procs.push(ProxyProc::spawn_with(
                bin,
                dir.path(),
                &map_file,
                (i as u16 + 1, *c, *p),
                threads,
                extra,
            )?);
        }
        let deadline = Instant::now() + START_DEADLINE;
        let links = contents.len() as i64 - 1;
        for p in &mut procs {
            p.wait_ready(links, deadline).await?;
        }
        Ok(Cluster { procs, _dir: dir })
    }

    pub fn end(&self, i: usize) -> ProxyEnd {
        self.procs[i].end.clone()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.pid()).collect()
    }

    /// Err if a proxy died or lost a link since it started.
    pub fn check(&mut self) -> Result<(), String> {
        let want = self.procs.len() as i64 - 1;
        for p in &mut self.procs {
            p.check_alive()?;
            if p.log.links() != want {
                return Err(format!(
                    "proxy dbid {} has {} of {want} links: {:?}",
                    p.end.dbid,
                    p.log.links(),
                    p.log.warnings()
                ));
            }
        }
        Ok(())
    }

    /// Every warning the proxies logged, prefixed with their dbid.
    pub fn warnings(&self) -> Vec<String> {
        self.procs
            .iter()
            .flat_map(|p| {
                p.log
                    .warnings()
                    .into_iter()
                    .map(move |w| format!("dbid {}: {w}", p.end.dbid))
            })
            .collect()
    }
}

/// Where the `ic-proxy` binary is: `--ic-proxy`, else next to this binary.
pub fn find_ic_proxy(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let next = me.with_file_name("ic-proxy");
    if next.exists() {
        Ok(next)
    } else {
        Err(format!(
            "no ic-proxy next to {}: build it (cargo build --release -p ic_proxy_cli) or pass --ic-proxy PATH",
            me.display()
        ))
    }
}
