//! What waits to go to one peer: the frames, the byte budget that all the
//! logical connections to the peer share, the bytes of echoes and answers
//! the proxy queued on its own, and the link generation. It never touches a
//! socket: the link's writer takes the frames and gives their bytes back.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, Semaphore};

use crate::protocol::EncodedHeader;
use crate::status::PeerStats;
use crate::sync::Mutex;
use crate::tls::LinkStream;

/// One packet on its way to a peer: the header is built inline, the payload
/// is shared with the buffer it was read into.
pub(crate) struct OutFrame {
    pub header: EncodedHeader,
    pub payload: Bytes,
    /// A probe's echo, counted in `PeerQueue::echo_queued` while it waits.
    pub echo: bool,
    /// The link generation the frame belongs to: frames of logical
    /// connections cut with an earlier link are never sent on a later one
    /// ([`PeerQueue::send`] refuses them, [`PeerQueue::close_generation`]
    /// discards those already queued).
    pub generation: u64,
    /// Bytes of the peer's queue budget this frame holds
    /// ([`PeerQueue::reserve`]); given back once it is written or discarded.
    pub charged: u32,
}

/// A link its handshake made: the stream, bytes read past the handshake,
/// and how it is protected.
pub(crate) struct NewLink {
    pub stream: LinkStream,
    pub leftover: BytesMut,
    pub security: LinkSecurity,
}

/// How a link is protected: what the status shows of it, and what a reload
/// checks again.
#[derive(Clone, Debug, Default)]
pub(crate) struct LinkSecurity {
    /// The authentication secret its handshake used (None: not
    /// authenticated).
    pub secret: Option<Arc<[u8]>>,
    /// The peer's certificate chain, on a TLS link.
    pub peer_chain: Option<Vec<CertificateDer<'static>>>,
    /// `plaintext`, or `TLS1.3 <cipher suite>`.
    pub transport: String,
}

impl LinkSecurity {
    /// As `ic_proxy_status()` shows it: the transport, `+ auth` when the
    /// peer authenticated with the secret.
    pub fn describe(&self) -> String {
        if self.secret.is_some() {
            format!("{} + auth", self.transport)
        } else {
            self.transport.clone()
        }
    }
}

/// Echoes of probes waiting for one peer, at most: a peer that sends probes
/// and reads nothing back cannot make the queue grow past this.
const PROBE_ECHO_LIMIT: usize = 1 << 20;

/// The frames queued for one peer and what they may hold.
pub(crate) struct PeerQueue {
    tx: mpsc::UnboundedSender<OutFrame>,
    /// `cached_bytes` is what the budget lent out.
    stats: Arc<PeerStats>,
    /// Bytes of probe echoes queued and not yet taken by the link's writer.
    echo_queued: AtomicUsize,
    /// Bumped each time a link is lost.
    generation: AtomicU64,
    /// Bytes of DATA that sessions may still queue for this peer: all the
    /// logical connections to one peer together cannot park more than
    /// `ProxySettings::peer_queue_bytes` here while the link is slower than
    /// their backends; a session waits for room before it reads on.
    budget: Semaphore,
    budget_cap: u32,
    /// Held while a frame is checked against the generation and queued,
    /// and while a lost link's generation is closed and its frames
    /// discarded: no frame of a lost link is queued after that discard,
    /// where it would hold budget until the next link.
    gate: Mutex<()>,
}

impl PeerQueue {
    /// A queue with `budget` bytes for DATA, and the receiving end for the
    /// link's writer.
    pub fn new(
        budget: usize,
        stats: Arc<PeerStats>,
    ) -> (PeerQueue, mpsc::UnboundedReceiver<OutFrame>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = PeerQueue {
            tx,
            stats,
            echo_queued: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            budget: Semaphore::new(budget),
            budget_cap: budget.min(u32::MAX as usize) as u32,
            gate: Mutex::new(()),
        };
        (queue, rx)
    }

