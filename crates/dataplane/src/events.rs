//! The recent tunnels and refusals of a gateway, kept in memory for `gwctl get events`,
//! `describe` and the console.
//!
//! Two bounded rings: refusals (and cuts, and broken tunnels) apart from tunnels that closed
//! cleanly, so a busy gateway's traffic does not push out the refusal an operator is looking for.

use std::collections::VecDeque;

use clusterlink_api::activity::{Outcome, TunnelEvent};
use parking_lot::Mutex;

/// Events kept of each ring: at a few hundred bytes each, under 200 KiB in all, and minutes of
/// refusals even when a misconfigured client retries several times a second.
pub const EVENTS_KEPT: usize = 256;

/// Longest message or policy name kept with an event: a peer's refusal message is its own text
/// (up to a whole answer head), and the ring must stay small whatever peers send.
pub const MAX_EVENT_TEXT: usize = 512;

/// `text` cut to [`MAX_EVENT_TEXT`] bytes at a character boundary, saying it was cut, with its
/// control characters escaped: events reach terminals (`gwctl get events`) and the console.
fn bounded(text: &mut String) {
    if text.contains(clusterlink_api::text::is_unsafe_char) {
        *text = clusterlink_api::text::escaped(text).into_owned();
    }
    if text.len() > MAX_EVENT_TEXT {
        let mut end = MAX_EVENT_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

/// What a query of the events keeps.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// `namespace/name`
    pub import: Option<String>,
    /// `namespace/name`
    pub export: Option<String>,
    pub peer: Option<String>,
    /// Only refusals, cuts and broken tunnels.
    pub problems_only: bool,
}

impl EventFilter {
    fn keeps(&self, event: &TunnelEvent) -> bool {
        self.import
            .as_ref()
            .is_none_or(|i| event.import.as_ref() == Some(i))
            && self.export.as_ref().is_none_or(|e| event.export == *e)
            && self.peer.as_ref().is_none_or(|p| event.peer == *p)
            && (!self.problems_only || event.outcome != Outcome::Closed)
    }
}

#[derive(Default)]
pub struct EventLog {
    rings: Mutex<Rings>,
}

#[derive(Default)]
struct Rings {
    closed: VecDeque<TunnelEvent>,
    problems: VecDeque<TunnelEvent>,
}

impl EventLog {
    pub(crate) fn record(&self, mut event: TunnelEvent) {
        bounded(&mut event.message);
        if let Some(policy) = &mut event.policy {
            bounded(policy);
        }
        let mut rings = self.rings.lock();
        let ring = if event.outcome == Outcome::Closed {
            &mut rings.closed
        } else {
            &mut rings.problems
        };
        if ring.len() == EVENTS_KEPT {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// The events `filter` keeps, newest first, at most `limit`.
    pub fn recent(&self, filter: &EventFilter, limit: usize) -> Vec<TunnelEvent> {
        let mut events: Vec<TunnelEvent> = {
            let rings = self.rings.lock();
            rings
                .closed
                .iter()
                .chain(&rings.problems)
                .filter(|e| filter.keeps(e))
                .cloned()
                .collect()
        };
        events.sort_by_key(|e| std::cmp::Reverse(e.time_ms));
        events.truncate(limit);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterlink_api::activity::TunnelSide;

    fn event(time_ms: u64, outcome: Outcome, peer: &str) -> TunnelEvent {
        TunnelEvent {
            time_ms,
            side: TunnelSide::Egress,
            outcome,
            refused_by: None,
            reason: None,
            policy: None,
            import: Some("default/web".into()),
            export: "default/web".into(),
            peer: peer.into(),
            client: None,
            message: String::new(),
            sent: 0,
            received: 0,
            duration_ms: 0,
        }
    }

    #[test]
    fn refusals_outlive_a_flood_of_clean_tunnels() {
        let log = EventLog::default();
        log.record(event(1, Outcome::Refused, "p1"));
        for t in 2..2 + 10 * EVENTS_KEPT as u64 {
            log.record(event(t, Outcome::Closed, "p2"));
        }
        let all = log.recent(&EventFilter::default(), usize::MAX);
        assert_eq!(all.len(), EVENTS_KEPT + 1, "each ring is bounded");
        assert!(all.windows(2).all(|w| w[0].time_ms >= w[1].time_ms));
        let refusals = EventFilter {
            problems_only: true,
            ..Default::default()
        };
        assert_eq!(log.recent(&refusals, 10)[0].time_ms, 1);
        let by_peer = EventFilter {
            peer: Some("p1".into()),
            ..Default::default()
        };
        assert_eq!(log.recent(&by_peer, 10).len(), 1);
        assert_eq!(log.recent(&EventFilter::default(), 3).len(), 3);
    }

    #[test]
    fn a_peers_long_message_is_cut() {
        let log = EventLog::default();
        let mut long = event(1, Outcome::Refused, "p1");
        long.message = "é".repeat(MAX_EVENT_TEXT);
        long.policy = Some("x".repeat(10 * MAX_EVENT_TEXT));
        log.record(long);
        let kept = &log.recent(&EventFilter::default(), 1)[0];
        assert!(kept.message.len() <= MAX_EVENT_TEXT + "…".len());
        assert!(kept.message.ends_with('…'));
        assert!(kept.policy.as_ref().unwrap().len() <= MAX_EVENT_TEXT + "…".len());
    }

    #[test]
    fn control_characters_are_kept_escaped() {
        let log = EventLog::default();
        let mut forged = event(1, Outcome::Refused, "p1");
        forged.message = "denied\n\x1b]0;pwned\x07".into();
        forged.policy = Some("default/x\r".into());
        log.record(forged);
        let kept = &log.recent(&EventFilter::default(), 1)[0];
        assert_eq!(kept.message, "denied\\u{a}\\u{1b}]0;pwned\\u{7}");
        assert_eq!(kept.policy.as_deref(), Some("default/x\\u{d}"));
    }
}
