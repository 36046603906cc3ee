//! Probes: `ic_proxy_ping()`'s probes, which the peer proxy echoes, and
//! link probes, which ask an established link whether its peer still
//! answers. Echoes are capped by the peer's queue; a probe never reaches a
//! backend.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;

use super::{drop_packet, OutFrame, PeerSlot};
use crate::context::Ctx;
use crate::protocol::{Endpoint, Header, LogicalConnKey, PacketType};
use crate::session::shared::Arrival;

/// Probes (`ic_proxy_ping()`) address no backend: the peer proxy itself
/// sends DATA and BYE straight back, so a probe crosses the real mesh both
/// ways. Its DATA_ACKs need no answer.
pub const PROBE_SESSION_ID: i32 = i32::MIN;

/// `send_slice` of a link probe (a probe between the proxies themselves,
/// both pids 0) and of its answer.
const LINK_PROBE_REQUEST: i16 = 0;
const LINK_PROBE_ANSWER: i16 = 1;

/// How long an established link has to answer a probe when its peer dials
/// again.
pub(super) const LINK_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) fn echo_probe(ctx: &Ctx, slot: &PeerSlot, h: &Header, a: Arrival) {
    if h.src.pid == 0 && h.send_slice == LINK_PROBE_ANSWER {
        slot.probe_answered.send_replace(h.command_id);
        return;
    }
    let (ptype, payload) = match a {
        Arrival::Data(p) => (PacketType::Data, p),
        Arrival::Bye => (PacketType::Bye, Bytes::new()),
        Arrival::Ack => return,
    };
    let d = ctx.settings.dialect;
    let mut back = LogicalConnKey::from_p2c(h).header(ptype, d, payload.len());
    if h.src.pid == 0 {
        back.send_slice = LINK_PROBE_ANSWER;
    }
    if let Err(waiting) = slot.queue.send_echo(back.encode(d), payload) {
        drop_packet(
            ctx,
            slot,
            &format!("probe not echoed: {waiting} bytes of echoes already wait (the peer does not read them)"),
        );
    }
}

impl PeerSlot {
    /// Asks the peer proxy, over the established link, to answer a probe;
    /// true if it does within `within`. A half-open link (the peer rebooted,
    /// a cable was pulled) gets no answer; neither does a C proxy, which
    /// knows no probes.
    pub(super) async fn link_answers(&self, ctx: &Ctx, within: Duration) -> bool {
        let seq = self.probe_seq.fetch_add(1, Relaxed).wrapping_add(1);
        let mut answered = self.probe_answered.subscribe();
        let d = ctx.settings.dialect;
        let key = LogicalConnKey {
            local: Endpoint {
                content: ctx.my_content(),
                dbid: ctx.settings.dbid,
                pid: 0,
            },
            remote: Endpoint {
                content: self.addr.content,
                dbid: self.addr.dbid,
                pid: 0,
            },
            session_id: PROBE_SESSION_ID,
            command_id: seq,
            send_slice: LINK_PROBE_REQUEST,
            recv_slice: 0,
        };
        self.send(OutFrame {
            header: key.header(PacketType::Data, d, 0).encode(d),
            payload: Bytes::new(),
            echo: false,
            generation: self.generation(),
            charged: 0,
        });
        // A dead link often ends at once: the probe draws a reset.
        let answer = async {
            tokio::select! {
                r = answered.wait_for(|v| *v == seq) => r.is_ok(),
                _ = self.link_down() => false,
            }
        };
        tokio::time::timeout(within, answer).await.unwrap_or(false)
    }
}
