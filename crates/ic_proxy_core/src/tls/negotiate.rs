//! How two proxies agree on TLS inside the PEER_HELLO exchange, so that a C
//! proxy never sees a byte it cannot parse.
//!
//! The dialer puts an offer in the `command_id` of its PEER_HELLO, a header
//! field the C proxy's acceptor does not read (it uses only the source
//! dbid). The acceptor answers in the `command_id` of its PEER_HELLO_ACK,
//! and only ever puts a marker there for a dialer that sent one (so never
//! for a C proxy). TLS starts right after the ACK: the dialer is the TLS
//! client, the acceptor the server. Once the acceptor has checked the
//! dialer's certificate it sends the same ACK again inside TLS (TLS 1.3
//! lets the client finish before the server has looked at its
//! certificate: the dialer waits for this confirmation, or reads the alert
//! that refused it). Everything after it on the link (authentication,
//! packets) runs inside TLS.

use super::TlsMode;

/// PEER_HELLO `command_id`: the dialer speaks TLS and would link without it
/// (`ic_proxy.tls = on`).
pub const OFFER: u32 = 0x544c_5301;
/// PEER_HELLO `command_id`: the dialer links only over TLS (`require`).
pub const REQUIRE: u32 = 0x544c_5302;
/// PEER_HELLO_ACK `command_id`: the acceptor starts TLS.
pub const ACCEPT: u32 = 0x544c_5381;
/// PEER_HELLO_ACK `command_id`: the acceptor refuses a plaintext link
/// (`require` there, and the dialer offered nothing) and closes.
pub const REQUIRED: u32 = 0x544c_5382;
/// PEER_HELLO_ACK `command_id`: the dialer requires TLS, which is off at
/// the acceptor; it closes.
pub const UNAVAILABLE: u32 = 0x544c_5383;

/// What a dialer in `mode` puts in its PEER_HELLO's `command_id`.
pub fn hello_marker(mode: TlsMode) -> u32 {
    match mode {
        TlsMode::Off => 0,
        TlsMode::On => OFFER,
        TlsMode::Require => REQUIRE,
    }
}

/// What the acceptor decides about a PEER_HELLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptorPlan {
    /// Answer with this `command_id` and link in plaintext.
    Plain { ack_marker: u32 },
    /// Answer [`ACCEPT`] and start TLS as the server.
    Tls,
    /// Answer with this `command_id`, then refuse the link for `reason`.
    Refuse {
        ack_marker: u32,
        reason: &'static str,
    },
}

/// The acceptor in `mode` (TLS usable: `ready`) gets a PEER_HELLO whose
/// `command_id` is `marker`.
pub fn acceptor_plan(mode: TlsMode, ready: bool, marker: u32) -> AcceptorPlan {
    let offered = marker == OFFER || marker == REQUIRE;
    match (mode, offered && ready) {
        (TlsMode::On | TlsMode::Require, true) => AcceptorPlan::Tls,
        (TlsMode::Require, false) => AcceptorPlan::Refuse {
            ack_marker: REQUIRED,
            reason: "the peer offered no TLS (a C proxy, or ic_proxy.tls = off there) and ic_proxy.tls = require here",
        },
        (_, false) if marker == REQUIRE => AcceptorPlan::Refuse {
            ack_marker: UNAVAILABLE,
            reason: "the peer requires TLS (ic_proxy.tls = require there) and ic_proxy.tls is off here",
        },
        // A C proxy, a dialer with TLS off, or TLS off here: plaintext,
        // with a C proxy's ACK exactly.
        _ => AcceptorPlan::Plain { ack_marker: 0 },
    }
}

/// What the dialer does with the PEER_HELLO_ACK's `command_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialerPlan {
    Plain,
    Tls,
    Refuse(&'static str),
}

