//! The peer mesh: one TCP link per pair of instances, carrying every logical
//! connection between them. A `PeerSlot` lives as long as its entry in the
//! map; its task dials (when this instance has the higher content, as the C
//! proxy does) or waits for the peer to dial, runs the link, and starts over
//! when the link is lost. Losing a link ends every logical connection through
//! it; nothing else.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::address_map::PeerAddr;
use crate::auth::CHALLENGE_WAIT;
use crate::context::Ctx;
use crate::protocol::EncodedHeader;
use crate::status::{PeerState, PeerStats};
use crate::tls::{TlsMode, TlsPolicy};

mod directory;
mod failure;
mod handshake;
mod link;
mod probe;
mod queue;

use crate::sync::Mutex;
pub(crate) use directory::PeerDirectory;
use failure::{LinkFailure, PEER_CLOSED};
pub(crate) use handshake::accept_peer;
use handshake::dial;
use link::run_link;
pub use probe::PROBE_SESSION_ID;
pub(crate) use queue::{LinkSecurity, NewLink, OutFrame, PeerQueue};

pub(crate) struct PeerSlot {
    pub addr: PeerAddr,
    pub stats: Arc<PeerStats>,
    /// What waits to go to the peer, and the budget it takes from.
    pub(crate) queue: PeerQueue,
    /// Cancelled when the entry leaves the map or the proxy stops.
    pub token: CancellationToken,
    accepted: mpsc::Sender<NewLink>,
    /// Whether a link is up; watched by whoever waits for it to go down.
    link_up: watch::Sender<bool>,
    /// The link in use, to end it when a reconnecting peer proves it dead.
    current_link: Mutex<Option<CancellationToken>>,
    /// Sequence number of the last link probe sent, and the last answered.
    probe_seq: AtomicU32,
    probe_answered: watch::Sender<u32>,
    /// How the link in use is protected (its secret, its TLS): a reload
    /// that requires more ends it.
    link_security: Mutex<LinkSecurity>,
    /// Why the link in use is being ended from this side, when it is.
    end_reason: Mutex<Option<String>>,
}

/// Who opens the link between this instance and a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// This instance's content is higher: it dials.
    Dial,
    /// The peer's content is higher: it dials us.
    Wait,
    /// Same content (a primary and its mirror, coordinator and standby):
    /// no traffic flows between them.
    None,
}

pub(crate) fn role(my_content: i16, my_dbid: u16, peer: &PeerAddr) -> Role {
    if peer.dbid == my_dbid || peer.content == my_content {
        Role::None
    } else if my_content > peer.content {
        Role::Dial
    } else {
        Role::Wait
    }
}

impl PeerSlot {
    /// Creates the slot and starts its task.
    pub fn start(ctx: &Arc<Ctx>, addr: PeerAddr, my_content: i16) -> Arc<PeerSlot> {
        let role = role(my_content, ctx.settings.dbid, &addr);
        let initial = match role {
            Role::None => PeerState::Unlinked,
            _ => PeerState::Connecting,
        };
        let stats = Arc::new(PeerStats::new(addr.clone(), initial));
        let (queue, rx) = PeerQueue::new(ctx.settings.peer_queue_bytes, stats.clone());
        let (accepted, accepted_rx) = mpsc::channel(1);
        let slot = Arc::new(PeerSlot {
            addr,
            stats,
            queue,
            token: ctx.links.child_token(),
            accepted,
            link_up: watch::channel(false).0,
            current_link: Mutex::new(None),
            probe_seq: AtomicU32::new(0),
            probe_answered: watch::channel(0).0,
            link_security: Mutex::new(LinkSecurity::default()),
            end_reason: Mutex::new(None),
        });
        let task_ctx = ctx.clone();
        let task_slot = slot.clone();
        ctx.tracker.spawn(async move {
            peer_task(task_ctx, task_slot, role, rx, accepted_rx).await;
        });
        slot
    }

    /// Queues a frame for the peer. Frames wait while the link is down.
    pub fn send(&self, f: OutFrame) {
        self.queue.send(f);
    }

    pub fn is_up(&self) -> bool {
        *self.link_up.borrow()
    }

    fn set_up(&self, up: bool) {
        self.link_up.send_replace(up);
    }

