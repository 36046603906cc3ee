//! The peer mesh: one TCP link per pair of instances, carrying every logical
//! connection between them. A `PeerSlot` lives as long as its entry in the
//! map; its task dials (when this instance has the higher content, as the C
//! proxy does) or waits for the peer to dial, runs the link, and starts over
//! when the link is lost. Losing a link ends every logical connection through
//! it; nothing else.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::auth::{self, AuthMessage, Role as AuthRole, AUTH_SESSION_ID};
use crate::config::PeerAddr;
use crate::protocol::{EncodedHeader, Endpoint, Header, LogicalConnKey, PacketReader, PacketType};
use crate::proxy::Ctx;
use crate::status::{PeerState, PeerStats};

mod link;
mod probe;
mod queue;

use link::{run_link, PEER_CLOSED};
use probe::LINK_PROBE_TIMEOUT;
pub use probe::PROBE_SESSION_ID;
pub(crate) use queue::{NewLink, OutFrame, PeerQueue};

pub(crate) struct PeerSlot {
    pub addr: PeerAddr,
    pub stats: Arc<PeerStats>,
    /// What waits to go to the peer, and the budget it takes from.
    pub(crate) queue: PeerQueue,
    /// Cancelled when the entry leaves the map or the proxy stops.
    pub token: CancellationToken,
    accepted: mpsc::Sender<NewLink>,
    link_up: AtomicBool,
    /// The link in use, to end it when a reconnecting peer proves it dead.
    current_link: Mutex<Option<CancellationToken>>,
    /// Sequence number of the last link probe sent, and the last answered.
    probe_seq: AtomicU32,
    probe_answered: watch::Sender<u32>,
    /// The authentication secret the link in use was made with (None: not
    /// authenticated): a reload that requires another one ends it.
    link_secret: Mutex<Option<Arc<[u8]>>>,
    /// Why the link in use is being ended from this side, when it is.
    end_reason: Mutex<Option<String>>,
}

