//! The runtime's context: what every task of one proxy runtime reads (its
//! settings, status board, session registry, shutdown tokens, task tracker,
//! framing and log limits) and the few values a reload changes about
//! linking to peers. It holds no peer and no session: those live in the
//! peer directory and the registry, so nothing here imports them.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ProxySettings;
use crate::log_limit::LogLimit;
use crate::pending::AdmissionCaps;
use crate::protocol::{IcTcpFramer, PacketDecoder};
use crate::route::Registry;
use crate::status::StatusBoard;
use crate::sync::RwLock;
use crate::tls::TlsPolicy;

/// Unset content: this instance's dbid is not in the map.
pub(crate) const NO_CONTENT: i32 = i32::MIN;

/// What every task of the runtime shares.
pub(crate) struct Ctx {
    pub settings: ProxySettings,
    pub status: Arc<StatusBoard>,
    pub registry: Registry,
    pub shutdown: CancellationToken,
    /// Ends the peer links: cancelled after `shutdown`, once the sessions
    /// have said BYE, so their BYEs still reach the peers.
    pub links: CancellationToken,
    pub tracker: TaskTracker,
    pub decoder: PacketDecoder,
    pub framer: IcTcpFramer,
    /// What a reload changes about linking to peers.
    pub policy: LinkPolicy,
    /// Warnings of refused connections and dropped packets: hostile input
    /// can produce them by the million.
    pub refusals: LogLimit,
    pub drops: LogLimit,
    /// Notified each time the last open session ends (stop waits for it).
    pub sessions_done: Notify,
    /// Caps on connections in their handshake, from the descriptor limit at
    /// start.
    pub caps: AdmissionCaps,
}

impl Ctx {
    pub fn my_content(&self) -> i16 {
        self.policy.my_content()
    }

    /// The peer-authentication secret in force, if any.
    pub fn secret(&self) -> Option<Arc<[u8]>> {
        self.policy.secret()
    }

    pub fn retry_interval(&self) -> Duration {
        self.policy.retry_interval()
    }

    /// TLS on peer links, as in force now.
    pub fn tls(&self) -> TlsPolicy {
        self.policy.tls()
    }

    /// A connection refused (at its admission or in its handshake): counted
    /// in `rejected_connections` and logged rate-limited.
    pub fn refuse(&self, line: impl FnOnce() -> String) {
        self.status
            .counters
            .rejected_connections
            .fetch_add(1, Relaxed);
        self.refusals.warn("refused connections", line);
    }
}

/// What a reload changes about linking to peers: this instance's content
/// (from its own map entry), the retry interval and the authentication
/// secret.
pub(crate) struct LinkPolicy {
    my_content: AtomicI32,
    retry_ms: AtomicU64,
    secret: RwLock<Option<Arc<[u8]>>>,
    tls: RwLock<TlsPolicy>,
}

impl LinkPolicy {
    pub fn new(retry: Duration, secret: Option<Arc<[u8]>>, tls: TlsPolicy) -> Self {
        LinkPolicy {
            my_content: AtomicI32::new(NO_CONTENT),
            retry_ms: AtomicU64::new(retry.as_millis() as u64),
            secret: RwLock::new(secret),
            tls: RwLock::new(tls),
        }
    }

    pub fn tls(&self) -> TlsPolicy {
        self.tls.read().clone()
    }

    pub fn set_tls(&self, tls: TlsPolicy) {
        *self.tls.write() = tls;
    }

    pub fn my_content(&self) -> i16 {
        self.my_content.load(Relaxed) as i16
    }

    pub fn set_my_content(&self, content: i32) {
        self.my_content.store(content, Relaxed);
    }

    pub fn secret(&self) -> Option<Arc<[u8]>> {
        self.secret.read().clone()
    }

    pub fn set_secret(&self, secret: Option<Arc<[u8]>>) {
        *self.secret.write() = secret;
    }

    pub fn retry_interval(&self) -> Duration {
        Duration::from_millis(self.retry_ms.load(Relaxed))
    }

    pub fn set_retry_interval(&self, retry: Duration) {
        self.retry_ms.store(retry.as_millis() as u64, Relaxed);
    }
}