/// The dialer in `mode` (which sent [`hello_marker`]) reads `marker` in the
/// PEER_HELLO_ACK.
pub fn dialer_plan(mode: TlsMode, marker: u32) -> DialerPlan {
    match (mode, marker) {
        (TlsMode::On | TlsMode::Require, ACCEPT) => DialerPlan::Tls,
        (_, REQUIRED) => DialerPlan::Refuse(
            "the peer requires TLS (ic_proxy.tls = require there) and refused a plaintext link",
        ),
        (_, UNAVAILABLE) => DialerPlan::Refuse(
            "the peer has ic_proxy.tls = off and ic_proxy.tls = require here",
        ),
        (TlsMode::Require, _) => DialerPlan::Refuse(
            "the peer answered without TLS (a C proxy, or an ic-proxy without TLS) and ic_proxy.tls = require here",
        ),
        // A marker this proxy did not ask for is ignored, as a C proxy
        // ignores the field.
        _ => DialerPlan::Plain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TlsMode::*;

    /// What a link between a dialer and an acceptor in these modes ends up
    /// as: "tls", "plain", or "refused".
    fn outcome(dialer: TlsMode, acceptor: TlsMode) -> &'static str {
        let plan = acceptor_plan(acceptor, true, hello_marker(dialer));
        let ack = match plan {
            AcceptorPlan::Tls => ACCEPT,
            AcceptorPlan::Plain { ack_marker } => ack_marker,
            AcceptorPlan::Refuse { ack_marker, .. } => ack_marker,
        };
        let dialer_side = dialer_plan(dialer, ack);
        match (plan, dialer_side) {
            (AcceptorPlan::Tls, DialerPlan::Tls) => "tls",
            (AcceptorPlan::Plain { .. }, DialerPlan::Plain) => "plain",
            (AcceptorPlan::Refuse { .. }, DialerPlan::Refuse(_)) => "refused",
            (AcceptorPlan::Plain { .. }, DialerPlan::Refuse(_)) => "refused",
            other => panic!("the two ends disagree: {other:?}"),
        }
    }

    #[test]
    fn every_pair_of_modes_links_as_the_table_says() {
        let table = [
            (Off, Off, "plain"),
            (Off, On, "plain"),
            (Off, Require, "refused"),
            (On, Off, "plain"),
            (On, On, "tls"),
            (On, Require, "tls"),
            (Require, Off, "refused"),
            (Require, On, "tls"),
            (Require, Require, "tls"),
        ];
        for (dialer, acceptor, want) in table {
            assert_eq!(
                outcome(dialer, acceptor),
                want,
                "dialer {dialer:?}, acceptor {acceptor:?}"
            );
        }
    }

    #[test]
    fn a_c_proxy_never_gets_a_marker_and_its_plain_ack_is_understood() {
        // A C proxy dials with command_id 0: no acceptor mode answers it
        // with anything but a C proxy's ACK, except `require`, which
        // refuses (the C proxy then sees an ACK and end of stream).
        assert_eq!(
            acceptor_plan(Off, true, 0),
            AcceptorPlan::Plain { ack_marker: 0 }
        );
        assert_eq!(
            acceptor_plan(On, true, 0),
            AcceptorPlan::Plain { ack_marker: 0 }
        );
        assert!(matches!(
            acceptor_plan(Require, true, 0),
            AcceptorPlan::Refuse { .. }
        ));
        // A C proxy accepts with command_id 0: `on` falls back, `require`
        // refuses, `off` links.
        assert_eq!(dialer_plan(On, 0), DialerPlan::Plain);
        assert_eq!(dialer_plan(Off, 0), DialerPlan::Plain);
        assert!(matches!(dialer_plan(Require, 0), DialerPlan::Refuse(_)));
    }

    #[test]
    fn an_acceptor_whose_tls_cannot_be_used_never_starts_it() {
        // `on` with unusable certificates links in plaintext; `require`
        // refuses.
        assert_eq!(
            acceptor_plan(On, false, OFFER),
            AcceptorPlan::Plain { ack_marker: 0 }
        );
        assert!(matches!(
            acceptor_plan(Require, false, OFFER),
            AcceptorPlan::Refuse { .. }
        ));
    }

    #[test]
    fn the_markers_are_distinct_and_never_zero() {
        let all = [OFFER, REQUIRE, ACCEPT, REQUIRED, UNAVAILABLE];
        for (i, a) in all.iter().enumerate() {
            assert_ne!(*a, 0);
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