/// How long a dialer that requires authentication waits for the peer's
/// challenge: the acceptor sends it right after its PEER_HELLO_ACK, so a
/// peer without authentication is told apart quickly (it sees its new link
/// close within this time, and says so).
const CHALLENGE_WAIT: Duration = Duration::from_secs(3);

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
            link_up: AtomicBool::new(false),
            current_link: Mutex::new(None),
            probe_seq: AtomicU32::new(0),
            probe_answered: watch::channel(0).0,
            link_secret: Mutex::new(None),
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
        self.link_up.load(Relaxed)
    }

    /// The generation of the current (or next) link.
    pub fn generation(&self) -> u64 {
        self.queue.generation()
    }

    /// Returns once no link is up (polled: link changes are rare).
    pub(super) async fn link_down(&self) {
        while self.is_up() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Authentication now requires `secret` (a reload turned it on or
    /// changed it): a link made without it ends at once, before it carries
    /// anything more, and is made again with it.
    pub fn require_secret(&self, secret: &Option<Arc<[u8]>>) {
        let Some(required) = secret else {
            // Turned off: links made with a secret are no less trusted.
            return;
        };
        let stale = {
            let used = lock(&self.link_secret);
            self.is_up() && used.as_deref() != Some(&**required)
        };
        if stale {
            let why = if lock(&self.link_secret).is_none() {
                "the link was not authenticated and a reload turned peer authentication on"
            } else {
                "a reload changed the peer authentication secret"
            };
            log::warn!(
                "ic-proxy: peer dbid {}: {why}; ending the link to make it again with the current secret",
                self.addr.dbid
            );
            *lock(&self.end_reason) = Some(format!("{why}; linking again"));
            self.end_link();
        }
    }

    /// Ends the link in use (the peer task then takes the next one).
    fn end_link(&self) {
        if let Some(t) = self
            .current_link
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
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
        let (stream, leftover, secret) = link;
        if let Some(required) = ctx.secret() {
            if secret.as_deref() != Some(&*required) {
                // Made while a reload changed the secret: not used.
                log::info!(
                    "ic-proxy: peer dbid {}: a new link was made without the current authentication secret; dropped",
                    slot.addr.dbid
                );
                delay = Duration::ZERO;
                continue;
            }
        }
        *lock(&slot.link_secret) = secret;
        lock(&slot.end_reason).take();
        slot.link_up.store(true, Relaxed);
        slot.stats.set_state(PeerState::Connected);
        if linked_before {
            slot.stats.reconnects.fetch_add(1, Relaxed);
        }
        linked_before = true;
        log::info!(
            "ic-proxy: peer dbid {} (content {}) connected",
            slot.addr.dbid,
            slot.addr.content
        );
        let linked_at = std::time::Instant::now();
        let packets_before = slot.stats.packets_in.load(Relaxed);
        let mut reason = run_link(&ctx, &slot, stream, leftover, &mut rx).await;
        // How long a dialer that requires authentication waits for our
        // challenge (if its settings are ours).
        let wait = ctx.settings.handshake_timeout.min(CHALLENGE_WAIT);
        if let Some(why) = lock(&slot.end_reason).take() {
            reason = why;
        } else if reason == PEER_CLOSED
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
        slot.link_up.store(false, Relaxed);
        // What the ended logical connections still send (their BYEs) stays
        // behind: the next link starts a new generation.
        slot.queue.next_generation();
        // Frames queued for the dead link belong to the logical connections
        // being ended now: discard them before ending those connections.
        while let Ok(f) = rx.try_recv() {
            slot.queue.taken(&f);
        }
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
    slot.link_up.store(false, Relaxed);
    ctx.registry.abort_remote(slot.addr.dbid);
}

/// Dials the peer and says PEER_HELLO; Ok once its PEER_HELLO_ACK is checked.
async fn dial(ctx: &Ctx, addr: &PeerAddr) -> io::Result<NewLink> {
    let deadline = ctx.settings.handshake_timeout;
    let targets: Vec<SocketAddr> =
        tokio::time::timeout(deadline, tokio::net::lookup_host(addr.socket_addr_string()))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "name resolution timed out"))??
            .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
    for target in targets {
        match tokio::time::timeout(deadline, TcpStream::connect(target)).await {
            Ok(Ok(s)) => return handshake_as_dialer(ctx, addr, s).await,
            Ok(Err(e)) => last = e,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        }
    }
    Err(last)
}

pub(crate) fn tune_socket(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    let sock = socket2::SockRef::from(s);
    // A dead peer is noticed within about 10 s (keepalive after 5 s of
    // silence; a rebooted host answers its first probe with a reset), or
    // after 10 s of unacknowledged data (user timeout), not TCP's 15 minutes.
    // Keepalive is invisible to the peer process, C proxies included.
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2))
        .with_retries(3);
    let _ = sock.set_tcp_keepalive(&ka);
    let _ = sock.set_tcp_user_timeout(Some(Duration::from_secs(10)));
}

