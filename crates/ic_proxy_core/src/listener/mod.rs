//! The two listeners, peers (TCP) and backends (Unix), on one accept loop:
//! [`Acceptor::next`] hands out connections and rides out the failures a
//! listener can get past (out of descriptors, of memory, a connection gone
//! before it was accepted), and [`BindRetry`] reports a listener that
//! cannot be made and tries again every second. Admission (how many
//! connections may be in their handshake) is checked by each side, which
//! then starts the handshake; neither reads a byte itself.

mod backends;
mod peers;

pub use backends::bind_backend_socket;
pub(crate) use backends::serve_backends;
pub(crate) use peers::serve_peers;

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::context::Ctx;
use crate::pending::{AcceptFailure, AdmissionCaps, SpareDescriptor};
use crate::status::ListenerStatus;

/// Pause after an accept that failed for want of memory, or of descriptors
/// with no spare to shed the connection with: short enough that a backend
/// hardly notices, long enough that the listener does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long a listener that cannot be made waits before it tries again.
const BIND_RETRY: Duration = Duration::from_secs(1);

/// A listening socket of either kind.
pub(crate) trait Listen {
    type Stream;
    type From;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::From)>>;
}

impl Listen for TcpListener {
    type Stream = tokio::net::TcpStream;
    type From = std::net::SocketAddr;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::From)>> {
        TcpListener::poll_accept(self, cx)
    }
}

impl Listen for UnixListener {
    type Stream = tokio::net::UnixStream;
    type From = tokio::net::unix::SocketAddr;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::From)>> {
        UnixListener::poll_accept(self, cx)
    }
}

/// Why [`Acceptor::next`] returned no connection.
#[derive(Debug)]
pub(crate) enum AcceptEnd {
    /// The listener's token was cancelled.
    Cancelled,
    /// The listener is broken (anything but a shortage or a lost
    /// connection): the caller makes a new one.
    Broken(io::Error),
}

/// What one listener keeps to get past failed accepts without spinning.
pub(crate) struct Acceptor {
    /// "peer" or "backend", for the log.
    what: &'static str,
    spare: SpareDescriptor,
    /// The open files limit at start, for the log.
    nofile: Option<usize>,
}

impl Acceptor {
    pub fn new(what: &'static str, caps: &AdmissionCaps) -> Acceptor {
        Acceptor {
            what,
            spare: SpareDescriptor::open(),
            nofile: caps.nofile,
        }
    }

    /// The next connection on `listener`. Cancel-safe: it may be dropped in
    /// a `select!` at any await.
    pub async fn next<L: Listen>(
        &mut self,
        ctx: &Ctx,
        listener: &L,
        token: &CancellationToken,
    ) -> Result<(L::Stream, L::From), AcceptEnd> {
        loop {
            let accepted = tokio::select! {
                _ = token.cancelled() => return Err(AcceptEnd::Cancelled),
                r = poll_fn(|cx| listener.poll_accept(cx)) => r,
            };
            let e = match accepted {
                Ok(c) => return Ok(c),
                Err(e) => e,
            };
            match AcceptFailure::of(&e) {
                AcceptFailure::Fatal => return Err(AcceptEnd::Broken(e)),
                failure => {
                    let shed = |cx: &mut Context<'_>| listener.poll_accept(cx).map_ok(drop);
                    if !self.ride_out(ctx, failure, &e, token, shed).await {
                        return Err(AcceptEnd::Cancelled);
                    }
                }
            }
        }
    }

    /// Out of descriptors, the spare is given up so that a waiting
    /// connection can be accepted (by `shed`, which closes it) and the spare
    /// taken back: each failure drains one connection from the queue. Linux
    /// reports EMFILE before it looks at the queue, so there may be none:
    /// then the listener just waits for the next one. Anything else (or no
    /// spare) waits [`ACCEPT_BACKOFF`]. Logged rate-limited; false when
    /// `token` was cancelled meanwhile.
    async fn ride_out(
        &mut self,
        ctx: &Ctx,
        failure: AcceptFailure,
        e: &io::Error,
        token: &CancellationToken,
        mut shed: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
    ) -> bool {
        let what = self.what;
        match failure {
            AcceptFailure::ConnectionGone => return true,
            AcceptFailure::OutOfDescriptors if self.spare.release() => {
                // Only a connection already waiting: never wait for one here
                // (so nothing awaits between the release and the restore).
                let shed = poll_fn(|cx| Poll::Ready(shed(cx))).await;
                self.spare.restore();
                match shed {
                    // Nothing waiting; the listener's readiness is cleared.
                    Poll::Pending => return true,
                    Poll::Ready(Ok(())) => {
                        let limit = self.nofile.map_or("unlimited".into(), |n| n.to_string());
                        ctx.refuse(|| {
                            format!(
                                "ic-proxy: accepting a {what} connection failed ({e}); closed it with the spare descriptor; raise the open files limit ({limit})"
                            )
                        });
                        return true;
                    }
                    Poll::Ready(Err(_)) => {}
                }
            }
            _ => {}
        }
        ctx.refusals.warn("accept failures", || {
            format!(
                "ic-proxy: accepting a {what} connection failed ({e}); retrying in {ACCEPT_BACKOFF:?}"
            )
        });
        tokio::select! {
            _ = token.cancelled() => false,
            _ = tokio::time::sleep(ACCEPT_BACKOFF) => true,
        }
    }
}

/// A listener that cannot be made: the failure shows in the status (and in
/// the log once per distinct error) and it is tried again every second.
#[derive(Default)]
pub(crate) struct BindRetry {
    last_error: String,
}

impl BindRetry {
    /// Reports the failure to listen on `where_`; the caller then waits
    /// [`BindRetry::pause`].
    pub fn failed(&mut self, status: &ListenerStatus, where_: &str, e: &io::Error) {
        let msg = format!("cannot listen on {where_}: {e}");
        if msg != self.last_error {
            log::warn!("ic-proxy: {msg}; retrying every second");
        }
        status.set_failed(msg.clone());
        self.last_error = msg;
    }

    /// Reports the listener up on `where_`.
    pub fn up(&mut self, status: &ListenerStatus, what: &str, where_: String) {
        log::info!("ic-proxy: listening for {what} on {where_}");
        status.set_up(where_);
        self.last_error.clear();
    }

    /// The wait before the next try.
    pub fn pause() -> tokio::time::Sleep {
        tokio::time::sleep(BIND_RETRY)
    }
}
