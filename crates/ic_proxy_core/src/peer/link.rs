//! One established link to a peer: its writer drains the peer's queue in
//! batches, its reader frames packets and hands each to the session of its
//! logical connection (or answers a probe). It never dials or handshakes:
//! the slot's task gives it a link that is ready.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::failure::LinkFailure;
use super::probe::{echo_probe, PROBE_SESSION_ID};
use super::{drop_packet, OutFrame, PeerSlot};
use crate::auth::AUTH_SESSION_ID;
use crate::context::Ctx;
use crate::protocol::{Header, HeaderError, LogicalConnKey, PacketReader, PacketType};
use crate::route::RouteCache;
use crate::session::shared::Arrival;
use crate::tls::{LinkStream, ReadHalf, WriteHalf};

/// How long a closing link may take to send what is queued.
const FLUSH_GRACE: Duration = Duration::from_millis(500);

/// A batch of frames is written in one call once it reaches this size.
const WRITE_BATCH: usize = 256 * 1024;
/// Room kept free in a link's read buffer before each read.
const READ_ROOM: usize = 64 * 1024;

/// Runs one established link until it fails or the slot is cancelled;
/// returns why it ended (not counted yet).
pub(super) async fn run_link(
    ctx: &Arc<Ctx>,
    slot: &Arc<PeerSlot>,
    stream: LinkStream,
    leftover: BytesMut,
    rx: &mut mpsc::UnboundedReceiver<OutFrame>,
) -> LinkFailure {
    let (rd, wr) = stream.split();
    let link = slot.token.child_token();
    *slot.current_link.lock() = Some(link.clone());
    let reader = {
        let ctx = ctx.clone();
        let slot = slot.clone();
        let link = link.clone();
        tokio::spawn(async move {
            let r = read_link(&ctx, &slot, rd, leftover, &link).await;
            link.cancel();
            r
        })
    };
    let write_result = write_link(slot, wr, rx, &link).await;
    link.cancel();
    let read_result = reader
        .await
        .unwrap_or_else(|e| LinkFailure::ReaderTask(e.to_string()));
    match write_result {
        Err(e) => LinkFailure::Write(e),
        Ok(()) if slot.token.is_cancelled() => LinkFailure::Removed,
        Ok(()) => read_result,
    }
}

async fn write_link(
    slot: &PeerSlot,
    mut wr: WriteHalf,
    rx: &mut mpsc::UnboundedReceiver<OutFrame>,
    link: &CancellationToken,
) -> io::Result<()> {
    let mut out: Vec<u8> = Vec::with_capacity(WRITE_BATCH + 64 * 1024);
    loop {
        let first = tokio::select! {
            _ = link.cancelled() => {
                flush_queued(slot, &mut wr, rx).await;
                break;
            }
            f = rx.recv() => match f { Some(f) => f, None => break },
        };
        let mut packets = 0u64;
        let mut charged = 0usize;
        // The queue holds only this link's frames: those of connections cut
        // with an earlier link are refused or discarded there
        // (`PeerQueue::send`, `PeerQueue::close_generation`).
        let mut add = |f: OutFrame, out: &mut Vec<u8>| {
            charged += slot.queue.taken(&f);
            out.extend_from_slice(&f.header);
            out.extend_from_slice(&f.payload);
            packets += 1;
        };
        add(first, &mut out);
        // Send what is queued now, without waiting for more.
        while out.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => add(f, &mut out),
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            _ = link.cancelled() => None,
            r = wr.write_all(&out) => Some(r),
        };
        // Written or not, these frames have left the queue.
        slot.queue.release(charged);
        match written {
            None => break,
            Some(r) => r?,
        }
        slot.stats.bytes_out.fetch_add(out.len() as u64, Relaxed);
        slot.stats.packets_out.fetch_add(packets, Relaxed);
        out.clear();
        if out.capacity() > 4 * WRITE_BATCH {
            out.shrink_to(WRITE_BATCH + 64 * 1024);
        }
    }
    let _ = wr.shutdown().await;
    Ok(())
}

/// On a clean close (removed from the map, proxy stopping), what is queued
/// still goes out: the BYEs of the logical connections just ended. Bounded
/// in time; a peer that does not read gets nothing more.
async fn flush_queued(
    slot: &PeerSlot,
    wr: &mut WriteHalf,
    rx: &mut mpsc::UnboundedReceiver<OutFrame>,
) {
    let mut out = Vec::new();
    while let Ok(f) = rx.try_recv() {
        let charged = slot.queue.taken(&f);
        slot.queue.release(charged);
        out.extend_from_slice(&f.header);
        out.extend_from_slice(&f.payload);
    }
    if !out.is_empty() {
        let _ = tokio::time::timeout(FLUSH_GRACE, wr.write_all(&out)).await;
    }
}