async fn handshake_as_dialer(ctx: &Ctx, addr: &PeerAddr, mut s: TcpStream) -> io::Result<NewLink> {
    tune_socket(&s);
    let d = ctx.settings.dialect;
    let hello = Header {
        len: d.header_len() as u16,
        ptype: PacketType::PeerHello,
        src: Endpoint {
            content: ctx.my_content(),
            dbid: ctx.settings.dbid,
            pid: ctx.settings.pid,
        },
        dst: Endpoint {
            content: addr.content,
            dbid: addr.dbid,
            pid: 0,
        },
        session_id: 0,
        command_id: 0,
        send_slice: 0,
        recv_slice: 0,
    };
    s.write_all(&hello.encode(d)).await?;
    let mut buf = BytesMut::with_capacity(4096);
    let ack = tokio::time::timeout(
        ctx.settings.handshake_timeout,
        PacketReader::new(ctx.decoder).read_packet(&mut s, &mut buf),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no PEER_HELLO_ACK in time"))??;
    if ack.header.ptype != PacketType::PeerHelloAck {
        return Err(invalid(format!(
            "expected PEER HELLO ACK, got {}",
            ack.header.ptype
        )));
    }
    if ack.header.dst.dbid != addr.dbid {
        return Err(invalid(format!(
            "PEER HELLO ACK names dbid {} but dbid {} was dialed: is the map the same on every instance?",
            ack.header.dst.dbid, addr.dbid
        )));
    }
    let secret = ctx.secret();
    if let Some(secret) = &secret {
        let me = hello.src;
        let peer = hello.dst;
        if secret.is_empty() {
            return Err(auth_failed(ctx, auth::AuthError::NoSecret));
        }
        let challenge = tokio::time::timeout(
            ctx.settings.handshake_timeout.min(CHALLENGE_WAIT),
            read_auth(ctx, &mut s, &mut buf),
        )
        .await
        .map_err(|_| {
            ctx.status.counters.auth_failures.fetch_add(1, Relaxed);
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "peer authentication failed: dbid {} sent no challenge (is ic_proxy.peer_auth_secret_file set there?)",
                    addr.dbid
                ),
            )
        })?;
        tokio::time::timeout(ctx.settings.handshake_timeout, async {
            let challenge = challenge.map_err(|e| {
                ctx.status.counters.auth_failures.fetch_add(1, Relaxed);
                invalid(format!(
                    "{e}: the peer sent no authentication challenge (is ic_proxy.peer_auth_secret_file set on dbid {}?)",
                    addr.dbid
                ))
            })?;
            let AuthMessage::Challenge { nonce_a } = challenge else {
                return Err(auth_failed(ctx, auth::AuthError::Unexpected { expected: "challenge" }));
            };
            let nonce_c = auth::nonce().map_err(|e| auth_failed(ctx, e))?;
            let mac = auth::prove(secret, AuthRole::Connector, &nonce_a, &nonce_c, me.dbid, peer.dbid);
            write_auth(ctx, &mut s, me, peer, AuthMessage::Response { nonce_c, mac }).await?;
            let confirm = read_auth(ctx, &mut s, &mut buf).await.map_err(|e| {
                ctx.status.counters.auth_failures.fetch_add(1, Relaxed);
                invalid(format!(
                    "peer authentication failed: dbid {} did not confirm our answer to its challenge ({e}): is the secret the same on both instances?",
                    addr.dbid
                ))
            })?;
            let AuthMessage::Confirm { mac } = confirm else {
                return Err(auth_failed(ctx, auth::AuthError::Unexpected { expected: "confirmation" }));
            };
            auth::verify(secret, AuthRole::Acceptor, &nonce_a, &nonce_c, me.dbid, peer.dbid, &mac)
                .map_err(|e| auth_failed(ctx, e))
        })
        .await
        .map_err(|_| {
            ctx.status.counters.auth_failures.fetch_add(1, Relaxed);
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "peer authentication failed: no challenge in time (is ic_proxy.peer_auth_secret_file set on dbid {}?)",
                    addr.dbid
                ),
            )
        })??;
    }
    Ok((s, buf, secret))
}

fn auth_failed(ctx: &Ctx, e: auth::AuthError) -> io::Error {
    ctx.status.counters.auth_failures.fetch_add(1, Relaxed);
    invalid(format!("peer authentication failed: {e}"))
}

/// Sends one authentication message from `me` to `peer`.
async fn write_auth(
    ctx: &Ctx,
    s: &mut TcpStream,
    me: Endpoint,
    peer: Endpoint,
    m: AuthMessage,
) -> io::Result<()> {
    let d = ctx.settings.dialect;
    let payload = m.encode();
    let key = LogicalConnKey {
        local: me,
        remote: Endpoint { pid: 0, ..peer },
        session_id: AUTH_SESSION_ID,
        command_id: 0,
        send_slice: 0,
        recv_slice: 0,
    };
    let mut out = BytesMut::new();
    crate::protocol::encode_packet(
        &key.header(PacketType::Data, d, payload.len()),
        d,
        &payload,
        &mut out,
    );
    s.write_all(&out).await
}

