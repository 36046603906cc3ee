//! Making a link: the dialer's PEER_HELLO and the acceptor's checks and
//! PEER_HELLO_ACK, exactly as the C proxy builds them, then the
//! authentication exchange when a secret is configured. A link that passes
//! is handed to the peer's slot; nothing is read or written on it here
//! after that.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::directory::PeerDirectory;
use super::failure::LinkFailure;
use super::probe::LINK_PROBE_TIMEOUT;
use super::{role, LinkSecurity, NewLink, Role};
use crate::address_map::PeerAddr;
use crate::auth::{Exchange, ExchangeError};
use crate::context::Ctx;
use crate::protocol::{Dialect, Endpoint, Header, PacketReader, PacketType};
use crate::tls::negotiate::{self, AcceptorPlan, DialerPlan};
use crate::tls::{LinkStream, TlsMaterial, TlsMode};
use rustls::pki_types::ServerName;

/// PEER_HELLO, header only: `me` as the source, the peer's content and
/// dbid with pid 0 as the destination, everything else 0. The acceptor
/// only uses the source's dbid; the rest is informational.
fn peer_hello(d: Dialect, me: Endpoint, to: &PeerAddr) -> Header {
    Header {
        len: d.header_len() as u16,
        ptype: PacketType::PeerHello,
        src: me,
        dst: Endpoint {
            content: to.content,
            dbid: to.dbid,
            pid: 0,
        },
        session_id: 0,
        command_id: 0,
        send_slice: 0,
        recv_slice: 0,
    }
}

/// PEER_HELLO_ACK as the C proxy builds it: the connector's content and
/// dbid with the acceptor's pid, then the HELLO's destination with pid 0
/// (the connector checks that this dbid is the one it dialed).
fn peer_hello_ack(d: Dialect, hello: &Header, my_pid: i32) -> Header {
    Header {
        len: d.header_len() as u16,
        ptype: PacketType::PeerHelloAck,
        src: Endpoint {
            content: hello.src.content,
            dbid: hello.src.dbid,
            pid: my_pid,
        },
        dst: Endpoint {
            content: hello.dst.content,
            dbid: hello.dst.dbid,
            pid: 0,
        },
        session_id: 0,
        command_id: 0,
        send_slice: 0,
        recv_slice: 0,
    }
}

/// Dials the peer and says PEER_HELLO; Ok once its PEER_HELLO_ACK is
/// checked (and the authentication exchange passed, with a secret). A
/// failure is counted here.
pub(super) async fn dial(ctx: &Ctx, addr: &PeerAddr) -> Result<NewLink, LinkFailure> {
    let r = dial_and_greet(ctx, addr).await;
    if let Err(failure) = &r {
        failure.count(&ctx.status.counters);
    }
    r
}

