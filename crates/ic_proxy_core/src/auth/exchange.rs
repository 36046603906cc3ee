//! The authentication exchange over a new peer link, between PEER_HELLO_ACK
//! and the first packet of the link: the three messages of [`super`], read
//! and written on the stream, each failure counted. It knows nothing of the
//! runtime: its caller gives it a packet reader and the counter.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{nonce, prove, verify, AuthError, AuthMessage, Role, AUTH_SESSION_ID};
use crate::protocol::{encode_packet, Endpoint, LogicalConnKey, PacketReader, PacketType};

/// How long a dialer that requires authentication waits for the peer's
/// challenge: the acceptor sends it right after its PEER_HELLO_ACK, so a
/// peer without authentication is told apart quickly (it sees its new link
/// close within this time, and says so).
pub(crate) const CHALLENGE_WAIT: Duration = Duration::from_secs(3);

/// One side of the exchange on one stream.
pub(crate) struct Exchange<'a> {
    /// Reads the messages (and names the dialect they are written in).
    pub reader: PacketReader,
    /// Counts every failed exchange (`auth_failures`).
    pub failures: &'a AtomicU64,
}

impl Exchange<'_> {
    /// The connector's side: answers the acceptor's challenge with a proof
    /// and checks the acceptor's. The challenge is awaited at most
    /// [`CHALLENGE_WAIT`], the rest `handshake_timeout`.
    pub async fn authenticate_acceptor<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        s: &mut S,
        buf: &mut BytesMut,
        secret: &[u8],
        me: Endpoint,
        peer: Endpoint,
        handshake_timeout: Duration,
    ) -> io::Result<()> {
        if secret.is_empty() {
            return Err(self.failed(AuthError::NoSecret));
        }
        let challenge = tokio::time::timeout(
            handshake_timeout.min(CHALLENGE_WAIT),
            self.read(s, buf),
        )
        .await
        .map_err(|_| {
            self.failures.fetch_add(1, Relaxed);
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "peer authentication failed: dbid {} sent no challenge (is ic_proxy.peer_auth_secret_file set there?)",
                    peer.dbid
                ),
            )
        })?;
        tokio::time::timeout(handshake_timeout, async {
            let challenge = challenge.map_err(|e| {
                self.failures.fetch_add(1, Relaxed);
                invalid(format!(
                    "{e}: the peer sent no authentication challenge (is ic_proxy.peer_auth_secret_file set on dbid {}?)",
                    peer.dbid
                ))
            })?;
            let AuthMessage::Challenge { nonce_a } = challenge else {
                return Err(self.failed(AuthError::Unexpected { expected: "challenge" }));
            };
            let nonce_c = nonce().map_err(|e| self.failed(e))?;
            let mac = prove(secret, Role::Connector, &nonce_a, &nonce_c, me.dbid, peer.dbid);
            self.write(s, me, peer, AuthMessage::Response { nonce_c, mac }).await?;
            let confirm = self.read(s, buf).await.map_err(|e| {
                self.failures.fetch_add(1, Relaxed);
                invalid(format!(
                    "peer authentication failed: dbid {} did not confirm our answer to its challenge ({e}): is the secret the same on both instances?",
                    peer.dbid
                ))
            })?;
            let AuthMessage::Confirm { mac } = confirm else {
                return Err(self.failed(AuthError::Unexpected { expected: "confirmation" }));
            };
            verify(secret, Role::Acceptor, &nonce_a, &nonce_c, me.dbid, peer.dbid, &mac)
                .map_err(|e| self.failed(e))
        })
        .await
        .map_err(|_| {
            self.failures.fetch_add(1, Relaxed);
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "peer authentication failed: no challenge in time (is ic_proxy.peer_auth_secret_file set on dbid {}?)",
                    peer.dbid
                ),
            )
        })?
    }

    /// The acceptor's side of peer authentication.
    pub async fn authenticate_connector<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        s: &mut S,
        buf: &mut BytesMut,
        secret: &[u8],
        me: Endpoint,
        connector: Endpoint,
    ) -> io::Result<()> {
        if secret.is_empty() {
            return Err(self.failed(AuthError::NoSecret));
        }
        let nonce_a = nonce().map_err(|e| self.failed(e))?;
        self.write(s, me, connector, AuthMessage::Challenge { nonce_a })
            .await?;
        let answer = self.read(s, buf).await.inspect_err(|_| {
            self.failures.fetch_add(1, Relaxed);
        })?;
        let AuthMessage::Response { nonce_c, mac } = answer else {
            return Err(self.failed(AuthError::Unexpected {
                expected: "response",
            }));
        };
        verify(
            secret,
            Role::Connector,
            &nonce_a,
            &nonce_c,
            connector.dbid,
            me.dbid,
            &mac,
        )
        .map_err(|e| self.failed(e))?;
        let mac = prove(
            secret,
            Role::Acceptor,
            &nonce_a,
            &nonce_c,
            connector.dbid,
            me.dbid,
        );
        self.write(s, me, connector, AuthMessage::Confirm { mac })
            .await
    }

    /// Sends one authentication message from `me` to `peer`.
    async fn write<S: AsyncWrite + Unpin>(
        &self,
        s: &mut S,
        me: Endpoint,
        peer: Endpoint,
        m: AuthMessage,
    ) -> io::Result<()> {
        let d = self.reader.dialect();
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
        encode_packet(
            &key.header(PacketType::Data, d, payload.len()),
            d,
            &payload,
            &mut out,
        );
        s.write_all(&out).await
    }

    /// Reads one authentication message.
    async fn read<S: AsyncRead + Unpin>(
        &self,
        s: &mut S,
        buf: &mut BytesMut,
    ) -> io::Result<AuthMessage> {
        let p = self.reader.read_packet(s, buf).await?;
        if p.header.ptype != PacketType::Data || p.header.session_id != AUTH_SESSION_ID {
            return Err(invalid(format!(
                "expected an authentication message, got {}",
                p.header
            )));
        }
        AuthMessage::decode(&p.payload).map_err(|e| invalid(e.to_string()))
    }

    fn failed(&self, e: AuthError) -> io::Error {
        self.failures.fetch_add(1, Relaxed);
        invalid(format!("peer authentication failed: {e}"))
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}