    /// The generation of the current (or next) link.
    pub fn generation(&self) -> u64 {
        self.queue.generation()
    }

    /// Returns once no link is up.
    pub(super) async fn link_down(&self) {
        let mut up = self.link_up.subscribe();
        // The sender lives as long as the slot: this cannot fail.
        let _ = up.wait_for(|up| !*up).await;
    }

    /// Authentication now requires `secret` (a reload turned it on or
    /// changed it): a link made without it ends at once, before it carries
    /// anything more, and is made again with it.
    pub fn require_secret(&self, secret: &Option<Arc<[u8]>>) {
        let Some(required) = secret else {
            // Turned off: links made with a secret are no less trusted.
            return;
        };
        if !self.is_up() {
            return;
        }
        let why = match self.link_security.lock().secret.as_deref() {
            Some(used) if used == &**required => return,
            None => "the link was not authenticated and a reload turned peer authentication on",
            Some(_) => "a reload changed the peer authentication secret",
        };
        log::warn!(
            "ic-proxy: peer dbid {}: {why}; ending the link to make it again with the current secret",
            self.addr.dbid
        );
        *self.end_reason.lock() = Some(format!("{why}; linking again"));
        self.end_link();
    }

    /// TLS now works by `policy` (a reload changed it): a plaintext link
    /// ends when TLS is required, and a TLS link whose peer certificate
    /// the new CA does not validate ends too; both are made again.
    pub fn require_tls(&self, policy: &TlsPolicy) {
        if !self.is_up() {
            return;
        }
        let security = self.link_security.lock().clone();
        let why = match (&security.peer_chain, policy.mode, &policy.material) {
            (None, TlsMode::Require, _) => {
                "the link is plaintext and a reload set ic_proxy.tls = require".to_string()
            }
            (Some(chain), TlsMode::On | TlsMode::Require, Some(material)) => {
                match material.check_chain(chain) {
                    Ok(()) => return,
                    Err(e) => format!(
                        "after a reload the peer's certificate no longer passes: {}",
                        crate::tls::explain(&e)
                    ),
                }
            }
            _ => return,
        };
        log::warn!(
            "ic-proxy: peer dbid {}: {why}; ending the link to make it again",
            self.addr.dbid
        );
        *self.end_reason.lock() = Some(format!("{why}; linking again"));
        self.end_link();
    }

    /// Ends the link in use (the peer task then takes the next one).
    fn end_link(&self) {
        if let Some(t) = self.current_link.lock().as_ref() {
            t.cancel();
        }
    }

    /// Waits until `bytes` of DATA may be queued for this peer; see
    /// [`PeerQueue::reserve`].
    pub async fn reserve(&self, bytes: usize) -> u32 {
        self.queue.reserve(bytes).await
    }

    /// Queues a message the proxy answers with on its own (a BYE for a
    /// logical connection it ended), counted with probe echoes: a peer that
    /// sends and never reads cannot make such answers pile up past
    /// `PROBE_ECHO_LIMIT` bytes. False, and nothing queued, past it.
    pub fn send_answer(&self, header: EncodedHeader) -> bool {
        self.queue.send_echo(header, Bytes::new()).is_ok()
    }
}