/// Reads one authentication message.
async fn read_auth(ctx: &Ctx, s: &mut TcpStream, buf: &mut BytesMut) -> io::Result<AuthMessage> {
    let p = PacketReader::new(ctx.decoder).read_packet(s, buf).await?;
    if p.header.ptype != PacketType::Data || p.header.session_id != AUTH_SESSION_ID {
        return Err(invalid(format!(
            "expected an authentication message, got {}",
            p.header
        )));
    }
    AuthMessage::decode(&p.payload).map_err(|e| invalid(e.to_string()))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Takes over an accepted connection after its PEER_HELLO was checked.
pub(crate) async fn accept_peer(ctx: Arc<Ctx>, mut s: TcpStream, from: SocketAddr) {
    tune_socket(&s);
    let mut buf = BytesMut::with_capacity(4096);
    let hello = match tokio::time::timeout(
        ctx.settings.handshake_timeout,
        PacketReader::new(ctx.decoder).read_packet(&mut s, &mut buf),
    )
    .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return reject(&ctx, from, &e.to_string()),
        Err(_) => return reject(&ctx, from, "no PEER HELLO in time"),
    };
    let h = hello.header;
    if h.ptype != PacketType::PeerHello {
        return reject(&ctx, from, &format!("expected PEER HELLO, got {}", h.ptype));
    }
    if h.src.dbid == ctx.settings.dbid {
        return reject(
            &ctx,
            from,
            &format!("PEER HELLO claims this instance's own dbid {}", h.src.dbid),
        );
    }
    let Some(slot) = ctx.peer(h.src.dbid) else {
        return reject(
            &ctx,
            from,
            &format!(
                "PEER HELLO from dbid {}, which is not in the address map",
                h.src.dbid
            ),
        );
    };
    if h.dst.dbid != ctx.settings.dbid {
        return reject(
            &ctx,
            from,
            &format!(
                "PEER HELLO is addressed to dbid {} but this instance is dbid {}",
                h.dst.dbid, ctx.settings.dbid
            ),
        );
    }
    // Only the instance with the higher content dials (the C proxy's rule
    // too): a PEER HELLO against it would take over a link this side dials,
    // or link a mirror to its primary.
    match role(ctx.my_content(), ctx.settings.dbid, &slot.addr) {
        Role::Wait => {}
        Role::Dial => {
            return reject(
                &ctx,
                from,
                &format!(
                    "PEER HELLO from dbid {}, which this instance dials itself (its content {} is below ours, {}): are the maps the same everywhere?",
                    h.src.dbid,
                    slot.addr.content,
                    ctx.my_content()
                ),
            )
        }
        Role::None => {
            return reject(
                &ctx,
                from,
                &format!(
                    "PEER HELLO from dbid {}, which has the same content {} as this instance: no link between them",
                    h.src.dbid, slot.addr.content
                ),
            )
        }
    }
    if slot.is_up() {
        // A second PEER_HELLO for a connected dbid: either an impostor, or
        // the real peer reconnecting after its end of the old link died
        // unnoticed here (a reboot, a pulled cable). Only a link that still
        // answers keeps its place.
        if slot.link_answers(&ctx, LINK_PROBE_TIMEOUT).await {
            return reject(
                &ctx,
                from,
                &format!(
                    "dbid {} is already connected and its link answers",
                    h.src.dbid
                ),
            );
        }
        log::warn!(
            "ic-proxy: peer dbid {}: the established link does not answer; replacing it with the new connection from {from}",
            h.src.dbid
        );
        slot.end_link();
        if tokio::time::timeout(LINK_PROBE_TIMEOUT, slot.link_down())
            .await
            .is_err()
        {
            return reject(
                &ctx,
                from,
                &format!("dbid {}: the old link did not close", h.src.dbid),
            );
        }
    }
    // The ACK as the C proxy builds it: the connector's content and dbid with
    // our pid, then the HELLO's destination with pid 0.
    let d = ctx.settings.dialect;
    let ack = Header {
        len: d.header_len() as u16,
        ptype: PacketType::PeerHelloAck,
        src: Endpoint {
            content: h.src.content,
            dbid: h.src.dbid,
            pid: ctx.settings.pid,
        },
        dst: Endpoint {
            content: h.dst.content,
            dbid: h.dst.dbid,
            pid: 0,
        },
        session_id: 0,
        command_id: 0,
        send_slice: 0,
        recv_slice: 0,
    };
    if let Err(e) = s.write_all(&ack.encode(d)).await {
        return reject(&ctx, from, &format!("cannot send PEER HELLO ACK: {e}"));
    }
    let secret = ctx.secret();
    if let Some(secret) = &secret {
        let me = Endpoint {
            content: h.dst.content,
            dbid: ctx.settings.dbid,
            pid: ctx.settings.pid,
        };
        let r = tokio::time::timeout(
            ctx.settings.handshake_timeout,
            authenticate_connector(&ctx, &mut s, &mut buf, secret, me, h.src),
        )
        .await;
        let failed = match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) if e.to_string().contains("authentication") => Some(e.to_string()),
            Ok(Err(e)) => Some(format!(
                "peer authentication failed: {e} (is ic_proxy.peer_auth_secret_file set on dbid {}, with the same secret?)",
                h.src.dbid
            )),
            Err(_) => {
                ctx.status.counters.auth_failures.fetch_add(1, Relaxed);
                Some(format!(
                    "peer authentication failed: dbid {} did not answer the challenge (a C proxy, or no ic_proxy.peer_auth_secret_file there?)",
                    h.src.dbid
                ))
            }
        };
        if let Some(why) = failed {
            // Shown on the claimed peer's row, unless a working link is
            // there (an impostor does not get to overwrite its status).
            if !slot.is_up() {
                slot.stats.set_error(why.clone());
            }
            return reject(&ctx, from, &format!("dbid {}: {why}", h.src.dbid));
        }
    }
    if slot.accepted.try_send((s, buf, secret)).is_err() {
        reject(
            &ctx,
            from,
            &format!("dbid {} is already connecting", h.src.dbid),
        );
    }
}