    /// Queues a frame for the peer. Frames wait while the link is down;
    /// a frame of a link already lost is discarded and its budget given
    /// back.
    pub fn send(&self, f: OutFrame) {
        let _gate = self.gate.lock();
        if f.generation != self.generation() {
            self.discard(&f);
            return;
        }
        let _ = self.tx.send(f);
    }

    /// The generation of the current (or next) link.
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// A link was lost: what is queued for it (the frames of the logical
    /// connections being ended now) is discarded and its budget given
    /// back, and what they queue from now on never goes out on the next
    /// link. Frames queued for the next link are not touched.
    pub fn close_generation(&self, rx: &mut mpsc::UnboundedReceiver<OutFrame>) {
        let _gate = self.gate.lock();
        self.generation.fetch_add(1, Relaxed);
        // Everything queued now was checked against the old generation.
        while let Ok(f) = rx.try_recv() {
            self.discard(&f);
        }
    }

    fn discard(&self, f: &OutFrame) {
        let charged = self.taken(f);
        self.release(charged);
    }

    /// Waits until `bytes` of DATA may be queued for this peer and takes
    /// them from the budget; returns what the frame must carry in
    /// [`OutFrame::charged`]. A frame larger than the whole budget takes all
    /// of it.
    pub async fn reserve(&self, bytes: usize) -> u32 {
        let n = bytes.min(self.budget_cap as usize) as u32;
        if n == 0 {
            return 0;
        }
        match self.budget.acquire_many(n).await {
            Ok(p) => {
                p.forget();
                self.stats.cached_bytes.fetch_add(i64::from(n), Relaxed);
                n
            }
            // Never closed; nothing to wait for then.
            Err(_) => 0,
        }
    }

    /// Queues a frame the proxy sends on its own (a probe's echo, a BYE for
    /// a logical connection it ended), counted against
    /// [`PROBE_ECHO_LIMIT`]: a peer that sends and never reads cannot make
    /// them pile up. Past it nothing is queued, and the error is how many
    /// bytes of them already wait.
    pub fn send_echo(&self, header: EncodedHeader, payload: Bytes) -> Result<(), usize> {
        let size = header.len() + payload.len();
        let waiting = self.echo_queued.load(Relaxed);
        if waiting + size > PROBE_ECHO_LIMIT {
            return Err(waiting);
        }
        self.echo_queued.fetch_add(size, Relaxed);
        self.send(OutFrame {
            header,
            payload,
            echo: true,
            generation: self.generation(),
            charged: 0,
        });
        Ok(())
    }

