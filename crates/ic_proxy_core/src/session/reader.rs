//! Backend -> proxy: the session's reader frames the backend's ic-tcp
//! packets, merges what one read brought into DATA packets and sends them
//! at once (to the peer's queue, or to a local receiver), pauses under flow
//! control, and says BYE at the end.

use std::sync::atomic::Ordering::Relaxed;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::unix::OwnedReadHalf;
use tokio_util::sync::CancellationToken;

use super::limits::READ_ROOM;
use super::{Arrival, BackendSession, Target};
use crate::context::Ctx;
use crate::peer::OutFrame;
use crate::protocol::{LogicalConnKey, PacketType};
use crate::route::RouteCache;

pub(super) struct Outbound<'a> {
    pub ctx: &'a Ctx,
    pub key: LogicalConnKey,
    pub target: &'a Target,
    pub routes: RouteCache,
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

    pub(super) fn send(&mut self, ptype: PacketType, payload: Bytes) {
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

/// Backend -> proxy: frame ic-tcp packets, merge what one read brought into
/// DATA packets, send them now; BYE at the end of the stream.
pub(super) async fn read_backend(
    ctx: &Ctx,
    shared: &BackendSession,
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