async fn dial_and_greet(ctx: &Ctx, addr: &PeerAddr) -> Result<NewLink, LinkFailure> {
    let deadline = ctx.settings.handshake_timeout;
    let targets: Vec<SocketAddr> =
        tokio::time::timeout(deadline, tokio::net::lookup_host(addr.socket_addr_string()))
            .await
            .map_err(|_| LinkFailure::TimedOut("name resolution"))?
            .map_err(LinkFailure::Network)?
            .collect();
    let mut last = LinkFailure::Network(io::Error::new(
        io::ErrorKind::NotFound,
        "the name resolved to no address",
    ));
    for target in targets {
        match tokio::time::timeout(deadline, TcpStream::connect(target)).await {
            Ok(Ok(s)) => return handshake_as_dialer(ctx, addr, s).await,
            Ok(Err(e)) => last = LinkFailure::Network(e),
            Err(_) => last = LinkFailure::TimedOut("connection"),
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

async fn handshake_as_dialer(
    ctx: &Ctx,
    addr: &PeerAddr,
    mut s: TcpStream,
) -> Result<NewLink, LinkFailure> {
    tune_socket(&s);
    let d = ctx.settings.dialect;
    let reader = PacketReader::new(ctx.decoder);
    let me = Endpoint {
        content: ctx.my_content(),
        dbid: ctx.settings.dbid,
        pid: ctx.settings.pid,
    };
    let tls = ctx.tls();
    // TLS that cannot be used is not offered (`on` links in plaintext);
    // `require` never dials without it.
    let offer = if tls.ready() { tls.mode } else { TlsMode::Off };
    if tls.mode == TlsMode::Require && offer == TlsMode::Off {
        return Err(LinkFailure::TlsRefused(
            "ic_proxy.tls = require and this proxy's certificates cannot be used",
        ));
    }
    let mut hello = peer_hello(d, me, addr);
    hello.command_id = negotiate::hello_marker(offer);
    s.write_all(&hello.encode(d))
        .await
        .map_err(LinkFailure::Network)?;
    let mut buf = BytesMut::with_capacity(4096);
    let ack = tokio::time::timeout(
        ctx.settings.handshake_timeout,
        reader.read_packet(&mut s, &mut buf),
    )
    .await
    .map_err(|_| LinkFailure::TimedOut("PEER_HELLO_ACK"))?
    .map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => LinkFailure::Protocol(e.to_string()),
        _ => LinkFailure::Network(e),
    })?;
    if ack.header.ptype != PacketType::PeerHelloAck {
        return Err(LinkFailure::Protocol(format!(
            "expected PEER HELLO ACK, got {}",
            ack.header.ptype
        )));
    }
    if ack.header.dst.dbid != addr.dbid {
        return Err(LinkFailure::Protocol(format!(
            "PEER HELLO ACK names dbid {} but dbid {} was dialed: is the map the same on every instance?",
            ack.header.dst.dbid, addr.dbid
        )));
    }
    let mut stream = match negotiate::dialer_plan(offer, ack.header.command_id) {
        DialerPlan::Plain => LinkStream::Plain(s),
        DialerPlan::Refuse(why) => return Err(LinkFailure::TlsRefused(why)),
        DialerPlan::Tls => {
            if !buf.is_empty() {
                return Err(LinkFailure::Protocol(
                    "bytes after PEER HELLO ACK, before TLS".into(),
                ));
            }
            let material = tls.material.as_ref().expect("ready TLS has material");
            let mut stream = connect_tls(ctx, material, &addr.host, s).await?;
            // TLS 1.3 ends the client's handshake before the server has
            // checked the client's certificate: its confirmation, or the
            // alert that refuses the certificate, comes next.
            let confirmed = tokio::time::timeout(
                ctx.settings.handshake_timeout,
                reader.read_packet(&mut stream, &mut buf),
            )
            .await
            .map_err(|_| {
                LinkFailure::Tls("no confirmation after the TLS handshake in time".into())
            })?
            .map_err(|e| LinkFailure::Tls(explain_io(&e)))?;
            let h = &confirmed.header;
            if h.ptype != PacketType::PeerHelloAck || h.command_id != negotiate::ACCEPT {
                return Err(LinkFailure::Protocol(format!(
                    "expected the TLS confirmation (a PEER HELLO ACK), got {}",
                    h.ptype
                )));
            }
            stream
        }
    };
    let secret = ctx.secret();
    if let Some(secret) = &secret {
        Exchange { reader }
            .authenticate_acceptor(
                &mut stream,
                &mut buf,
                secret,
                hello.src,
                hello.dst,
                ctx.settings.handshake_timeout,
            )
            .await
            .map_err(|error| LinkFailure::Auth {
                dbid: addr.dbid,
                error,
            })?;
    }
    Ok(new_link(stream, buf, secret))
}

/// The link and how it is protected.
fn new_link(stream: LinkStream, leftover: BytesMut, secret: Option<Arc<[u8]>>) -> NewLink {
    let (transport, peer_chain) = match &stream {
        LinkStream::Plain(_) => ("plaintext".to_string(), None),
        LinkStream::Tls(t) => {
            let conn = t.get_ref().1;
            let suite = conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default();
            let chain = conn.peer_certificates().map(|c| c.to_vec());
            (format!("TLS1.3 {suite}"), chain)
        }
    };
    NewLink {
        stream,
        leftover,
        security: LinkSecurity {
            secret,
            peer_chain,
            transport,
        },
    }
}

/// Starts TLS as the client on a link to `host`.
async fn connect_tls(
    ctx: &Ctx,
    material: &TlsMaterial,
    host: &str,
    s: TcpStream,
) -> Result<LinkStream, LinkFailure> {
    let config = material.client_config();
    // With tls_verify = ca the name is not checked, but TLS still needs one.
    let name = ServerName::try_from(host.to_string())
        .or_else(|_| ServerName::try_from("ic-proxy.invalid".to_string()))
        .map_err(|e| LinkFailure::Tls(e.to_string()))?;
    let connect = tokio_rustls::TlsConnector::from(config).connect(name, s);
    within_handshake(ctx, connect).await
}

/// Starts TLS as the server on a link whose PEER_HELLO claims the instance
/// at `host`.
async fn accept_tls(
    ctx: &Ctx,
    material: &TlsMaterial,
    host: &str,
    s: TcpStream,
) -> Result<LinkStream, LinkFailure> {
    let config = material
        .server_config(Some(host))
        .map_err(|e| LinkFailure::Tls(e.to_string()))?;
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(s);
    within_handshake(ctx, accept).await
}

/// A TLS handshake, either side, bounded by the handshake timeout.
async fn within_handshake<S>(
    ctx: &Ctx,
    handshake: impl std::future::Future<Output = io::Result<S>>,
) -> Result<LinkStream, LinkFailure>
where
    S: Into<tokio_rustls::TlsStream<TcpStream>>,
{
    let stream = tokio::time::timeout(ctx.settings.handshake_timeout, handshake)
        .await
        .map_err(|_| LinkFailure::Tls("no TLS handshake in time".into()))?
        .map_err(|e| LinkFailure::Tls(explain_io(&e)))?;
    Ok(LinkStream::Tls(Box::new(stream.into())))
}

/// A TLS failure as tokio-rustls reports it (a rustls error inside an I/O
/// error), in the status's words.
fn explain_io(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => crate::tls::explain(tls),
        None => e.to_string(),
    }
}