    /// Gives queue budget back (frames written or discarded).
    pub fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.stats.cached_bytes.fetch_sub(bytes as i64, Relaxed);
            self.budget.add_permits(bytes);
        }
    }

    /// A frame left the queue (written, or discarded with a dead link);
    /// returns the budget it held, for the caller to release.
    #[must_use = "the budget the frame held must be released"]
    pub fn taken(&self, f: &OutFrame) -> usize {
        if f.echo {
            self.echo_queued
                .fetch_sub(f.header.len() + f.payload.len(), Relaxed);
        }
        f.charged as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address_map::PeerAddr;
    use crate::protocol::{Dialect, Endpoint, Header, PacketType};
    use crate::status::PeerState;
    use std::time::Duration;

    fn queue(budget: usize) -> (PeerQueue, mpsc::UnboundedReceiver<OutFrame>) {
        let addr = PeerAddr {
            dbid: 2,
            content: 0,
            host: "localhost".into(),
            port: 1,
        };
        PeerQueue::new(
            budget,
            Arc::new(PeerStats::new(addr, PeerState::Connecting)),
        )
    }

    fn bye() -> EncodedHeader {
        let d = Dialect::B;
        let end = Endpoint {
            content: 0,
            dbid: 1,
            pid: 1,
        };
        Header {
            len: d.header_len() as u16,
            ptype: PacketType::Bye,
            src: end,
            dst: end,
            session_id: 1,
            command_id: 1,
            send_slice: 0,
            recv_slice: 0,
        }
        .encode(d)
    }

    fn data(q: &PeerQueue, charged: u32) -> OutFrame {
        OutFrame {
            header: bye(),
            payload: Bytes::new(),
            echo: false,
            generation: q.generation(),
            charged,
        }
    }

    #[tokio::test]
    async fn reserve_takes_from_the_budget_and_release_gives_it_back() {
        let (q, mut rx) = queue(100);
        assert_eq!(q.reserve(0).await, 0);
        assert_eq!(q.reserve(60).await, 60);
        assert_eq!(q.stats.cached_bytes.load(Relaxed), 60);
        // 40 left: 50 more waits until the first frame is written.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), q.reserve(50))
                .await
                .is_err()
        );
        q.send(data(&q, 60));
        let f = rx.try_recv().unwrap();
        q.release(q.taken(&f));
        assert_eq!(q.stats.cached_bytes.load(Relaxed), 0);
        assert_eq!(q.reserve(50).await, 50);
        assert_eq!(q.reserve(50).await, 50);
        assert_eq!(q.stats.cached_bytes.load(Relaxed), 100);
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_takes_all_of_it() {
        let (q, _rx) = queue(100);
        assert_eq!(q.reserve(1000).await, 100);
        assert_eq!(q.stats.cached_bytes.load(Relaxed), 100);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), q.reserve(1))
                .await
                .is_err()
        );
        q.release(100);
        assert_eq!(q.reserve(1).await, 1);
    }

    #[test]
    fn echoes_are_capped_and_take_no_budget() {
        let (q, mut rx) = queue(100);
        let size = bye().len();
        let fit = PROBE_ECHO_LIMIT / size;
        for _ in 0..fit {
            assert_eq!(q.send_echo(bye(), Bytes::new()), Ok(()));
        }
        assert_eq!(q.send_echo(bye(), Bytes::new()), Err(fit * size));
        assert_eq!(q.stats.cached_bytes.load(Relaxed), 0);
        // One echo written makes room for one more.
        let f = rx.try_recv().unwrap();
        assert!(f.echo);
        assert_eq!(q.taken(&f), 0);
        assert_eq!(q.send_echo(bye(), Bytes::new()), Ok(()));
        assert!(q.send_echo(bye(), Bytes::new()).is_err());
    }

    #[test]
    fn frames_carry_the_generation() {
        let (q, mut rx) = queue(100);
        assert_eq!(data(&q, 0).generation, 0);
        q.close_generation(&mut rx);
        assert_eq!(data(&q, 0).generation, 1);
    }

    #[tokio::test]
    async fn a_lost_link_gives_back_the_budget_of_its_frames_queued_before_and_after() {
        let (q, mut rx) = queue(100);
        let (a, b) = (q.reserve(30).await, q.reserve(30).await);
        let old = data(&q, a);
        q.send(data(&q, b));
        q.close_generation(&mut rx);
        assert!(rx.try_recv().is_err(), "the lost link's frame is discarded");
        assert_eq!(q.stats.cached_bytes.load(Relaxed), 30);
        // A frame built for the lost link and queued only now.
        q.send(old);
        assert!(
            rx.try_recv().is_err(),
            "a late frame of the lost link is discarded"
        );
        assert_eq!(q.stats.cached_bytes.load(Relaxed), 0);
        // The whole budget is back; frames for the next link wait for it.
        let c = q.reserve(100).await;
        q.send(data(&q, c));
        q.close_generation(&mut rx);
        assert_eq!(q.reserve(100).await, 100);
        let next = q.reserve(0).await;
        q.send(data(&q, next));
        assert!(
            rx.try_recv().is_ok(),
            "a frame for the next link stays queued"
        );
    }
}
