//! Backend sessions: one Unix-socket connection per logical connection. The
//! backend says HELLO, gets HELLO_ACK, then streams ic-tcp packets; the
//! session merges what each read brought into DATA packets and sends them at
//! once (nothing waits for more data), pauses reading under flow control, and
//! writes what the other end sent back to the backend, acknowledging it.
//!
//! The folder: `shared.rs` is the part other tasks reach ([`BackendSession`]),
//! `reader.rs` the backend -> proxy direction, `writer.rs` proxy -> backend,
//! `limits.rs` every byte bound. This file runs a session: HELLO, HELLO_ACK,
//! registration, then both directions in one task.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::context::Ctx;
use crate::peer::{PeerDirectory, PeerSlot};
use crate::pending::Pending;
use crate::protocol::{LogicalConnKey, PacketReader, PacketType};

pub(crate) mod limits;
mod reader;
pub(crate) mod shared;
mod writer;

use shared::{Arrival, BackendSession};

use reader::read_backend;
use writer::write_backend;

/// Where a session's outgoing packets go.
pub(super) enum Target {
    /// Both backends are on this instance.
    Local,
    /// The peer, and the link generation the session started in.
    Peer(Arc<PeerSlot>, u64),
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
    let shared = Arc::new(BackendSession::new(
        key,
        ctx.settings.flow,
        limits::queued_cap(&ctx.settings),
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
    if counters.sessions_open.fetch_sub(1, Relaxed) == 1 {
        ctx.sessions_done.notify_waiters();
    }
    if let Target::Peer(slot, _) = &target {
        slot.stats.logical_conns.fetch_sub(1, Relaxed);
    }
    log::debug!("ic-proxy: session {key} closed");
}

fn refuse(ctx: &Ctx, why: &str) {
    ctx.refuse(|| format!("ic-proxy: refused backend connection: {why}"));
}
