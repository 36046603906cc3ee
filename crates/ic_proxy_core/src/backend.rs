//! Backend sessions: one Unix-socket connection per logical connection. The
//! backend says HELLO, gets HELLO_ACK, then streams ic-tcp packets; the
//! session merges what each read brought into DATA packets and sends them at
//! once (nothing waits for more data), pauses reading under flow control, and
//! writes what the other end sent back to the backend, acknowledging it.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::context::Ctx;
use crate::flow::RecvCredit;
use crate::peer::{OutFrame, PeerDirectory, PeerSlot};
use crate::pending::Pending;
use crate::protocol::{LogicalConnKey, PacketReader, PacketType};
use crate::route::{Arrival, Delivery, RouteCache, SessionShared, PACKET_COST};

/// Where a session's outgoing packets go.
enum Target {
    /// Both backends are on this instance.
    Local,
    /// The peer, and the link generation the session started in.
    Peer(Arc<PeerSlot>, u64),
}

/// Room kept free in a session's read buffer before each read.
const READ_ROOM: usize = 64 * 1024;
/// A batch written to the backend in one call once it reaches this size.
const WRITE_BATCH: usize = 256 * 1024;

struct Outbound<'a> {
    ctx: &'a Ctx,
    key: LogicalConnKey,
    target: &'a Target,
    routes: RouteCache,
}

impl Outbound<'_> {
    /// Sends DATA: first waits for room in the peer's queue budget (local
    /// delivery needs none). False, and nothing sent, if `stop` came first.
    async fn send_data(&mut self, payload: Bytes, stop: &CancellationToken) -> bool {
        let charged = match self.target {
            Target::Peer(slot, _) => tokio::select! {
                c = slot.reserve(payload.len()) => c,
                _ = stop.cancelled() => return false,
            },
            Target::Local => 0,
        };
        self.send_charged(PacketType::Data, payload, charged);
        true
    }

    fn send(&mut self, ptype: PacketType, payload: Bytes) {
        self.send_charged(ptype, payload, 0);
    }

    fn send_charged(&mut self, ptype: PacketType, payload: Bytes, charged: u32) {
        let d = self.ctx.settings.dialect;
        match self.target {
            Target::Peer(slot, generation) => {
                let header = self.key.header(ptype, d, payload.len()).encode(d);
                slot.send(OutFrame {
                    header,
                    payload,
                    echo: false,
                    generation: *generation,
                    charged,
                });
            }
            Target::Local => {
                let arrival = match ptype {
                    PacketType::Data => Arrival::Data(payload),
                    PacketType::Bye => Arrival::Bye,
                    _ => Arrival::Ack,
                };
                self.routes
                    .deliver(&self.ctx.registry, &self.key.reversed(), arrival);
            }
        }
    }
}