async fn read_link(
    ctx: &Arc<Ctx>,
    slot: &PeerSlot,
    mut rd: ReadHalf,
    mut buf: BytesMut,
    link: &CancellationToken,
) -> LinkFailure {
    let mut routes = RouteCache::default();
    let reader = PacketReader::new(ctx.decoder);
    let me = ctx.settings.dbid;
    loop {
        loop {
            let p = match ctx.decoder.decode(&mut buf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                // A DATA packet over max_packet_size ends its own logical
                // connection, not the link: the stream is still in step.
                Err(e @ HeaderError::LengthAboveMax { .. }) => {
                    match ctx.decoder.skip_oversized(&mut buf) {
                        Ok(Some(h)) => {
                            slot.stats.packets_in.fetch_add(1, Relaxed);
                            slot.stats.bytes_in.fetch_add(u64::from(h.len), Relaxed);
                            oversized_data(ctx, slot, &h);
                            continue;
                        }
                        // Its payload is still to come.
                        Ok(None) => break,
                        // Not a DATA packet: the length is what is wrong.
                        Err(_) => return LinkFailure::Malformed(reader.explain(&e, &buf)),
                    }
                }
                Err(e) => return LinkFailure::Malformed(reader.explain(&e, &buf)),
            };
            if link.is_cancelled() {
                // Ended from this side (a reload requires another secret):
                // not one more packet of it is taken.
                return LinkFailure::Closed;
            }
            slot.stats.packets_in.fetch_add(1, Relaxed);
            slot.stats
                .bytes_in
                .fetch_add(u64::from(p.header.len), Relaxed);
            let h = &p.header;
            let arrival = match h.ptype {
                PacketType::Data => Arrival::Data(p.payload),
                PacketType::Bye => Arrival::Bye,
                PacketType::DataAck => Arrival::Ack,
                PacketType::PeerQuit => return LinkFailure::PeerQuit,
                other => {
                    drop_packet(
                        ctx,
                        slot,
                        &format!("unexpected {other} on an established link"),
                    );
                    continue;
                }
            };
            if h.session_id == AUTH_SESSION_ID {
                return LinkFailure::AuthAsked;
            }
            if h.session_id == PROBE_SESSION_ID && h.dst.pid == 0 && h.dst.dbid == me {
                echo_probe(ctx, slot, h, arrival);
                continue;
            }
            if h.dst.dbid != me || h.src.dbid != slot.addr.dbid {
                drop_packet(
                    ctx,
                    slot,
                    &format!(
                        "{} from dbid {} to dbid {} arrived on the link of dbid {}",
                        h.ptype, h.src.dbid, h.dst.dbid, slot.addr.dbid
                    ),
                );
                continue;
            }
            routes.deliver(&ctx.registry, &LogicalConnKey::from_p2c(h), arrival);
        }
        if buf.capacity() - buf.len() < READ_ROOM / 4 {
            buf.reserve(READ_ROOM);
        }
        tokio::select! {
            _ = link.cancelled() => return LinkFailure::Closed,
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => return LinkFailure::PeerClosed,
                Ok(_) => {}
                Err(e) => return LinkFailure::Read(e),
            },
        }
    }
}

/// A DATA packet longer than `ic_proxy.max_packet_size` allows: its logical
/// connection ends (the receiver reads end of stream, the sender's proxy
/// gets a BYE), and the log says why; the link and every other connection
/// on it carry on.
fn oversized_data(ctx: &Ctx, slot: &PeerSlot, h: &Header) {
    let me = ctx.settings.dbid;
    if h.dst.dbid != me || h.src.dbid != slot.addr.dbid {
        return drop_packet(
            ctx,
            slot,
            &format!(
                "an oversized DATA from dbid {} to dbid {} arrived on the link of dbid {}",
                h.src.dbid, h.dst.dbid, slot.addr.dbid
            ),
        );
    }
    ctx.status.counters.dropped_packets.fetch_add(1, Relaxed);
    slot.stats.drops.fetch_add(1, Relaxed);
    let payload = usize::from(h.len).saturating_sub(ctx.settings.dialect.header_len());
    ctx.registry.end_connection(
        &LogicalConnKey::from_p2c(h),
        &format!(
            "DATA of {payload} bytes from dbid {} is over ic_proxy.max_packet_size {} \
             (every instance needs the same gp_max_packet_size)",
            h.src.dbid, ctx.settings.max_packet_size
        ),
    );
}
