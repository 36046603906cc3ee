//! The authentication exchange over a new peer link, between PEER_HELLO_ACK
//! and the first packet of the link: the three messages of [`super`], read
//! and written on the stream, each failure named by [`ExchangeError`]. It
//! knows nothing of the runtime: its caller gives it a packet reader, and
//! counts the failure.

use std::io;
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

/// Why an authentication exchange failed. Everything but our own write
/// failing is a failed authentication (`auth_failures`), counted by the
/// caller, once.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// The peer's proof was wrong, a message out of turn, or this proxy
    /// has no usable secret.
    #[error("peer authentication failed: {0}")]
    Rejected(AuthError),
    /// A packet that is not an authentication message.
    #[error("{0}")]
    NotAuth(String),
    /// Reading the peer's message failed.
    #[error("{0}")]
    Read(io::Error),
    /// Sending ours failed.
    #[error("cannot send the authentication message: {0}")]
    Write(io::Error),
    #[error("peer authentication failed: dbid {dbid} sent no challenge (is ic_proxy.peer_auth_secret_file set there?)")]
    NoChallenge { dbid: u16 },
    #[error("{cause}: the peer sent no authentication challenge (is ic_proxy.peer_auth_secret_file set on dbid {dbid}?)")]
    BadChallenge {
        dbid: u16,
        cause: Box<ExchangeError>,
    },
    #[error("peer authentication failed: dbid {dbid} did not confirm our answer to its challenge ({cause}): is the secret the same on both instances?")]
    Unconfirmed {
        dbid: u16,
        cause: Box<ExchangeError>,
    },
    #[error("peer authentication failed: no challenge in time (is ic_proxy.peer_auth_secret_file set on dbid {dbid}?)")]
    TimedOut { dbid: u16 },
    /// The dialer did not answer our challenge in time.
    #[error("peer authentication failed: dbid {dbid} did not answer the challenge (a C proxy, or no ic_proxy.peer_auth_secret_file there?)")]
    NoAnswer { dbid: u16 },
    /// The dialer's answer could not be read.
    #[error("peer authentication failed: {cause} (is ic_proxy.peer_auth_secret_file set on dbid {dbid}, with the same secret?)")]
    AnswerUnreadable { dbid: u16, cause: io::Error },
}

impl ExchangeError {
    /// True when it counts as a failed authentication.
    pub fn counts(&self) -> bool {
        !matches!(self, ExchangeError::Write(_))
    }
}

/// One side of the exchange on one stream.
pub(crate) struct Exchange {
    /// Reads the messages (and names the dialect they are written in).
    pub reader: PacketReader,
}

impl Exchange {
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
    ) -> Result<(), ExchangeError> {
        if secret.is_empty() {
            return Err(ExchangeError::Rejected(AuthError::NoSecret));
        }
        let dbid = peer.dbid;
        let challenge =
            tokio::time::timeout(handshake_timeout.min(CHALLENGE_WAIT), self.read(s, buf))
                .await
                .map_err(|_| ExchangeError::NoChallenge { dbid })?;
        tokio::time::timeout(handshake_timeout, async {
            let challenge = challenge.map_err(|e| ExchangeError::BadChallenge {
                dbid,
                cause: Box::new(e),
            })?;
            let AuthMessage::Challenge { nonce_a } = challenge else {
                return Err(ExchangeError::Rejected(AuthError::Unexpected {
                    expected: "challenge",
                }));
            };
            let nonce_c = nonce().map_err(ExchangeError::Rejected)?;
            let mac = prove(
                secret,
                Role::Connector,
                &nonce_a,
                &nonce_c,
                me.dbid,
                peer.dbid,
            );
            self.write(s, me, peer, AuthMessage::Response { nonce_c, mac })
                .await?;
            let confirm = self
                .read(s, buf)
                .await
                .map_err(|e| ExchangeError::Unconfirmed {
                    dbid,
                    cause: Box::new(e),
                })?;
            let AuthMessage::Confirm { mac } = confirm else {
                return Err(ExchangeError::Rejected(AuthError::Unexpected {
                    expected: "confirmation",
                }));
            };
            verify(
                secret,
                Role::Acceptor,
                &nonce_a,
                &nonce_c,
                me.dbid,
                peer.dbid,
                &mac,
            )
            .map_err(ExchangeError::Rejected)
        })
        .await
        .map_err(|_| ExchangeError::TimedOut { dbid })?
    }

    /// The acceptor's side of peer authentication.
    pub async fn authenticate_connector<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        s: &mut S,
        buf: &mut BytesMut,
        secret: &[u8],
        me: Endpoint,
        connector: Endpoint,
    ) -> Result<(), ExchangeError> {
        if secret.is_empty() {
            return Err(ExchangeError::Rejected(AuthError::NoSecret));
        }
        let nonce_a = nonce().map_err(ExchangeError::Rejected)?;
        self.write(s, me, connector, AuthMessage::Challenge { nonce_a })
            .await?;
        let answer = self.read(s, buf).await.map_err(|e| match e {
            ExchangeError::Read(cause) => ExchangeError::AnswerUnreadable {
                dbid: connector.dbid,
                cause,
            },
            other => other,
        })?;
        let AuthMessage::Response { nonce_c, mac } = answer else {
            return Err(ExchangeError::Rejected(AuthError::Unexpected {
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
        .map_err(ExchangeError::Rejected)?;
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
    ) -> Result<(), ExchangeError> {
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
        s.write_all(&out).await.map_err(ExchangeError::Write)
    }

    /// Reads one authentication message.
    async fn read<S: AsyncRead + Unpin>(
        &self,
        s: &mut S,
        buf: &mut BytesMut,
    ) -> Result<AuthMessage, ExchangeError> {
        let p = self
            .reader
            .read_packet(s, buf)
            .await
            .map_err(ExchangeError::Read)?;
        if p.header.ptype != PacketType::Data || p.header.session_id != AUTH_SESSION_ID {
            return Err(ExchangeError::NotAuth(format!(
                "expected an authentication message, got {}",
                p.header
            )));
        }
        AuthMessage::decode(&p.payload).map_err(|e| ExchangeError::NotAuth(e.to_string()))
    }
}