async fn peer_task(
    ctx: Arc<Ctx>,
    slot: Arc<PeerSlot>,
    role: Role,
    mut rx: mpsc::UnboundedReceiver<OutFrame>,
    mut accepted_rx: mpsc::Receiver<NewLink>,
) {
    let mut delay = ctx.settings.first_dial_delay;
    let mut last_error = String::new();
    let mut linked_before = false;
    loop {
        let dial = async {
            if role != Role::Dial {
                return std::future::pending().await;
            }
            tokio::time::sleep(delay).await;
            dial(&ctx, &slot.addr).await
        };
        let link = tokio::select! {
            _ = slot.token.cancelled() => break,
            r = dial => {
                delay = ctx.retry_interval();
                match r {
                    Ok(l) => l,
                    Err(e) => {
                        let msg = format!("cannot connect to {}: {e}", slot.addr.socket_addr_string());
                        // The same failure every second (a dead mirror) is logged once.
                        if msg != last_error {
                            log::warn!("ic-proxy: peer dbid {}: {msg}", slot.addr.dbid);
                        } else {
                            log::debug!("ic-proxy: peer dbid {}: {msg}", slot.addr.dbid);
                        }
                        slot.stats.set_error(msg.clone());
                        if slot.stats.state() == PeerState::Connected {
                            slot.stats.set_state(PeerState::Down);
                        }
                        last_error = msg;
                        continue;
                    }
                }
            }
            Some(l) = accepted_rx.recv() => l,
        };
        last_error.clear();
        let NewLink {
            stream,
            leftover,
            security,
        } = link;
        if let Some(required) = ctx.secret() {
            if security.secret.as_deref() != Some(&*required) {
                // Made while a reload changed the secret: not used.
                log::info!(
                    "ic-proxy: peer dbid {}: a new link was made without the current authentication secret; dropped",
                    slot.addr.dbid
                );
                delay = Duration::ZERO;
                continue;
            }
        }
        if ctx.tls().mode == TlsMode::Require && security.peer_chain.is_none() {
            // Made in plaintext while a reload required TLS: not used.
            log::info!(
                "ic-proxy: peer dbid {}: a new link was made in plaintext and ic_proxy.tls = require; dropped",
                slot.addr.dbid
            );
            delay = Duration::ZERO;
            continue;
        }
        slot.stats.set_protection(security.describe());
        let protection = security.transport.clone();
        *slot.link_security.lock() = security;
        slot.end_reason.lock().take();
        slot.set_up(true);
        slot.stats.set_state(PeerState::Connected);
        if linked_before {
            slot.stats.reconnects.fetch_add(1, Relaxed);
        }
        linked_before = true;
        log::info!(
            "ic-proxy: peer dbid {} (content {}) connected ({protection})",
            slot.addr.dbid,
            slot.addr.content
        );
        let linked_at = std::time::Instant::now();
        let packets_before = slot.stats.packets_in.load(Relaxed);
        let failure = run_link(&ctx, &slot, stream, leftover, &mut rx).await;
        failure.count(&ctx.status.counters);
        let mut reason = failure.to_string();
        // How long a dialer that requires authentication waits for our
        // challenge (if its settings are ours).
        let wait = ctx.settings.handshake_timeout.min(CHALLENGE_WAIT);
        if let Some(why) = slot.end_reason.lock().take() {
            reason = why;
        } else if matches!(failure, LinkFailure::PeerClosed)
            && ctx.secret().is_none()
            && slot.stats.packets_in.load(Relaxed) == packets_before
            && (wait.saturating_sub(Duration::from_millis(500))..wait + Duration::from_secs(2))
                .contains(&linked_at.elapsed())
        {
            // A dialer that requires authentication and got no challenge
            // closes the new link without a word (it cannot tell a C proxy
            // anything): say what it most likely means.
            reason = format!(
                "{PEER_CLOSED} {wait:?} after linking without sending anything, as a dialer that \
                 requires peer authentication does: is ic_proxy.peer_auth_secret_file set on dbid {} but not here?",
                slot.addr.dbid
            );
        }
        slot.set_up(false);
        // Frames queued for the dead link belong to the logical connections
        // being ended now: they are discarded, with the budget they held,
        // before those connections end; what they still send (their BYEs)
        // stays behind too: the next link starts a new generation.
        slot.queue.close_generation(&mut rx);
        let ended = ctx.registry.abort_remote(slot.addr.dbid);
        if slot.token.is_cancelled() {
            break;
        }
        slot.stats.set_state(PeerState::Down);
        slot.stats.set_error(reason.clone());
        log::warn!(
            "ic-proxy: peer dbid {}: link lost ({reason}); {ended} logical connections ended",
            slot.addr.dbid
        );
    }
    slot.set_up(false);
    ctx.registry.abort_remote(slot.addr.dbid);
}

pub(super) fn drop_packet(ctx: &Ctx, slot: &PeerSlot, why: &str) {
    ctx.status.counters.dropped_packets.fetch_add(1, Relaxed);
    slot.stats.drops.fetch_add(1, Relaxed);
    ctx.drops.warn("dropped packets", || {
        format!(
            "ic-proxy: peer dbid {}: dropped a packet: {why}",
            slot.addr.dbid
        )
    });
}
