//! Events recorded for counterexamples, and the violations found.
//!
//! A [`Recorder`] is shared by everything in one modelled system (one per loom execution). It is
//! [`Ghost`] state: recording is never a scheduling point. A counterexample is the event list of
//! the failing execution, printed one numbered line per event by [`Recorder::format_trace`].
//!
//! ```
//! use ioregionfd_model::trace::Recorder;
//! use ioregionfd_model::invariants::LIFETIME;
//! let rec = Recorder::new();
//! rec.event(Some(0), "publish mmio bus (1 entries)");
//! rec.violation(&LIFETIME, "use of eventfd 3 after it was destroyed");
//! assert_eq!(rec.violations().len(), 1);
//! assert!(rec.format_trace().contains("1 main vm0: publish mmio bus"));
//! ```

use crate::invariants::Invariant;
use crate::sync::{Arc, Ghost, thread_name};
use std::fmt;

/// One step that matters: lock taken, bytes moved, signal, exit, close, publish, reclaim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Position in the trace, from 1.
    pub seq: usize,
    /// The thread that made the step (`vcpu0`, `vmm`, `device`, or `main`).
    pub thread: String,
    /// The VM concerned, if any.
    pub vm: Option<usize>,
    /// What happened.
    pub what: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vm {
            Some(vm) => write!(f, "{} {} vm{}: {}", self.seq, self.thread, vm, self.what),
            None => write!(f, "{} {}: {}", self.seq, self.thread, self.what),
        }
    }
}

/// A broken invariant, with where in the trace it was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's stable id (`bus`, `lifetime`, ...).
    pub invariant: &'static str,
    /// What was seen.
    pub text: String,
    /// Number of events recorded when it was seen.
    pub after_event: usize,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "violation {}: {}", self.invariant, self.text)
    }
}

#[derive(Debug, Default)]
struct Log {
    keep_events: bool,
    events: Vec<Event>,
    violations: Vec<Violation>,
    ledger: Ledger,
}

/// The ghost ledger behind `exactly-once` and `order`: which commands devices read, and how each
/// access ended.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Tags of the commands devices read, in order.
    pub delivered: Vec<crate::fd::channel::Tag>,
    /// The channel each of `delivered` came over (an identity, same index).
    pub delivered_on: Vec<u64>,
    /// The final outcome of each access that ended, by tag.
    pub ended: Vec<(crate::fd::channel::Tag, Ended)>,
}

/// How an access ended, for `exactly-once`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// An ioregion's device completed it: its command must have been read exactly once.
    Device,
    /// It exited to userspace (or another in-kernel device took it): no device may have read it.
    Userspace,
    /// `KVM_EXIT_IOREGIONFD_FAILURE`: the command was sent and the device may have read it;
    /// userspace is told so (read zero or one times).
    Unknown,
}

/// The shared event and violation log of one modelled system.
#[derive(Clone, Debug)]
pub struct Recorder(Arc<Ghost<Log>>);

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder that keeps every event.
    pub fn new() -> Self {
        Recorder(Arc::new(Ghost::new(Log { keep_events: true, ..Log::default() })))
    }

    /// A recorder that keeps violations but no events (fuzzing and long runs).
    pub fn without_events() -> Self {
        Recorder(Arc::new(Ghost::new(Log::default())))
    }

    /// Records an event made by the current thread.
    pub fn event(&self, vm: Option<usize>, what: impl fmt::Display) {
        self.0.with(|log| {
            if log.keep_events {
                let seq = log.events.len() + 1;
                log.events.push(Event { seq, thread: thread_name(), vm, what: what.to_string() });
            }
        });
    }

    /// Records a violation of `invariant` (also as an event, so the trace shows where).
    pub fn violation(&self, invariant: &Invariant, text: impl fmt::Display) {
        let text = text.to_string();
        self.event(None, format_args!("VIOLATION {}: {}", invariant.id, text));
        self.0.with(|log| {
            let after_event = log.events.len();
            log.violations.push(Violation { invariant: invariant.id, text, after_event });
        });
    }

    /// Ghost: a device read the whole command of access `tag`. A command of the same vCPU that
    /// arrives after a later one of it is an `order` violation; the same command read twice is an
    /// `exactly-once` violation.
    pub fn delivered(&self, tag: crate::fd::channel::Tag, channel: u64) {
        let (dup, later) = self.0.with(|log| {
            let l = &mut log.ledger;
            let dup = l.delivered.contains(&tag);
            let later = l
                .delivered
                .iter()
                .zip(&l.delivered_on)
                .any(|(t, c)| *c == channel && t.vm == tag.vm && t.vcpu == tag.vcpu && t.seq > tag.seq);
            l.delivered.push(tag);
            l.delivered_on.push(channel);
            (dup, later)
        });
        if dup {
            self.violation(
                &crate::invariants::EXACTLY_ONCE,
                format_args!("the device reads the command of {tag} a second time"),
            );
        } else if later {
            self.violation(
                &crate::invariants::ORDER,
                format_args!("the command of {tag} arrives after a later command of its vCPU"),
            );
        }
    }

    /// Ghost: access `tag` ended, as `how` says.
    pub fn ended(&self, tag: crate::fd::channel::Tag, how: Ended) {
        self.0.with(|log| log.ledger.ended.push((tag, how)));
    }

    /// The ledger so far.
    pub fn ledger(&self) -> Ledger {
        self.0.with(|log| log.ledger.clone())
    }

    /// Every violation recorded so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.0.with(|log| log.violations.clone())
    }

    /// How many violations were recorded so far.
    pub fn violation_count(&self) -> usize {
        self.0.with(|log| log.violations.len())
    }

    /// The violations recorded after the first `since`.
    pub fn violations_since(&self, since: usize) -> Vec<Violation> {
        self.0.with(|log| log.violations.get(since..).unwrap_or_default().to_vec())
    }

    /// Every event recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.0.with(|log| log.events.clone())
    }

    /// The trace, one numbered line per event.
    pub fn format_trace(&self) -> String {
        self.0.with(|log| log.events.iter().map(|e| format!("{e}\n")).collect())
    }
}

#[cfg(all(test, not(loom), not(feature = "shuttle")))]
mod tests {
    use super::*;
    use crate::fd::channel::Tag;

    #[test]
    fn order_and_duplicates_are_caught() {
        let rec = Recorder::new();
        let t = |seq| Tag { vm: 0, vcpu: 1, seq };
        rec.delivered(t(1), 7);
        rec.delivered(t(3), 7);
        assert!(rec.violations().is_empty());
        rec.delivered(t(2), 7); // after a later one of the same vCPU on the same channel
        assert_eq!(rec.violations()[0].invariant, "order");
        rec.delivered(t(3), 7); // the same command again
        assert_eq!(rec.violations()[1].invariant, "exactly-once");
        rec.delivered(Tag { vm: 1, vcpu: 1, seq: 1 }, 7); // another VM's vCPU 1: not ordered with these
        rec.delivered(t(0), 8); // another channel: two devices, no order between them
        assert_eq!(rec.violations().len(), 2);
    }
}