/// `pending` counts the connection as in its handshake until its HELLO is in.
pub(crate) async fn run_session(
    ctx: Arc<Ctx>,
    peers: Arc<PeerDirectory>,
    stream: UnixStream,
    pending: Pending,
) {
    let (mut rd, mut wr) = stream.into_split();
    // Only the HELLO is read now; data buffers come when data does.
    let mut buf = BytesMut::new();
    let hello = match tokio::time::timeout(
        ctx.settings.handshake_timeout,
        PacketReader::new(ctx.decoder).read_packet(&mut rd, &mut buf),
    )
    .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return refuse(&ctx, &e.to_string()),
        Err(_) => return refuse(&ctx, "no HELLO in time"),
    };
    drop(pending);
    let h = hello.header;
    if h.ptype != PacketType::Hello {
        return refuse(&ctx, &format!("expected HELLO, got {}", h.ptype));
    }
    let key = LogicalConnKey::from_c2p(&h);
    if key.local.dbid != ctx.settings.dbid {
        return refuse(
            &ctx,
            &format!(
                "HELLO from dbid {} but this proxy serves dbid {} ({key})",
                key.local.dbid, ctx.settings.dbid
            ),
        );
    }
    let target = if key.remote.dbid == ctx.settings.dbid {
        Target::Local
    } else {
        match peers.get(key.remote.dbid) {
            Some(slot) => Target::Peer(slot, 0),
            None => {
                return refuse(
                    &ctx,
                    &format!(
                        "HELLO for dbid {}, which is not in the address map ({key})",
                        key.remote.dbid
                    ),
                )
            }
        }
    };
    // HELLO_ACK is the HELLO with source and destination swapped.
    let d = ctx.settings.dialect;
    let ack = key.reversed().header(PacketType::HelloAck, d, 0).encode(d);
    if let Err(e) = wr.write_all(&ack).await {
        return refuse(&ctx, &format!("cannot send HELLO ACK: {e}"));
    }

    let abort = ctx.shutdown.child_token();
    let shared = Arc::new(SessionShared::new(
        key,
        ctx.settings.flow,
        ctx.queued_cap(),
        abort,
    ));
    // Register after the ACK is written, so no data overtakes it. A session
    // of a previous statement with the same key goes first.
    loop {
        match ctx.registry.register(&shared) {
            Ok(_) => break,
            Err(prev) => {
                log::info!(
                    "ic-proxy: session {key}: waiting for the previous session with this key"
                );
                tokio::select! {
                    _ = prev.closed.cancelled() => {}
                    _ = shared.abort.cancelled() => return,
                }
            }
        }
    }
    // Registered: from now on, losing the link ends this session, and its
    // frames belong to the link generation in force now.
    let target = match target {
        Target::Peer(slot, _) => {
            let generation = slot.generation();
            Target::Peer(slot, generation)
        }
        local => local,
    };
    let counters = &ctx.status.counters;
    counters.sessions_open.fetch_add(1, Relaxed);
    counters.sessions_total.fetch_add(1, Relaxed);
    if let Target::Peer(slot, _) = &target {
        slot.stats.logical_conns.fetch_add(1, Relaxed);
    }
    log::debug!("ic-proxy: session {key} registered");

    // Both directions in this one task: a logical connection costs one
    // spawn, not two (and no wake-up of another runtime thread to run the
    // second); the reader and the writer never wait on each other.
    tokio::join!(
        read_backend(&ctx, &shared, &target, rd, buf),
        write_backend(&ctx, &shared, &target, wr)
    );

    ctx.registry.unregister(&shared);
    counters.sessions_open.fetch_sub(1, Relaxed);
    if let Target::Peer(slot, _) = &target {
        slot.stats.logical_conns.fetch_sub(1, Relaxed);
    }
    log::debug!("ic-proxy: session {key} closed");
}

fn refuse(ctx: &Ctx, why: &str) {
    ctx.status
        .counters
        .rejected_connections
        .fetch_add(1, Relaxed);
    ctx.refusals.warn("refused connections", || {
        format!("ic-proxy: refused backend connection: {why}")
    });
}

/// Most buffers one writev takes (Linux's IOV_MAX).
const MAX_IOV: usize = 1024;

