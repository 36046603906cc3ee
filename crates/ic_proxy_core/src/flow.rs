//! DATA_ACK credit flow control as the C proxy speaks it, as two small pure
//! state machines with checked arithmetic. Both sides count DATA packets: the
//! sender pauses reading its backend at `pause_at` unacknowledged packets and
//! resumes at `resume_at`; the receiver sends one DATA_ACK per `ack_interval`
//! packets written to its backend. A peer that acknowledges more than was sent
//! breaks the rules and loses that logical connection.

/// The three numbers of the scheme; the C proxy's are 100 / 30 / 10.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowParams {
    pub pause_at: u32,
    pub resume_at: u32,
    pub ack_interval: u32,
}

impl Default for FlowParams {
    fn default() -> Self {
        FlowParams {
            pause_at: 100,
            resume_at: 30,
            ack_interval: 10,
        }
    }
}

impl FlowParams {
    /// A paused sender must be able to resume: after the receiver has
    /// acknowledged everything it can, at most `ack_interval - 1` packets stay
    /// unacknowledged, which must not exceed `resume_at`.
    pub fn validate(&self) -> Result<(), FlowParamsError> {
        if self.ack_interval == 0 {
            return Err(FlowParamsError::NoAckInterval);
        }
        if self.resume_at >= self.pause_at {
            return Err(FlowParamsError::ResumeNotBelowPause {
                resume_at: self.resume_at,
                pause_at: self.pause_at,
            });
        }
        if self.ack_interval > self.resume_at + 1 {
            return Err(FlowParamsError::AckIntervalAboveResume {
                ack_interval: self.ack_interval,
                resume_at: self.resume_at,
            });
        }
        Ok(())
    }
}

/// Flow-control parameters that cannot work, and which rule they break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowParamsError {
    #[error("the DATA_ACK interval must be at least 1")]
    NoAckInterval,
    #[error("the resume threshold ({resume_at}) must be below the pause threshold ({pause_at})")]
    ResumeNotBelowPause { resume_at: u32, pause_at: u32 },
    #[error(
        "the DATA_ACK interval ({ack_interval}) must not exceed the resume threshold + 1 ({}), or a paused sender never resumes",
        resume_at + 1
    )]
    AckIntervalAboveResume { ack_interval: u32, resume_at: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DATA_ACK for {acked} packets but only {unacked} are unacknowledged")]
pub struct FlowViolation {
    pub acked: u32,
    pub unacked: u32,
}

/// The sending end of one logical connection.
#[derive(Clone, Debug, Default)]
pub struct SendCredit {
    unacked: u32,
    paused: bool,
}

impl SendCredit {
    /// Counts `n` DATA packets sent; true when the sender must now pause.
    pub fn on_sent(&mut self, n: u32, p: &FlowParams) -> bool {
        self.unacked = self.unacked.saturating_add(n);
        if !self.paused && self.unacked >= p.pause_at {
            self.paused = true;
        }
        self.paused
    }

    /// One DATA_ACK arrived; Ok(true) when a paused sender may resume.
    pub fn on_ack(&mut self, p: &FlowParams) -> Result<bool, FlowViolation> {
        self.unacked = self
            .unacked
            .checked_sub(p.ack_interval)
            .ok_or(FlowViolation {
                acked: p.ack_interval,
                unacked: self.unacked,
            })?;
        if self.paused && self.unacked <= p.resume_at {
            self.paused = false;
            return Ok(true);
        }
        Ok(false)
    }

    /// A BYE from the receiver resumes a paused sender, as in the C proxy.
    pub fn release(&mut self) {
        self.paused = false;
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn unacked(&self) -> u32 {
        self.unacked
    }
}

/// The receiving end of one logical connection.
#[derive(Clone, Debug, Default)]
pub struct RecvCredit {
    delivered: u32,
}

impl RecvCredit {
    /// Counts `n` DATA packets written to the backend; returns how many
    /// DATA_ACKs to send back now.
    pub fn on_delivered(&mut self, n: u32, p: &FlowParams) -> u32 {
        self.delivered = self.delivered.saturating_add(n);
        let acks = self.delivered / p.ack_interval;
        self.delivered %= p.ack_interval;
        acks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: FlowParams = FlowParams {
        pause_at: 100,
        resume_at: 30,
        ack_interval: 10,
    };

    #[test]
    fn pauses_at_100_and_resumes_at_30() {
        let mut s = SendCredit::default();
        assert!(!s.on_sent(99, &P));
        assert!(s.on_sent(1, &P));
        assert_eq!(s.unacked(), 100);
        for expect_unacked in [90, 80, 70, 60, 50, 40] {
            assert_eq!(s.on_ack(&P), Ok(false));
            assert_eq!(s.unacked(), expect_unacked);
            assert!(s.is_paused());
        }
        assert_eq!(s.on_ack(&P), Ok(true));
        assert_eq!(s.unacked(), 30);
        assert!(!s.is_paused());
    }

    #[test]
    fn ack_for_nothing_is_a_violation() {
        let mut s = SendCredit::default();
        s.on_sent(9, &P);
        assert_eq!(
            s.on_ack(&P),
            Err(FlowViolation {
                acked: 10,
                unacked: 9
            })
        );
    }

    #[test]
    fn receiver_acks_every_tenth_packet_and_keeps_the_remainder() {
        let mut r = RecvCredit::default();
        assert_eq!(r.on_delivered(9, &P), 0);
        assert_eq!(r.on_delivered(1, &P), 1);
        assert_eq!(r.on_delivered(25, &P), 2);
        assert_eq!(r.on_delivered(5, &P), 1);
    }

    #[test]
    fn a_full_window_always_drains_below_resume() {
        // Whatever the receiver delivered, a paused sender resumes once every
        // ACK the receiver owes has arrived.
        for sent in P.pause_at..P.pause_at + 40 {
            let mut s = SendCredit::default();
            let mut r = RecvCredit::default();
            assert!(s.on_sent(sent, &P));
            let acks = r.on_delivered(sent, &P);
            for _ in 0..acks {
                s.on_ack(&P).unwrap();
            }
            assert!(!s.is_paused(), "stalled with {sent} sent");
        }
    }

    #[test]
    fn validate_rejects_parameters_that_stall() {
        assert!(P.validate().is_ok());
        let params = |pause_at, resume_at, ack_interval| FlowParams {
            pause_at,
            resume_at,
            ack_interval,
        };
        assert_eq!(
            params(30, 30, 10).validate(),
            Err(FlowParamsError::ResumeNotBelowPause {
                resume_at: 30,
                pause_at: 30
            })
        );
        assert_eq!(
            params(100, 5, 10).validate(),
            Err(FlowParamsError::AckIntervalAboveResume {
                ack_interval: 10,
                resume_at: 5
            })
        );
        assert_eq!(
            params(100, 30, 0).validate(),
            Err(FlowParamsError::NoAckInterval)
        );
        assert_eq!(
            params(100, 5, 10).validate().unwrap_err().to_string(),
            "the DATA_ACK interval (10) must not exceed the resume threshold + 1 (6), or a paused sender never resumes"
        );
    }

    #[test]
    fn bye_releases_a_paused_sender() {
        let mut s = SendCredit::default();
        s.on_sent(100, &P);
        s.release();
        assert!(!s.is_paused());
    }
}
