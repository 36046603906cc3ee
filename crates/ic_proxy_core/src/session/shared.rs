//! The part of a backend session that other tasks reach: the router hands
//! it packets, a peer's link acknowledgements, the registry ends it. It
//! holds the session's inbox (what its writer is to write to the backend),
//! its send credit (flow control) and the tokens that end it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::limits::PACKET_COST;
use crate::flow::{FlowParams, FlowViolation, SendCredit};
use crate::protocol::LogicalConnKey;
use crate::sync::Mutex;

/// A session's queue of deliveries for its writer. A plain deque under a
/// mutex: it allocates nothing until something arrives and nothing once it
/// is drained, so an idle session costs no queue memory (a channel keeps a
/// block of slots for its whole life).
#[derive(Default)]
pub(crate) struct Inbox {
    q: Mutex<VecDeque<Arrival>>,
    ready: Notify,
}

impl Inbox {
    fn push(&self, d: Arrival) {
        self.lock().push_back(d);
        // Stores a permit when the writer is not waiting: no wake-up is lost.
        self.ready.notify_one();
    }

    pub fn try_recv(&self) -> Option<Arrival> {
        self.lock().pop_front()
    }

    /// The next delivery, waiting for one.
    pub async fn recv(&self) -> Arrival {
        loop {
            if let Some(d) = self.try_recv() {
                return d;
            }
            self.ready.notified().await;
        }
    }

    /// True if nothing waits; then the queue's memory (grown by a burst)
    /// is given back too.
    pub fn release_if_empty(&self) -> bool {
        let mut q = self.lock();
        if !q.is_empty() {
            return false;
        }
        if q.capacity() > 0 {
            *q = VecDeque::new();
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arrival>> {
        self.q.lock()
    }
}

/// What flows to a backend session, from the router, a peer's link or a
/// local sender: DATA for its backend (whole ic-tcp packets, or the lone
/// STOP byte), BYE (the other end is done sending: half-close toward the
/// backend), or a DATA_ACK for its sending side (never queued for the
/// writer).
#[derive(Clone, Debug)]
pub(crate) enum Arrival {
    Data(Bytes),
    Bye,
    Ack,
}

/// The part of a backend session other tasks can reach.
pub(crate) struct BackendSession {
    pub key: LogicalConnKey,
    /// What the session's writer is to write to its backend.
    pub inbox: Inbox,
    /// A BYE was routed to this session: later packets with its key belong to
    /// the next statement reusing the key, and wait in the cache.
    p2c_done: AtomicBool,
    /// The proxy already sent this connection's BYE to the other end (it
    /// ended the connection itself): the session must not send another.
    pub bye_answered: AtomicBool,
    /// Cancelled when the session has left the registry.
    pub closed: CancellationToken,
    /// Cancelled to end the session at once (violation, backend gone,
    /// shutdown).
    pub abort: CancellationToken,
    /// Cancelled (with `abort`, or alone when the peer is lost) to stop
    /// reading the backend.
    pub stop_reading: CancellationToken,
    credit: Mutex<SendCredit>,
    pub resume: Notify,
    /// Payload bytes (plus [`PACKET_COST`] per packet) routed to this session
    /// and not yet written to its backend.
    pub queued: AtomicUsize,
    queued_cap: usize,
    flow: FlowParams,
}

impl BackendSession {
    pub fn new(
        key: LogicalConnKey,
        flow: FlowParams,
        queued_cap: usize,
        abort: CancellationToken,
    ) -> Self {
        BackendSession {
            key,
            inbox: Inbox::default(),
            p2c_done: AtomicBool::new(false),
            bye_answered: AtomicBool::new(false),
            closed: CancellationToken::new(),
            stop_reading: abort.child_token(),
            abort,
            credit: Mutex::new(SendCredit::default()),
            resume: Notify::new(),
            queued: AtomicUsize::new(0),
            queued_cap,
            flow,
        }
    }

    /// True if a packet with `key` (its session id included) is for this
    /// session now.
    pub(crate) fn accepts(&self, key: &LogicalConnKey, a: &Arrival) -> bool {
        if self.closed.is_cancelled()
            || self.abort.is_cancelled()
            || key.session_id != self.key.session_id
        {
            return false;
        }
        match a {
            Arrival::Ack => true,
            Arrival::Data(_) | Arrival::Bye => !self.p2c_done.load(Relaxed),
        }
    }

    /// Hands a packet to the session. Err when the sender broke the rules
    /// (the session is then aborted by the caller).
    pub(crate) fn push(&self, a: Arrival) -> Result<(), Violation> {
        match a {
            Arrival::Data(b) => {
                let cost = b.len() + PACKET_COST;
                let q = self.queued.fetch_add(cost, Relaxed) + cost;
                if q > self.queued_cap {
                    return Err(Violation::Overrun {
                        queued: q,
                        cap: self.queued_cap,
                    });
                }
                self.inbox.push(Arrival::Data(b));
            }
            Arrival::Bye => {
                self.p2c_done.store(true, Relaxed);
                self.lock_credit().release();
                self.resume.notify_one();
                self.inbox.push(Arrival::Bye);
            }
            Arrival::Ack => {
                if self
                    .lock_credit()
                    .on_ack(&self.flow)
                    .map_err(Violation::Flow)?
                {
                    self.resume.notify_one();
                }
            }
        }
        Ok(())
    }

    /// The other end's instance is gone: stop reading the backend, and
    /// end its stream after what already arrived (written first, as the C
    /// proxy queues its half-close after pending writes).
    pub(crate) fn end_remote(&self) {
        self.p2c_done.store(true, Relaxed);
        self.lock_credit().release();
        self.resume.notify_one();
        self.inbox.push(Arrival::Bye);
        self.stop_reading.cancel();
    }

    /// Counts DATA packets sent; true when the sender must pause.
    pub fn on_sent(&self, n: u32) -> bool {
        self.lock_credit().on_sent(n, &self.flow)
    }

    pub fn is_paused(&self) -> bool {
        self.lock_credit().is_paused()
    }

    fn lock_credit(&self) -> std::sync::MutexGuard<'_, SendCredit> {
        self.credit.lock()
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum Violation {
    #[error("{0}")]
    Flow(FlowViolation),
    #[error("{queued} bytes queued for the backend, over the flow-control bound of {cap}")]
    Overrun { queued: usize, cap: usize },
}
