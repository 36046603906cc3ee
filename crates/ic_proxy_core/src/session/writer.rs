//! Proxy -> backend: the session's writer writes what the other end sent
//! (payloads as they arrived, many per writev, no copy), acknowledges every
//! ack interval of DATA packets, and half-closes on BYE.

use std::io;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;

use super::limits::{PACKET_COST, WRITE_BATCH};
use super::reader::Outbound;
use super::{Arrival, BackendSession, Target};
use crate::context::Ctx;
use crate::flow::RecvCredit;
use crate::protocol::PacketType;
use crate::route::RouteCache;
use crate::vectored::{write_all_vectored, MAX_IOV};

/// Proxy -> backend: write what the other end sent, acknowledge it, and
/// half-close on BYE.
pub(super) async fn write_backend(
    ctx: &Ctx,
    shared: &BackendSession,
    target: &Target,
    mut wr: OwnedWriteHalf,
) {
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
                Arrival::Data(b) => {
                    bytes += b.len();
                    packets += 1;
                    if !b.is_empty() {
                        out.push(b);
                    }
                }
                Arrival::Bye => bye = true,
                // Acknowledgements go to the sending side, never here.
                Arrival::Ack => {}
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
