//! Round trips and short lives: 64-byte ping-pong on open connections, the
//! query-like exchange on a fresh logical connection, and connection churn.
//! Samples are nanoseconds; every run is bounded by its time plus the stall
//! timeout, and a wrong byte or a missing packet fails it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ic_proxy_client::{pattern_payload, ClientOptions, LogicalConn};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::transport::{self, Conn, Endpoints, Item, ProxyEnd};

/// Bytes of every latency message.
pub const MESSAGE: usize = 64;
/// Round trips per connection left out as warm-up.
const WARM_UP: usize = 20;

async fn recv_exact(c: &mut Conn, want: &[u8], what: &str) -> Result<(), String> {
    match c.rx.recv().await? {
        Item::Packet(p) if p[..] == *want => Ok(()),
        Item::Packet(p) => Err(format!(
            "{what}: a {}-byte packet that is not the one sent",
            p.len()
        )),
        Item::Eof => Err(format!("{what}: EOF where a packet was due")),
    }
}

/// Both ends say BYE and read the other's.
async fn close_both(a: &mut Conn, b: &mut Conn) -> Result<(), String> {
    a.tx.finish().await?;
    b.tx.finish().await?;
    let (x, y) = tokio::join!(a.rx.expect_eof(), b.rx.expect_eof());
    x.and(y)
}

async fn bounded<T>(
    secs: f64,
    stall: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(Duration::from_secs_f64(secs) + stall, f)
        .await
        .map_err(|_| format!("stall: {what} did not finish within {secs} s + {stall:?}"))?
}

/// 64-byte ping-pong on `conns` connections at once for `secs`: each round
/// trip's time, from every connection.
pub async fn ping_pong(
    ep: &Endpoints,
    conns: usize,
    secs: f64,
    stall: Duration,
) -> Result<Vec<u64>, String> {
    let mut pairs = Vec::new();
    for _ in 0..conns {
        pairs.push(ep.open().await?);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    for (i, (mut a, mut b)) in pairs.into_iter().enumerate() {
        let ping = pattern_payload(7, i as u64, MESSAGE);
        set.spawn(async move {
            // The echoing end: every packet goes straight back.
            let echo = async {
                while let Item::Packet(p) = b.rx.recv().await? {
                    b.tx.send(&[&p]).await?;
                }
                b.tx.finish().await
            };
            let pinger = async {
                let mut rtts = Vec::new();
                let mut n = 0;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    a.tx.send(&[&ping]).await?;
                    recv_exact(&mut a, &ping, "ping-pong").await?;
                    if n >= WARM_UP {
                        rtts.push(t0.elapsed().as_nanos() as u64);
                    }
                    n += 1;
                }
                a.tx.finish().await?;
                a.rx.expect_eof().await?;
                Ok::<_, String>(rtts)
            };
            let (e, p) = tokio::join!(echo, pinger);
            e?;
            p
        });
    }
    bounded(secs, stall, "ping-pong", async {
        let mut all = Vec::new();
        while let Some(r) = set.join_next().await {
            all.extend(r.map_err(|e| format!("ping-pong task failed: {e}"))??);
        }
        Ok(all)
    })
    .await
}

/// One query-like exchange on a fresh logical connection: connect both ends
/// (both HELLOs answered), 64 bytes each way, BYE each way.
pub(crate) async fn one_query(ep: &Endpoints, ping: &[u8]) -> Result<(), String> {
    let (mut a, mut b) = ep.open().await?;
    a.tx.send(&[ping]).await?;
    recv_exact(&mut b, ping, "query-like exchange").await?;
    b.tx.send(&[ping]).await?;
    recv_exact(&mut a, ping, "query-like exchange").await?;
    close_both(&mut a, &mut b).await
}

/// Query-like exchanges one after another for `secs`: the time of each.
pub async fn query_like(ep: &Endpoints, secs: f64, stall: Duration) -> Result<Vec<u64>, String> {
    let ping = pattern_payload(11, 0, MESSAGE);
    bounded(secs, stall, "query-like exchanges", async {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut times = Vec::new();
        let mut n = 0;
        while Instant::now() < deadline {
            let t0 = Instant::now();
            one_query(ep, &ping).await?;
            if n >= 5 {
                times.push(t0.elapsed().as_nanos() as u64);
            }
            n += 1;
        }
        Ok(times)
    })
    .await
}

/// Full lives (connect, HELLO, HELLO_ACK, one 64-byte packet, BYE each way)
/// from one task per entry of `eps`, for `secs`: (lives, seconds).
pub async fn churn(
    eps: Vec<Arc<Endpoints>>,
    secs: f64,
    stall: Duration,
) -> Result<(u64, f64), String> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    for ep in eps {
        set.spawn(async move {
            let ping = pattern_payload(13, 0, MESSAGE);
            let mut lives = 0u64;
            while Instant::now() < deadline {
                let (mut a, mut b) = ep.open().await?;
                a.tx.send(&[&ping]).await?;
                recv_exact(&mut b, &ping, "churn").await?;
                close_both(&mut a, &mut b).await?;
                lives += 1;
            }
            Ok::<_, String>(lives)
        });
    }
    bounded(secs, stall, "churn", async {
        let mut lives = 0;
        while let Some(r) = set.join_next().await {
            lives += r.map_err(|e| format!("churn task failed: {e}"))??;
        }
        Ok((lives, start.elapsed().as_secs_f64()))
    })
    .await
}

