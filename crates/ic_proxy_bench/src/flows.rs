//! One-way streams: every logical connection sends pattern packets for a
//! fixed time, then says BYE; its receiver digests every byte. A run fails
//! (never on speed) when a stream loses, reorders or corrupts a byte, or when
//! no byte arrives anywhere for the stall timeout while a stream is open.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ic_proxy_client::{pattern_payload, StreamDigest};
use ic_proxy_core::protocol::DEFAULT_PACKET_SIZE;
use tokio::task::JoinSet;

use crate::machine::cpu_seconds;
use crate::transport::{Conn, Endpoints, Item, LEN_FIELD};

/// Distinct packets per stream; packet i carries pool[i % POOL].
const POOL: usize = 8;
/// How often the watchdog looks for progress.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// `conns` logical connections between one pair of endpoints.
pub struct Route {
    pub ep: Arc<Endpoints>,
    pub conns: usize,
}

/// What one run moved.
#[derive(Clone, Debug)]
pub struct FlowOutcome {
    /// ic-tcp bytes delivered (payload + the 4-byte length of each packet).
    pub bytes: u64,
    pub packets: u64,
    /// From the start to the last receiver's EOF.
    pub secs: f64,
    /// CPU seconds each watched process spent during the run.
    pub cpu: Vec<f64>,
}

impl FlowOutcome {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs
    }
    pub fn packets_per_s(&self) -> f64 {
        self.packets as f64 / self.secs
    }
    /// CPU seconds per GB (1e9 ic-tcp bytes) of each watched process.
    pub fn cpu_per_gb(&self) -> Vec<f64> {
        let gb = self.bytes as f64 / 1e9;
        self.cpu.iter().map(|c| c / gb).collect()
    }
}

enum StreamEnd {
    Sent {
        stream: usize,
        packets: u64,
    },
    Received {
        stream: usize,
        digest: StreamDigest,
        packets: u64,
        at: Instant,
    },
}

/// Packets of `size` payload bytes on every connection of `routes` for
/// `secs`; the CPU time of the processes `watch` is measured around it.
/// Each write carries as many packets as fit in gp_max_packet_size (at least
/// one), like a backend's send buffer.
pub async fn one_way(
    routes: &[Route],
    size: usize,
    secs: f64,
    stall: Duration,
    watch: &[u32],
) -> Result<FlowOutcome, String> {
    let mut pairs = Vec::new();
    for r in routes {
        for _ in 0..r.conns {
            pairs.push(r.ep.open().await?);
        }
    }
    let per_write = (DEFAULT_PACKET_SIZE / (size + LEN_FIELD)).max(1);
    let pools: Vec<Arc<Vec<Vec<u8>>>> = (0..pairs.len())
        .map(|i| {
            let seed = ((size as u64) << 32) | i as u64;
            Arc::new(
                (0..POOL)
                    .map(|j| pattern_payload(seed, j as u64, size))
                    .collect(),
            )
        })
        .collect();
    let streams = pairs.len();
    let received = Arc::new(AtomicU64::new(0));
    let cpu0: Vec<Option<f64>> = watch.iter().map(|p| cpu_seconds(*p)).collect();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    for (i, (a, b)) in pairs.into_iter().enumerate() {
        set.spawn(send(i, a, pools[i].clone(), per_write, deadline));
        set.spawn(receive(i, b, size, received.clone()));
    }

    let mut sent = vec![None; streams];
    let mut got = vec![None; streams];
    let mut last_end = start;
    let mut seen = 0;
    let mut last_progress = Instant::now();
    while !set.is_empty() {
        tokio::select! {
            r = set.join_next() => match r {
                Some(Ok(Ok(StreamEnd::Sent { stream, packets }))) => sent[stream] = Some(packets),
                Some(Ok(Ok(StreamEnd::Received { stream, digest, packets, at }))) => {
                    got[stream] = Some((digest, packets));
                    last_end = last_end.max(at);
                }
                Some(Ok(Err(e))) => {
                    set.abort_all();
                    return Err(e);
                }
                Some(Err(e)) => {
                    set.abort_all();
                    return Err(format!("a stream task failed: {e}"));
                }
                None => break,
            },
            _ = tokio::time::sleep(WATCH_EVERY) => {
                let now = received.load(Relaxed);
                if now != seen {
                    seen = now;
                    last_progress = Instant::now();
                } else if last_progress.elapsed() >= stall {
                    let open = got.iter().filter(|g| g.is_none()).count();
                    set.abort_all();
                    return Err(format!(
                        "stall: no byte arrived for {stall:?}; {open} of {streams} streams still open"
                    ));
                }
            }
        }
    }
    let cpu: Vec<f64> = watch
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| match (cpu_seconds(*p), c0) {
            (Some(c1), Some(c0)) => c1 - c0,
            _ => f64::NAN,
        })
        .collect();
    let secs = last_end.duration_since(start).as_secs_f64();

    let mut checks = Vec::new();
    for i in 0..streams {
        let (Some(n_sent), Some((digest, n_got))) = (sent[i], got[i]) else {
            return Err(format!("stream {i} did not finish"));
        };
        if n_sent != n_got {
            return Err(format!(
                "stream {i}: {n_sent} packets sent, {n_got} received"
            ));
        }
        checks.push((i, pools[i].clone(), n_sent, digest));
    }
    let packets: u64 = checks.iter().map(|c| c.2).sum();
    verify_digests(checks).await?;
    Ok(FlowOutcome {
        bytes: packets * (size + LEN_FIELD) as u64,
        packets,
        secs,
        cpu,
    })
}

