//! Optional peer authentication: a challenge-response after PEER_HELLO /
//! PEER_HELLO_ACK, proving both proxies hold the same secret, with an
//! HMAC-SHA256 over both nonces and both identities. Off unless a secret is
//! configured, so C proxies can still join a cluster that does not use it.
//!
//! The three messages are DATA packets between the two proxies (session id
//! [`AUTH_SESSION_ID`], pids of the proxies), so they frame like any packet:
//!
//! ```text
//! acceptor  -> connector   "ICPA" 1 1 nonce_a[32]                challenge
//! connector -> acceptor    "ICPA" 1 2 nonce_c[32] mac_c[32]      response
//! acceptor  -> connector   "ICPA" 1 3 mac_a[32]                  confirmation
//! mac_x = HMAC-SHA256(secret, "ic-proxy peer auth v1" | role_x | nonce_a | nonce_c
//!                             | connector dbid (u16 LE) | acceptor dbid (u16 LE))
//! ```

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

mod exchange;

pub(crate) use exchange::{Exchange, ExchangeError, CHALLENGE_WAIT};

/// Session id of authentication packets (never a real gp_session_id).
pub const AUTH_SESSION_ID: i32 = i32::MIN + 1;
/// Shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

const MAGIC: &[u8; 4] = b"ICPA";
const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"ic-proxy peer auth v1";
pub const NONCE_LEN: usize = 32;
pub const MAC_LEN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Connector,
    Acceptor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMessage {
    Challenge {
        nonce_a: [u8; NONCE_LEN],
    },
    Response {
        nonce_c: [u8; NONCE_LEN],
        mac: [u8; MAC_LEN],
    },
    Confirm {
        mac: [u8; MAC_LEN],
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("not an authentication message")]
    Malformed,
    #[error("expected the {expected}, got another authentication message")]
    Unexpected { expected: &'static str },
    #[error("wrong secret: the peer's proof does not match (check ic_proxy.peer_auth_secret_file on both instances)")]
    BadMac,
    #[error(
        "this proxy has no usable secret (see the warning about ic_proxy.peer_auth_secret_file)"
    )]
    NoSecret,
    #[error("no randomness available: {0}")]
    Random(String),
}

impl AuthMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(6 + NONCE_LEN + MAC_LEN);
        v.extend_from_slice(MAGIC);
        v.push(VERSION);
        match self {
            AuthMessage::Challenge { nonce_a } => {
                v.push(1);
                v.extend_from_slice(nonce_a);
            }
            AuthMessage::Response { nonce_c, mac } => {
                v.push(2);
                v.extend_from_slice(nonce_c);
                v.extend_from_slice(mac);
            }
            AuthMessage::Confirm { mac } => {
                v.push(3);
                v.extend_from_slice(mac);
            }
        }
        v
    }

    pub fn decode(b: &[u8]) -> Result<AuthMessage, AuthError> {
        if b.len() < 6 || &b[..4] != MAGIC || b[4] != VERSION {
            return Err(AuthError::Malformed);
        }
        let body = &b[6..];
        let arr = |s: &[u8]| -> [u8; 32] {
            let mut a = [0u8; 32];
            a.copy_from_slice(s);
            a
        };
        match (b[5], body.len()) {
            (1, NONCE_LEN) => Ok(AuthMessage::Challenge { nonce_a: arr(body) }),
            (2, 64) => Ok(AuthMessage::Response {
                nonce_c: arr(&body[..32]),
                mac: arr(&body[32..]),
            }),
            (3, MAC_LEN) => Ok(AuthMessage::Confirm { mac: arr(body) }),
            _ => Err(AuthError::Malformed),
        }
    }
}

/// Reads a secret file: its content without a trailing newline, at least
/// [`MIN_SECRET_LEN`] bytes.
pub fn load_secret(path: &std::path::Path) -> Result<std::sync::Arc<[u8]>, String> {
    let mut bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the secret is {} bytes; at least {MIN_SECRET_LEN} are needed",
            bytes.len()
        ));
    }
    Ok(std::sync::Arc::from(bytes))
}

pub fn nonce() -> Result<[u8; NONCE_LEN], AuthError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(n)
}

fn hmac(
    secret: &[u8],
    role: Role,
    nonce_a: &[u8; NONCE_LEN],
    nonce_c: &[u8; NONCE_LEN],
    connector: u16,
    acceptor: u16,
) -> Hmac<Sha256> {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length");
    m.update(DOMAIN);
    m.update(match role {
        Role::Connector => b"connector",
        Role::Acceptor => b"acceptor\0",
    });
    m.update(nonce_a);
    m.update(nonce_c);
    m.update(&connector.to_le_bytes());
    m.update(&acceptor.to_le_bytes());
    m
}

/// The proof `role` sends.
pub fn prove(
    secret: &[u8],
    role: Role,
    nonce_a: &[u8; NONCE_LEN],
    nonce_c: &[u8; NONCE_LEN],
    connector: u16,
    acceptor: u16,
) -> [u8; MAC_LEN] {
    let out = hmac(secret, role, nonce_a, nonce_c, connector, acceptor)
        .finalize()
        .into_bytes();
    let mut a = [0u8; MAC_LEN];
    a.copy_from_slice(&out);
    a
}

/// Checks the proof of `role` in constant time.
pub fn verify(
    secret: &[u8],
    role: Role,
    nonce_a: &[u8; NONCE_LEN],
    nonce_c: &[u8; NONCE_LEN],
    connector: u16,
    acceptor: u16,
    mac: &[u8; MAC_LEN],
) -> Result<(), AuthError> {
    hmac(secret, role, nonce_a, nonce_c, connector, acceptor)
        .verify_slice(mac)
        .map_err(|_| AuthError::BadMac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &[u8] = b"a shared secret of the cluster";

    #[test]
    fn messages_round_trip() {
        for m in [
            AuthMessage::Challenge { nonce_a: [7; 32] },
            AuthMessage::Response {
                nonce_c: [1; 32],
                mac: [2; 32],
            },
            AuthMessage::Confirm { mac: [3; 32] },
        ] {
            assert_eq!(AuthMessage::decode(&m.encode()), Ok(m));
        }
        assert_eq!(
            AuthMessage::decode(b"ICPA\x01\x01short"),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            AuthMessage::decode(b"hello world"),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn proofs_bind_secret_role_nonces_and_identities() {
        let (a, c) = ([1u8; 32], [2u8; 32]);
        let mac = prove(S, Role::Connector, &a, &c, 3, 1);
        assert_eq!(verify(S, Role::Connector, &a, &c, 3, 1, &mac), Ok(()));
        assert_eq!(
            verify(b"another secret..", Role::Connector, &a, &c, 3, 1, &mac),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            verify(S, Role::Acceptor, &a, &c, 3, 1, &mac),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            verify(S, Role::Connector, &c, &a, 3, 1, &mac),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            verify(S, Role::Connector, &a, &c, 4, 1, &mac),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            verify(S, Role::Connector, &a, &c, 3, 2, &mac),
            Err(AuthError::BadMac)
        );
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }
}