/// Where the echoing end of a cross-process ping-pong is.
pub enum EchoPeer {
    /// A TCP listener in the echo process (the direct baseline).
    Direct,
    /// The echo process connects to proxy `b`; this process to proxy `a`.
    Proxy { a: ProxyEnd, b: ProxyEnd },
}

/// 64-byte ping-pong on one connection whose echoing end is ANOTHER process
/// (`ic-proxy-bench --echo-peer ...`), as two backends are: every round
/// trip wakes that process, where the in-process baseline wakes none.
pub async fn ping_pong_cross_process(
    peer: &EchoPeer,
    secs: f64,
    stall: Duration,
) -> Result<Vec<u64>, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new(me);
    let spec = match peer {
        EchoPeer::Direct => {
            cmd.args(["--echo-peer", "direct"]);
            None
        }
        EchoPeer::Proxy { a, b } => {
            let spec = transport::spec(a, b, transport::next_command());
            cmd.args(["--echo-peer", &b.to_arg()]).args([
                "--echo-key",
                &format!(
                    "{},{},{}",
                    spec.command_id,
                    a.to_arg_short(),
                    spec.local.pid
                ),
            ]);
            Some((a.clone(), spec))
        }
    };
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the echo process: {e}"))?;
    let stdout = child.stdout.take().ok_or("echo process without stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(stall, lines.next_line())
        .await
        .map_err(|_| "stall: the echo process did not start".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or("the echo process exited")?;
    let mut c = match (spec, first.strip_prefix("listening ")) {
        (None, Some(port)) => {
            let s = TcpStream::connect((
                "127.0.0.1",
                port.trim().parse::<u16>().map_err(|e| e.to_string())?,
            ))
            .await
            .map_err(|e| format!("connect to the echo process: {e}"))?;
            let hello = ProxyEnd {
                socket: Default::default(),
                dbid: 1,
                content: -1,
            };
            transport::hello_as_dialer(s, &transport::spec(&hello, &hello, 0)).await?
        }
        (Some((a, spec)), _) if first == "ready" => Conn::proxy(
            LogicalConn::connect(&a.socket, spec, &ClientOptions::default())
                .await
                .map_err(|e| e.to_string())?,
        ),
        _ => return Err(format!("echo process: {first}")),
    };
    let ping = pattern_payload(19, 0, MESSAGE);
    let rtts = bounded(secs, stall, "cross-process ping-pong", async {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut rtts = Vec::new();
        let mut n = 0;
        while Instant::now() < deadline {
            let t0 = Instant::now();
            c.tx.send(&[&ping]).await?;
            recv_exact(&mut c, &ping, "cross-process ping-pong").await?;
            if n >= WARM_UP {
                rtts.push(t0.elapsed().as_nanos() as u64);
            }
            n += 1;
        }
        c.tx.finish().await?;
        c.rx.expect_eof().await?;
        Ok(rtts)
    })
    .await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    Ok(rtts)
}

/// The echo process's side: `peer` is "direct" (listen on 127.0.0.1:0 and
/// say `listening <port>`) or a proxy end to connect to with the key
/// `command,a-dbid,a-content,a-pid` (say `ready` first, since the other end
/// connects after it). Echoes every packet until EOF.
pub async fn echo_peer_main(peer: &str, key: Option<&str>) -> Result<(), String> {
    let mut c = if peer == "direct" {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        println!("listening {port}");
        let (s, _) = l.accept().await.map_err(|e| e.to_string())?;
        let hello = ProxyEnd {
            socket: Default::default(),
            dbid: 1,
            content: -1,
        };
        transport::hello_as_acceptor(s, &transport::spec(&hello, &hello, 0)).await?
    } else {
        let b = ProxyEnd::from_arg(peer)?;
        let key = key.ok_or("--echo-key is needed with a proxy end")?;
        let f: Vec<&str> = key.split(',').collect();
        let [command, a_dbid, a_content, a_pid] = f[..] else {
            return Err(format!(
                "--echo-key {key}: expected command,dbid,content,pid"
            ));
        };
        let num = |s: &str| s.parse::<i64>().map_err(|e| format!("{s}: {e}"));
        let a = ProxyEnd {
            socket: Default::default(),
            dbid: num(a_dbid)? as u16,
            content: num(a_content)? as i16,
        };
        let mut spec = transport::spec(&a, &b, num(command)? as u32);
        spec.local.pid = num(a_pid)? as i32;
        spec.remote.pid = spec.local.pid.wrapping_add(1);
        println!("ready");
        Conn::proxy(
            LogicalConn::connect(&b.socket, spec.reversed(), &ClientOptions::default())
                .await
                .map_err(|e| e.to_string())?,
        )
    };
    while let Item::Packet(p) = c.rx.recv().await? {
        c.tx.send(&[&p]).await?;
    }
    c.tx.finish().await
}
