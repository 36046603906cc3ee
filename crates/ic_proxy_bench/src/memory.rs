//! Memory: many idle logical connections held open through a pair of proxy
//! processes, and a mesh of many peers around one hub process (the peers are
//! real proxy runtimes hosted in the bench process, each with a 2-entry map).

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ic_proxy_client::pattern_payload;
use ic_proxy_core::address_map::{AddressMap, PeerAddr};
use ic_proxy_core::{
    bind_backend_socket, Listeners, PeerState, ProxyHandle, ProxySettings, RuntimeConfig,
};
use tokio::task::JoinSet;

use crate::cluster::{free_ports, ProxyProc};
use crate::machine::rss_bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::transport::{Conn, Endpoints, Item, ProxyEnd};

/// Opens `n` logical connections with `concurrency` tasks.
pub async fn open_many(
    ep: Arc<Endpoints>,
    n: usize,
    concurrency: usize,
) -> Result<Vec<(Conn, Conn)>, String> {
    let mut set = JoinSet::new();
    let per = n.div_ceil(concurrency.max(1));
    let mut left = n;
    while left > 0 {
        let k = per.min(left);
        left -= k;
        let ep = ep.clone();
        set.spawn(async move {
            let mut v = Vec::with_capacity(k);
            for _ in 0..k {
                v.push(ep.open().await?);
            }
            Ok::<_, String>(v)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        all.extend(r.map_err(|e| format!("opening task failed: {e}"))??);
    }
    Ok(all)
}

/// Sends one packet on every `stride`-th connection (and the last) and checks
/// it arrives: the connections are held, not merely counted.
pub async fn probe_held(conns: &mut [(Conn, Conn)], stride: usize) -> Result<usize, String> {
    let n = conns.len();
    let mut probed = 0;
    for i in (0..n).step_by(stride.max(1)).chain(n.checked_sub(1)) {
        let (a, b) = &mut conns[i];
        let p = pattern_payload(17, i as u64, 64);
        a.tx.send(&[&p]).await?;
        match tokio::time::timeout(Duration::from_secs(10), b.rx.recv()).await {
            Ok(Ok(Item::Packet(got))) if got[..] == p[..] => probed += 1,
            Ok(Ok(_)) => return Err(format!("connection {i} of {n}: wrong packet or EOF")),
            Ok(Err(e)) => return Err(format!("connection {i} of {n}: {e}")),
            Err(_) => {
                return Err(format!(
                    "stall: connection {i} of {n} delivered nothing in 10 s"
                ))
            }
        }
    }
    Ok(probed)
}

/// RSS of `pid` once it has stopped changing by more than 1% over
/// `quiet`, or after `limit`.
pub async fn settled_rss(pid: u32, quiet: Duration, limit: Duration) -> u64 {
    let start = Instant::now();
    let mut last = rss_bytes(pid).unwrap_or(0);
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = rss_bytes(pid).unwrap_or(0);
        if now.abs_diff(last) * 100 > last.max(1) {
            last = now;
            since = Instant::now();
        }
        if since.elapsed() >= quiet || start.elapsed() >= limit {
            return now;
        }
    }
}

/// What the mesh of many peers showed.
#[derive(Debug)]
pub struct MeshOutcome {
    pub hub_rss_idle: u64,
    pub hub_rss_linked: u64,
    pub connect_secs: f64,
    pub links_after_hold: i64,
}

/// A hub process (dbid 1, content -1, a map of `peers + 1` entries) and
/// `peers` in-process proxies (dbid i + 1, content i - 1, on 127.0.0.x),
/// each with a map of itself and the hub; the peers dial the hub, as
/// segments dial the coordinator.
pub async fn mesh(bin: &Path, peers: usize, deadline: Duration) -> Result<MeshOutcome, String> {
    let dir = tempfile::Builder::new()
        .prefix("ic-proxy-bench-mesh.")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let hub_port = free_ports("127.0.0.1", 1)?[0];
    let hub = PeerAddr {
        dbid: 1,
        content: -1,
        host: "127.0.0.1".into(),
        port: hub_port,
    };
    let mut listeners = Vec::with_capacity(peers);
    let mut entries = vec![hub.clone()];
    for i in 1..=peers {
        let host = format!("127.0.0.{}", 2 + (i - 1) % 250);
        let l = TcpListener::bind((host.as_str(), 0))
            .map_err(|e| format!("cannot bind {host}:0: {e}"))?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        entries.push(PeerAddr {
            dbid: i as u16 + 1,
            content: i as i16 - 1,
            host,
            port,
        });
        listeners.push(l);
    }
    let full = AddressMap::from_entries(entries.clone()).map_err(|e| e.to_string())?;
    let map_text: Vec<String> = full
        .entries()
        .iter()
        .map(|e| format!("{}:{}:{}:{}", e.dbid, e.content, e.host, e.port))
        .collect();
    let map_file = dir.path().join("hub-map.txt");
    std::fs::write(&map_file, map_text.join(",")).map_err(|e| e.to_string())?;
    let mut hub_proc = ProxyProc::spawn(bin, dir.path(), &map_file, (1, -1, hub_port), 2)?;
    hub_proc
        .wait_ready(0, Instant::now() + Duration::from_secs(30))
        .await?;
    let hub_pid = hub_proc.pid();
    let hub_rss_idle =
        settled_rss(hub_pid, Duration::from_millis(300), Duration::from_secs(3)).await;

    let start = Instant::now();
    let mut running = Vec::with_capacity(peers);
    for (l, me) in listeners.into_iter().zip(entries.iter().skip(1)) {
        let socket = ic_proxy_core::socket_path(dir.path(), me.dbid, 2);
        let backend =
            bind_backend_socket(&socket).map_err(|e| format!("{}: {e}", socket.display()))?;
        let mut settings = ProxySettings::new(me.dbid, socket);
        settings.pid = 100_000 + i32::from(me.dbid);
        let map =
            AddressMap::from_entries(vec![hub.clone(), me.clone()]).map_err(|e| e.to_string())?;
        let mut proxy = ProxyHandle::new(RuntimeConfig::new(map));
        proxy.spawn(
            &tokio::runtime::Handle::current(),
            settings,
            Listeners {
                peer: Some(l),
                backend: Some(backend),
            },
        );
        running.push((proxy.status().clone(), proxy));
    }
    let outcome = async {
        loop {
            hub_proc.check_alive()?;
            let hub_links = hub_proc.log.links();
            if hub_links >= peers as i64 {
                let all = running.iter().all(|(s, ..)| {
                    s.peer(1).is_some_and(|p| p.state() == PeerState::Connected)
                });
                if all {
                    break;
                }
            }
            if start.elapsed() >= deadline {
                let down = running
                    .iter()
                    .filter(|(s, ..)| !s.peer(1).is_some_and(|p| p.state() == PeerState::Connected))
                    .count();
                return Err(format!(
                    "mesh of {peers} peers: {hub_links} links at the hub and {down} peers not connected after {deadline:?}; hub warnings: {:?}",
                    hub_proc.log.warnings()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let connect_secs = start.elapsed().as_secs_f64();
        let hub_rss_linked =
            settled_rss(hub_pid, Duration::from_millis(300), Duration::from_secs(3)).await;
        // Held: after a second more, every link is still up.
        tokio::time::sleep(Duration::from_secs(1)).await;
        hub_proc.check_alive()?;
        Ok(MeshOutcome {
            hub_rss_idle,
            hub_rss_linked,
            connect_secs,
            links_after_hold: hub_proc.log.links(),
        })
    }
    .await;
    for (_, proxy) in &running {
        proxy.cancel();
    }
    for (_, proxy) in running {
        let _ = proxy.stop(Duration::from_secs(5)).await;
    }
    drop(hub_proc);
    outcome
}

/// A child bench process holding logical connections (both ends) open, so
/// this process's descriptor limit does not cap how many the proxies hold.
/// It says `ready <secs>` once they are open, answers `probe` with
/// `probed <n>`, and closes them all when its stdin closes.
pub struct Holder {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    pub pairs: usize,
}

impl Holder {
    pub async fn start(a: &ProxyEnd, b: &ProxyEnd, pairs: usize) -> Result<Holder, String> {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(me)
            .args(["--hold-pairs", &pairs.to_string()])
            .args(["--hold-a", &a.to_arg(), "--hold-b", &b.to_arg()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start a holder process: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("holder without stdout")?;
        let mut h = Holder {
            child,
            stdin,
            lines: tokio::io::BufReader::new(stdout).lines(),
            pairs,
        };
        h.answer("ready").await?;
        Ok(h)
    }

    async fn answer(&mut self, want: &str) -> Result<String, String> {
        match tokio::time::timeout(Duration::from_secs(300), self.lines.next_line()).await {
            Ok(Ok(Some(l))) if l.starts_with(want) => Ok(l[want.len()..].trim().to_string()),
            Ok(Ok(Some(l))) => Err(format!("holder of {} connections: {l}", self.pairs)),
            Ok(Ok(None)) => Err(format!("holder of {} connections exited", self.pairs)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "stall: holder of {} connections did not answer",
                self.pairs
            )),
        }
    }

    /// Sends one packet on every 100th connection it holds; how many arrived.
    pub async fn probe(&mut self) -> Result<usize, String> {
        let stdin = self.stdin.as_mut().ok_or("holder closed")?;
        stdin
            .write_all(b"probe\n")
            .await
            .map_err(|e| e.to_string())?;
        stdin.flush().await.map_err(|e| e.to_string())?;
        self.answer("probed")
            .await?
            .parse()
            .map_err(|e| format!("holder: {e}"))
    }

    /// Closes its connections and waits for it to exit.
    pub async fn close(mut self) {
        self.stdin.take();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// The holder process's side of [`Holder`].
pub async fn hold_main(a: ProxyEnd, b: ProxyEnd, pairs: usize) -> std::process::ExitCode {
    let mut out = tokio::io::stdout();
    let t0 = Instant::now();
    let mut held = match open_many(Arc::new(Endpoints::Proxy { a, b }), pairs, 64).await {
        Ok(h) => h,
        Err(e) => {
            let _ = out.write_all(format!("error {e}\n").as_bytes()).await;
            let _ = out.flush().await;
            return std::process::ExitCode::FAILURE;
        }
    };
    let _ = out
        .write_all(format!("ready {:.3}\n", t0.elapsed().as_secs_f64()).as_bytes())
        .await;
    let _ = out.flush().await;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        if l.trim() == "probe" {
            let answer = match probe_held(&mut held, 100).await {
                Ok(n) => format!("probed {n}\n"),
                Err(e) => format!("error {e}\n"),
            };
            let _ = out.write_all(answer.as_bytes()).await;
            let _ = out.flush().await;
        }
    }
    std::process::ExitCode::SUCCESS
}
