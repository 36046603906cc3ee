//! The peer listener: this instance's map entry, bound as the C proxy binds
//! it, admitting connections into the peer handshake.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{AcceptEnd, Acceptor, BindRetry};
use crate::address_map::PeerAddr;
use crate::context::Ctx;
use crate::peer::{accept_peer, PeerDirectory};
use crate::pending::{AdmissionCaps, Pending, PendingLimits};

const LISTEN_BACKLOG: i32 = 1024;

/// Binds `addr` as the C proxy does: the entry's own address, SO_REUSEADDR,
/// backlog 1024.
async fn bind_peer(addr: &PeerAddr) -> io::Result<TcpListener> {
    let target = tokio::net::lookup_host(addr.socket_addr_string())
        .await?
        .next()
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address")
        })?;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&target.into())?;
    sock.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(sock.into())
}

/// Serves peers on `addr` (or on `injected`, first) until `token` is
/// cancelled; a listener that cannot be made or breaks is made again.
pub(crate) async fn serve_peers(
    ctx: Arc<Ctx>,
    peers: Arc<PeerDirectory>,
    addr: PeerAddr,
    mut injected: Option<TcpListener>,
    token: CancellationToken,
) {
    let caps = ctx.caps;
    let pending = PendingLimits::new(caps.pending_peers, caps.pending_peers_per_source);
    let mut acceptor = Acceptor::new("peer", &caps);
    let mut retry = BindRetry::default();
    let status = &ctx.status.peer_listener;
    loop {
        let listener = match injected.take() {
            Some(l) => Ok(l),
            None => bind_peer(&addr).await,
        };
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                retry.failed(status, &addr.socket_addr_string(), &e);
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = BindRetry::pause() => continue,
                }
            }
        };
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        retry.up(status, "peers", local);
        loop {
            match acceptor.next(&ctx, &listener, &token).await {
                Ok((s, from)) => {
                    // Refused: closed here, when `s` drops.
                    if let Some(admitted) = admit_peer(&ctx, &caps, &pending, &s, from) {
                        let (ctx2, peers2) = (ctx.clone(), peers.clone());
                        // accept_peer returns once the handshake is over
                        // (the link then runs in the peer's slot).
                        ctx.tracker.spawn(async move {
                            accept_peer(ctx2, &peers2, s, from).await;
                            drop(admitted);
                        });
                    }
                }
                Err(AcceptEnd::Cancelled) => return,
                Err(AcceptEnd::Broken(e)) => {
                    status.set_failed(format!("accept failed: {e}"));
                    break;
                }
            }
        }
    }
}

/// Some(guard) when a new peer connection may start its handshake, which it
/// is in until the guard drops. None: it was refused, counted and logged,
/// and the caller closes it at once.
fn admit_peer(
    ctx: &Ctx,
    caps: &AdmissionCaps,
    pending: &Arc<PendingLimits>,
    s: &tokio::net::TcpStream,
    from: SocketAddr,
) -> Option<Pending> {
    let why = match caps.short_of_descriptors(s.as_raw_fd().max(0) as usize) {
        Some(why) => why,
        None => match pending.admit(Some(from.ip())) {
            Ok(admitted) => return Some(admitted),
            Err(refusal) => refusal.to_string(),
        },
    };
    ctx.refuse(|| format!("ic-proxy: refused peer connection from {from}: {why}"));
    None
}