/// The acceptor's side of peer authentication.
async fn authenticate_connector(
    ctx: &Ctx,
    s: &mut TcpStream,
    buf: &mut BytesMut,
    secret: &[u8],
    me: Endpoint,
    connector: Endpoint,
) -> io::Result<()> {
    if secret.is_empty() {
        return Err(auth_failed(ctx, auth::AuthError::NoSecret));
    }
    let nonce_a = auth::nonce().map_err(|e| auth_failed(ctx, e))?;
    write_auth(ctx, s, me, connector, AuthMessage::Challenge { nonce_a }).await?;
    let answer = read_auth(ctx, s, buf).await.inspect_err(|_| {
        ctx.status.counters.auth_failures.fetch_add(1, Relaxed);
    })?;
    let AuthMessage::Response { nonce_c, mac } = answer else {
        return Err(auth_failed(
            ctx,
            auth::AuthError::Unexpected {
                expected: "response",
            },
        ));
    };
    auth::verify(
        secret,
        AuthRole::Connector,
        &nonce_a,
        &nonce_c,
        connector.dbid,
        me.dbid,
        &mac,
    )
    .map_err(|e| auth_failed(ctx, e))?;
    let mac = auth::prove(
        secret,
        AuthRole::Acceptor,
        &nonce_a,
        &nonce_c,
        connector.dbid,
        me.dbid,
    );
    write_auth(ctx, s, me, connector, AuthMessage::Confirm { mac }).await
}

fn reject(ctx: &Ctx, from: SocketAddr, why: &str) {
    ctx.status
        .counters
        .rejected_connections
        .fetch_add(1, Relaxed);
    ctx.refusals.warn("refused connections", || {
        format!("ic-proxy: refused peer connection from {from}: {why}")
    });
}

/// A mutex's guard; a panic elsewhere while it was held leaves nothing
/// half-done here (plain values are swapped whole).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