/// Writes every buffer of `bufs`, in order, with as few writev calls as the
/// kernel allows.
async fn write_all_vectored(wr: &mut OwnedWriteHalf, bufs: &[Bytes]) -> io::Result<()> {
    let (mut i, mut off) = (0usize, 0usize);
    let mut slices: Vec<io::IoSlice<'_>> = Vec::with_capacity(bufs.len().min(MAX_IOV));
    while i < bufs.len() {
        slices.clear();
        slices.push(io::IoSlice::new(&bufs[i][off..]));
        slices.extend(
            bufs[i + 1..]
                .iter()
                .take(MAX_IOV - 1)
                .map(|b| io::IoSlice::new(b)),
        );
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // Step over what went out: whole buffers, then part of one.
        while n > 0 && i < bufs.len() {
            let rest = bufs[i].len() - off;
            if n >= rest {
                n -= rest;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Backend -> proxy: frame ic-tcp packets, merge what one read brought into
/// DATA packets, send them now; BYE at the end of the stream.
async fn read_backend(
    ctx: &Ctx,
    shared: &SessionShared,
    target: &Target,
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
) {
    let mut out = Outbound {
        ctx,
        key: shared.key,
        target,
        routes: RouteCache::default(),
    };
    let mut runs = Vec::new();
    'read: loop {
        // Flow control: a paused sender is not read until DATA_ACKs come back.
        while shared.is_paused() && !shared.stop_reading.is_cancelled() {
            tokio::select! {
                _ = shared.resume.notified() => {}
                _ = shared.stop_reading.cancelled() => {}
            }
        }
        if buf.is_empty() {
            // An idle session holds no read buffer: wait for data first.
            buf = BytesMut::new();
            tokio::select! {
                _ = shared.stop_reading.cancelled() => break,
                r = rd.readable() => if r.is_err() { break },
            }
        }
        if buf.capacity() - buf.len() < READ_ROOM / 4 {
            // Bytes of a partial packet stay; room for the rest is made.
            buf.reserve(READ_ROOM);
        }
        let n = tokio::select! {
            _ = shared.stop_reading.cancelled() => break,
            r = rd.read_buf(&mut buf) => r,
        };
        match n {
            Ok(0) | Err(_) => {
                // End of the stream. A partial packet, or the receiver's lone
                // STOP byte, is forwarded as it is, as the C proxy does.
                if !buf.is_empty() {
                    let rest = buf.split().freeze();
                    shared.on_sent(1);
                    out.send_data(rest, &shared.stop_reading).await;
                }
                break;
            }
            Ok(_) => {}
        }
        let framed = ctx.framer.complete_runs(&buf, &mut runs);
        // Counted before they go: the peer may acknowledge a packet as soon
        // as it is sent, before this task runs again.
        if !runs.is_empty() {
            shared.on_sent(runs.len() as u32);
        }
        for &len in &runs {
            if !out
                .send_data(buf.split_to(len).freeze(), &shared.stop_reading)
                .await
            {
                break 'read;
            }
        }
        if let Err(e) = framed {
            ctx.status
                .counters
                .rejected_connections
                .fetch_add(1, Relaxed);
            log::warn!(
                "ic-proxy: session {}: {e}; closing this logical connection",
                shared.key
            );
            shared.abort.cancel();
            break;
        }
    }
    // BYE is never dropped: the other end learns the stream ended however it
    // ended (it reports a premature end if EOS was not in it). Unless the
    // proxy ended this connection and sent the BYE itself already.
    if !shared.bye_answered.load(Relaxed) {
        out.send(PacketType::Bye, Bytes::new());
    }
}

/// Proxy -> backend: write what the other end sent, acknowledge it, and
/// half-close on BYE.
async fn write_backend(ctx: &Ctx, shared: &SessionShared, target: &Target, mut wr: OwnedWriteHalf) {
    let mut acks = Outbound {
        ctx,
        key: shared.key,
        target,
        routes: RouteCache::default(),
    };
    let mut credit = RecvCredit::default();
    // Payloads go to the backend as they arrived, many per writev: no copy.
    let mut out: Vec<Bytes> = Vec::new();
    loop {
        let first = tokio::select! {
            _ = shared.abort.cancelled() => break,
            d = shared.inbox.recv() => d,
        };
        let mut packets = 0u32;
        let mut bytes = 0usize;
        let mut bye = false;
        let mut next = Some(first);
        while let Some(d) = next.take() {
            match d {
                Delivery::Data(b) => {
                    bytes += b.len();
                    packets += 1;
                    if !b.is_empty() {
                        out.push(b);
                    }
                }
                Delivery::Bye => bye = true,
            }
            if !bye && bytes < WRITE_BATCH && out.len() < MAX_IOV {
                next = shared.inbox.try_recv();
            }
        }
        // What these packets counted against the session's queue bound.
        let cost = bytes + packets as usize * PACKET_COST;
        if !out.is_empty() {
            let written: io::Result<()> = tokio::select! {
                _ = shared.abort.cancelled() => break,
                r = write_all_vectored(&mut wr, &out) => r,
            };
            shared.queued.fetch_sub(cost, Relaxed);
            if let Err(e) = written {
                log::info!("ic-proxy: session {}: backend gone ({e})", shared.key);
                shared.abort.cancel();
                break;
            }
            out.clear();
            if shared.inbox.release_if_empty() {
                // Nothing more to write: an idle session keeps no buffer.
                out = Vec::new();
            }
        } else {
            // Empty DATA packets: nothing to write, their cost to release.
            shared.queued.fetch_sub(cost, Relaxed);
        }
        for _ in 0..credit.on_delivered(packets, &ctx.settings.flow) {
            acks.send(PacketType::DataAck, Bytes::new());
        }
        if bye {
            break;
        }
    }
    // The backend reads EOF: after the other end's BYE, or because the
    // logical connection was cut.
    let _ = wr.shutdown().await;
}