/// Takes over an accepted connection: checks its PEER_HELLO, answers it,
/// authenticates it, and hands the link to its peer's slot. A connection
/// that fails is refused: counted and logged here.
pub(crate) async fn accept_peer(
    ctx: Arc<Ctx>,
    peers: &PeerDirectory,
    s: TcpStream,
    from: SocketAddr,
) {
    if let Err(failure) = handshake_as_acceptor(&ctx, peers, s, from).await {
        failure.count(&ctx.status.counters);
        ctx.refuse(|| format!("ic-proxy: refused peer connection from {from}: {failure}"));
    }
}

async fn handshake_as_acceptor(
    ctx: &Ctx,
    peers: &PeerDirectory,
    mut s: TcpStream,
    from: SocketAddr,
) -> Result<(), LinkFailure> {
    tune_socket(&s);
    let mut buf = BytesMut::with_capacity(4096);
    let hello = tokio::time::timeout(
        ctx.settings.handshake_timeout,
        PacketReader::new(ctx.decoder).read_packet(&mut s, &mut buf),
    )
    .await
    .map_err(|_| LinkFailure::TimedOut("PEER HELLO"))?
    .map_err(|e| LinkFailure::Protocol(e.to_string()))?;
    let h = hello.header;
    if h.ptype != PacketType::PeerHello {
        return Err(LinkFailure::Protocol(format!(
            "expected PEER HELLO, got {}",
            h.ptype
        )));
    }
    if h.src.dbid == ctx.settings.dbid {
        return Err(LinkFailure::Refused(format!(
            "PEER HELLO claims this instance's own dbid {}",
            h.src.dbid
        )));
    }
    let Some(slot) = peers.get(h.src.dbid) else {
        return Err(LinkFailure::Refused(format!(
            "PEER HELLO from dbid {}, which is not in the address map",
            h.src.dbid
        )));
    };
    if h.dst.dbid != ctx.settings.dbid {
        return Err(LinkFailure::Refused(format!(
            "PEER HELLO is addressed to dbid {} but this instance is dbid {}",
            h.dst.dbid, ctx.settings.dbid
        )));
    }
    // Only the instance with the higher content dials (the C proxy's rule
    // too): a PEER HELLO against it would take over a link this side dials,
    // or link a mirror to its primary.
    match role(ctx.my_content(), ctx.settings.dbid, &slot.addr) {
        Role::Wait => {}
        Role::Dial => {
            return Err(LinkFailure::Refused(format!(
                "PEER HELLO from dbid {}, which this instance dials itself (its content {} is below ours, {}): are the maps the same everywhere?",
                h.src.dbid,
                slot.addr.content,
                ctx.my_content()
            )))
        }
        Role::None => {
            return Err(LinkFailure::Refused(format!(
                "PEER HELLO from dbid {}, which has the same content {} as this instance: no link between them",
                h.src.dbid, slot.addr.content
            )))
        }
    }
    if slot.is_up() {
        // A second PEER_HELLO for a connected dbid: either an impostor, or
        // the real peer reconnecting after its end of the old link died
        // unnoticed here (a reboot, a pulled cable). Only a link that still
        // answers keeps its place.
        if slot.link_answers(ctx, LINK_PROBE_TIMEOUT).await {
            return Err(LinkFailure::Refused(format!(
                "dbid {} is already connected and its link answers",
                h.src.dbid
            )));
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
            return Err(LinkFailure::Refused(format!(
                "dbid {}: the old link did not close",
                h.src.dbid
            )));
        }
    }
    let d = ctx.settings.dialect;
    let tls = ctx.tls();
    let plan = negotiate::acceptor_plan(tls.mode, tls.ready(), h.command_id);
    let mut ack = peer_hello_ack(d, &h, ctx.settings.pid);
    ack.command_id = match plan {
        AcceptorPlan::Plain { ack_marker } | AcceptorPlan::Refuse { ack_marker, .. } => ack_marker,
        AcceptorPlan::Tls => negotiate::ACCEPT,
    };
    s.write_all(&ack.encode(d))
        .await
        .map_err(LinkFailure::Network)?;
    let refused = |failure: LinkFailure| {
        // Shown on the claimed peer's row, unless a working link is there
        // (an impostor does not get to overwrite its status).
        if failure.shows_on_the_peer() && !slot.is_up() {
            slot.stats.set_error(failure.to_string());
        }
        failure
    };
    let mut stream = match plan {
        AcceptorPlan::Plain { .. } => LinkStream::Plain(s),
        AcceptorPlan::Refuse { reason, .. } => {
            return Err(refused(LinkFailure::TlsRefused(reason)))
        }
        AcceptorPlan::Tls => {
            if !buf.is_empty() {
                return Err(LinkFailure::Protocol(
                    "bytes after PEER HELLO, before TLS".into(),
                ));
            }
            let material = tls.material.as_ref().expect("ready TLS has material");
            let mut stream = accept_tls(ctx, material, &slot.addr.host, s)
                .await
                .map_err(refused)?;
            // The dialer's certificate passed: say so inside TLS (the same
            // ACK again), so the dialer knows before it uses the link.
            stream
                .write_all(&ack.encode(d))
                .await
                .map_err(LinkFailure::Network)?;
            stream
        }
    };
    let secret = ctx.secret();
    if let Some(secret) = &secret {
        let me = Endpoint {
            content: h.dst.content,
            dbid: ctx.settings.dbid,
            pid: ctx.settings.pid,
        };
        let exchange = Exchange {
            reader: PacketReader::new(ctx.decoder),
        };
        let r = tokio::time::timeout(
            ctx.settings.handshake_timeout,
            exchange.authenticate_connector(&mut stream, &mut buf, secret, me, h.src),
        )
        .await
        .unwrap_or(Err(ExchangeError::NoAnswer { dbid: h.src.dbid }));
        if let Err(error) = r {
            let dbid = h.src.dbid;
            return Err(refused(LinkFailure::Auth { dbid, error }));
        }
    }
    if slot
        .accepted
        .try_send(new_link(stream, buf, secret))
        .is_err()
    {
        return Err(LinkFailure::Refused(format!(
            "dbid {} is already connecting",
            h.src.dbid
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Endpoint = Endpoint {
        content: 1,
        dbid: 3,
        pid: 4242,
    };

    fn peer() -> PeerAddr {
        PeerAddr {
            dbid: 2,
            content: 0,
            host: "localhost".into(),
            port: 7000,
        }
    }

    #[test]
    fn peer_hello_is_header_only_from_me_to_the_peer_with_pid_0() {
        for d in [Dialect::B, Dialect::C] {
            let h = peer_hello(d, ME, &peer());
            assert_eq!(usize::from(h.len), d.header_len());
            assert_eq!(h.ptype, PacketType::PeerHello);
            assert_eq!(h.src, ME);
            assert_eq!(
                h.dst,
                Endpoint {
                    content: 0,
                    dbid: 2,
                    pid: 0
                }
            );
            assert_eq!(
                (h.session_id, h.command_id, h.send_slice, h.recv_slice),
                (0, 0, 0, 0)
            );
        }
    }

    #[test]
    fn peer_hello_ack_is_built_as_the_c_proxy_builds_it() {
        for d in [Dialect::B, Dialect::C] {
            let mut hello = peer_hello(d, ME, &peer());
            // Informational fields of a HELLO are not echoed back.
            hello.dst.pid = 99;
            hello.session_id = 5;
            let ack = peer_hello_ack(d, &hello, 777);
            assert_eq!(usize::from(ack.len), d.header_len());
            assert_eq!(ack.ptype, PacketType::PeerHelloAck);
            // The connector's content and dbid, with the acceptor's pid.
            assert_eq!(
                ack.src,
                Endpoint {
                    content: 1,
                    dbid: 3,
                    pid: 777
                }
            );
            // The HELLO's destination with pid 0: the dbid the connector
            // dialed, which it checks.
            assert_eq!(
                ack.dst,
                Endpoint {
                    content: 0,
                    dbid: 2,
                    pid: 0
                }
            );
            assert_eq!(
                (
                    ack.session_id,
                    ack.command_id,
                    ack.send_slice,
                    ack.recv_slice
                ),
                (0, 0, 0, 0)
            );
        }
    }
}