async fn send(
    stream: usize,
    mut c: Conn,
    pool: Arc<Vec<Vec<u8>>>,
    per_write: usize,
    deadline: Instant,
) -> Result<StreamEnd, String> {
    let mut batch: Vec<&[u8]> = Vec::with_capacity(per_write);
    let mut i = 0u64;
    while Instant::now() < deadline {
        batch.clear();
        for k in 0..per_write as u64 {
            batch.push(&pool[((i + k) % POOL as u64) as usize]);
        }
        c.tx.send(&batch)
            .await
            .map_err(|e| format!("stream {stream}: send: {e}"))?;
        i += per_write as u64;
    }
    c.tx.finish()
        .await
        .map_err(|e| format!("stream {stream}: BYE: {e}"))?;
    // The receiver's BYE ends the connection, as in a backend's teardown.
    c.rx.expect_eof()
        .await
        .map_err(|e| format!("stream {stream}: sender side: {e}"))?;
    Ok(StreamEnd::Sent { stream, packets: i })
}

async fn receive(
    stream: usize,
    mut c: Conn,
    size: usize,
    progress: Arc<AtomicU64>,
) -> Result<StreamEnd, String> {
    let mut digest = StreamDigest::new();
    let mut packets = 0u64;
    while let Item::Packet(p) =
        c.rx.recv()
            .await
            .map_err(|e| format!("stream {stream}: receive: {e}"))?
    {
        if p.len() != size {
            return Err(format!(
                "stream {stream}: packet {packets} has {} bytes, {size} were sent",
                p.len()
            ));
        }
        digest.update(&p);
        packets += 1;
        progress.fetch_add(p.len() as u64, Relaxed);
    }
    let at = Instant::now();
    c.tx.finish()
        .await
        .map_err(|e| format!("stream {stream}: receiver BYE: {e}"))?;
    Ok(StreamEnd::Received {
        stream,
        digest,
        packets,
        at,
    })
}

/// A stream to check: its index, its sender's packets, how many were sent,
/// and the receiver's digest.
type Check = (usize, Arc<Vec<Vec<u8>>>, u64, StreamDigest);

/// Each receiver's digest against the stream its sender sent, computed after
/// the timed part on all cores.
async fn verify_digests(checks: Vec<Check>) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = checks.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = checks
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        for (i, pool, n, got) in part {
                            let mut want = StreamDigest::new();
                            for k in 0..*n {
                                want.update(&pool[(k % POOL as u64) as usize]);
                            }
                            if want != *got {
                                return Err(format!(
                                    "stream {i}: the bytes received differ from the bytes sent (digest {:#x}, expected {:#x})",
                                    got.value(),
                                    want.value()
                                ));
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("digest thread panicked".into()))
            })
        })
    })
    .await
    .map_err(|e| format!("digest task failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Arc<Vec<Vec<u8>>> {
        Arc::new(
            (0..POOL)
                .map(|j| pattern_payload(5, j as u64, 100))
                .collect(),
        )
    }

    fn digest_of(pool: &[Vec<u8>], n: u64) -> StreamDigest {
        let mut d = StreamDigest::new();
        for k in 0..n {
            d.update(&pool[(k % POOL as u64) as usize]);
        }
        d
    }

    #[tokio::test]
    async fn digests_catch_a_lost_or_changed_packet() {
        let p = pool();
        let good = digest_of(&p, 20);
        assert!(verify_digests(vec![(0, p.clone(), 20, good)]).await.is_ok());
        // One packet missing, the count still claimed: caught.
        let lost = digest_of(&p, 19);
        let e = verify_digests(vec![(0, p.clone(), 20, good), (1, p.clone(), 20, lost)])
            .await
            .unwrap_err();
        assert!(e.starts_with("stream 1: the bytes received differ"), "{e}");
        // Two packets swapped: caught.
        let mut swapped = StreamDigest::new();
        for k in [1u64, 0].into_iter().chain(2..20) {
            swapped.update(&p[(k % POOL as u64) as usize]);
        }
        assert!(verify_digests(vec![(3, p, 20, swapped)]).await.is_err());
    }
}
