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

use crate::invariants::{Invariant, LIFETIME};
use crate::sync::atomic::{AtomicI64, AtomicU8, Ordering};
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
    events: Vec<Event>,
    violations: Vec<Violation>,
    ledger: Ledger,
}

/// The ghost ledger behind `exactly-once` and `order`: which commands devices read, and how each
/// access ended.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Tags of the commands devices read, in order.
    pub delivered: Vec<Tag>,
    /// The channel each of `delivered` came over (an identity, same index).
    pub delivered_on: Vec<u64>,
    /// The final outcome of each access that ended, by tag.
    pub ended: Vec<(Tag, Ended)>,
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
pub struct Recorder {
    log: Arc<Ghost<Log>>,
    /// Whether events are kept ([`Recorder::without_events`]): fixed when made, so an event that
    /// is not kept takes no lock.
    keep_events: bool,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// A recorder that keeps every event.
    pub fn new() -> Self {
        Recorder { log: Arc::new(Ghost::new(Log::default())), keep_events: true }
    }

    /// A recorder that keeps violations but no events (fuzzing and long runs).
    pub fn without_events() -> Self {
        Recorder { log: Arc::new(Ghost::new(Log::default())), keep_events: false }
    }

    /// Records an event made by the current thread (unless [`record_events`] turned recording
    /// off on this OS thread).
    pub fn event(&self, vm: Option<usize>, what: impl fmt::Display) {
        if !self.keep_events || !RECORDING.get() {
            return;
        }
        self.log.with(|log| {
            let seq = log.events.len() + 1;
            log.events.push(Event { seq, thread: thread_name(), vm, what: what.to_string() });
        });
    }

    /// Records a violation of `invariant` (also as an event, so the trace shows where).
    pub fn violation(&self, invariant: &Invariant, text: impl fmt::Display) {
        let text = text.to_string();
        self.event(None, format_args!("VIOLATION {}: {}", invariant.id, text));
        self.log.with(|log| {
            let after_event = log.events.len();
            log.violations.push(Violation { invariant: invariant.id, text, after_event });
        });
    }

    /// Ghost: a device read the whole command of access `tag`. A command of the same vCPU that
    /// arrives after a later one of it is an `order` violation; the same command read twice is an
    /// `exactly-once` violation.
    pub fn delivered(&self, tag: Tag, channel: u64) {
        let (dup, later) = self.log.with(|log| {
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
    pub fn ended(&self, tag: Tag, how: Ended) {
        self.log.with(|log| log.ledger.ended.push((tag, how)));
    }

    /// The ledger so far.
    pub fn ledger(&self) -> Ledger {
        self.log.with(|log| log.ledger.clone())
    }

    /// Every violation recorded so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.log.with(|log| log.violations.clone())
    }

    /// How many violations were recorded so far.
    pub fn violation_count(&self) -> usize {
        self.log.with(|log| log.violations.len())
    }

    /// The violations recorded after the first `since`.
    pub fn violations_since(&self, since: usize) -> Vec<Violation> {
        self.log.with(|log| log.violations.get(since..).unwrap_or_default().to_vec())
    }

    /// Events recorded so far.
    pub fn event_count(&self) -> usize {
        self.log.with(|log| log.events.len())
    }

    /// The events recorded after the first `since`.
    pub fn events_since(&self, since: usize) -> Vec<Event> {
        self.log.with(|log| log.events.get(since..).unwrap_or_default().to_vec())
    }

    /// Every event recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.log.with(|log| log.events.clone())
    }

    /// A scenario's setup is over: the violations recorded so far are setup findings, which the
    /// verdict does not count (a row judges what its threads do). Their trace lines say so, and
    /// one more event says where the setup ended; returns how many there were.
    pub fn end_setup(&self) -> usize {
        let found = self.log.with(|log| {
            for e in log.events.iter_mut() {
                if let Some(rest) = e.what.strip_prefix("VIOLATION ") {
                    e.what = format!("setup finding (not in the verdict) {rest}");
                }
            }
            log.violations.len()
        });
        if found > 0 {
            self.event(None, format_args!("end of setup: the {found} setup finding(s) above are not in the verdict"));
        }
        found
    }

    /// The trace, one numbered line per event.
    pub fn format_trace(&self) -> String {
        self.log.with(|log| log.events.iter().map(|e| format!("{e}\n")).collect())
    }
}

/// Which vCPU of which VM (`who` in the lock and ownership records), printed `vm0 vcpu1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VcpuId {
    /// The VM's number.
    pub vm: usize,
    /// The vCPU's number in its VM.
    pub vcpu: usize,
}

impl fmt::Display for VcpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vm{} vcpu{}", self.vm, self.vcpu)
    }
}

/// A list of vCPUs as the trace prints it: `vm0 vcpu0, vm0 vcpu1`, or `nobody`.
pub fn vcpu_list(ids: &[VcpuId]) -> String {
    if ids.is_empty() {
        return "nobody".into();
    }
    ids.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
}

thread_local! {
    /// Whether events (and what blocked threads wait for) are recorded on this OS thread.
    static RECORDING: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
    /// Ghost: what each model thread is blocked on, by thread name. loom and shuttle run all the
    /// threads of an execution on one OS thread, so this table sees all of them; a checker prints
    /// it when an execution deadlocks ([`blocked_threads`]).
    static BLOCKED: std::cell::RefCell<std::collections::BTreeMap<String, String>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
}

/// Turns the recording of events, and of what blocked threads wait for, on or off for every
/// recorder used on this OS thread; returns whether it was on. Violations are always recorded.
///
/// A checker explores one execution after another on one OS thread and only reports the trace of
/// the one that fails, so it explores with recording off and, when an execution fails, runs the
/// same search again with recording on for that execution alone (`scenario::check::explore`):
/// formatting every event of every interleaving was a tenth of the checker's time.
///
/// ```
/// use ioregionfd_model::trace::{Recorder, record_events};
/// let rec = Recorder::new();
/// let was = record_events(false);
/// rec.event(None, "not kept");
/// record_events(was);
/// rec.event(None, "kept");
/// assert_eq!(rec.events().len(), 1);
/// ```
pub fn record_events(on: bool) -> bool {
    RECORDING.replace(on)
}

/// Ghost: the current thread is about to wait for `what` (`context#1, held by vm0 vcpu0`).
pub fn blocked(what: impl fmt::Display) {
    if !RECORDING.get() {
        return;
    }
    BLOCKED.with(|b| b.borrow_mut().insert(thread_name(), what.to_string()));
}

/// Ghost: the current thread's wait is over. Nothing changes while a panic unwinds (a deadlocked
/// execution's threads are unwound after the checker gives up; the table must still say what
/// they waited for).
pub fn unblocked() {
    if RECORDING.get() && !std::thread::panicking() {
        BLOCKED.with(|b| b.borrow_mut().remove(&thread_name()));
    }
}

/// Every blocked thread of this OS thread's checker and what it waits for, by thread name.
pub fn blocked_threads() -> Vec<(String, String)> {
    BLOCKED.with(|b| b.borrow().iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Forgets every blocked thread (a checker starting a new execution).
pub fn clear_blocked() {
    BLOCKED.with(|b| b.borrow_mut().clear());
}

/// Ghost identity of the access a message belongs to (the wire protocol has no tags; the model
/// follows each message with one to check `route` and `isolation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tag {
    /// The VM of the access.
    pub vm: usize,
    /// The vCPU of the access.
    pub vcpu: usize,
    /// The access's number on that vCPU.
    pub seq: u64,
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vm{} vcpu{} access {}", self.vm, self.vcpu, self.seq)
    }
}

const LIVE: u8 = 0;
const DEAD: u8 = 1;

/// Ghost: how many lifetimes have ended in this process (every [`Lifetime::end`], of any object
/// of any system). A plain `std` atomic on every backend, never a scheduling point.
static LIFETIMES_ENDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many [`Lifetime`]s have ended in this process so far. While it stays the same, no device,
/// bus array or other object has been destroyed or freed anywhere: what the incremental
/// structural check ([`crate::structure::StructureWatch`]) needs to know to skip the lifetime part
/// of the `bus` checks.
pub fn lifetimes_ended() -> u64 {
    LIFETIMES_ENDED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The lifetime of one modelled kernel object (a device, a bus array, ...): live until it is
/// destroyed or freed, dead afterwards.
///
/// The state is a facade atomic, so under loom checking it is a scheduling point: the checker
/// explores a writer freeing the object between a reader's dereference and its use.
///
/// ```
/// use ioregionfd_model::trace::Lifetime;
/// use ioregionfd_model::trace::Recorder;
/// let rec = Recorder::new();
/// let life = Lifetime::new();
/// assert!(life.check_use(&rec, "bus array"));
/// life.end(&rec, "bus array");
/// assert!(!life.check_use(&rec, "bus array"));
/// assert_eq!(rec.violations()[0].invariant, "lifetime");
/// ```
#[derive(Debug)]
pub struct Lifetime(AtomicU8);

impl Default for Lifetime {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifetime {
    /// A live object.
    pub fn new() -> Self {
        Lifetime(AtomicU8::new(LIVE))
    }

    /// Whether the object is still live.
    #[track_caller]
    pub fn is_live(&self) -> bool {
        self.0.load(Ordering::Acquire) == LIVE
    }

    /// Ends the lifetime (destroy, free). Ending it twice is a `lifetime` violation.
    #[track_caller]
    pub fn end(&self, rec: &Recorder, what: impl fmt::Display) {
        LIFETIMES_ENDED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.0.swap(DEAD, Ordering::AcqRel) == DEAD {
            rec.violation(&LIFETIME, format_args!("{what} destroyed or freed twice"));
        }
    }

    /// Checks a use of the object; a use after the end is a `lifetime` violation and returns false.
    #[track_caller]
    pub fn check_use(&self, rec: &Recorder, what: impl fmt::Display) -> bool {
        let live = self.is_live();
        if !live {
            rec.violation(&LIFETIME, format_args!("use of {what} after it was destroyed or freed"));
        }
        live
    }
}

/// A kernel reference count (`struct kref`, a file's `f_count`) whose misuse is a `lifetime`
/// violation: a get when the count is 0, or a put below 0. As `refcount_t` does, a misused count
/// saturates: it never reaches 0 again, so the object is never released (a leak, not a free).
///
/// ```
/// use ioregionfd_model::trace::Kref;
/// use ioregionfd_model::trace::Recorder;
/// let rec = Recorder::new();
/// let r = Kref::new(1);
/// r.get(&rec, "ctx");
/// assert!(!r.put(&rec, "ctx"));
/// assert!(r.put(&rec, "ctx")); // dropped to zero: release
/// assert!(rec.violations().is_empty());
/// r.get(&rec, "ctx"); // from 0: a violation, and the count saturates
/// assert_eq!(rec.violations()[0].invariant, "lifetime");
/// assert!(r.saturated());
/// assert!(!r.put(&rec, "ctx")); // never released again
/// ```
#[derive(Debug)]
pub struct Kref(AtomicI64);

impl Kref {
    /// A count starting at `initial` (`kref_init` is 1; rfc-v3's contexts start at 0).
    pub fn new(initial: i64) -> Self {
        Kref(AtomicI64::new(initial))
    }

    /// Current value.
    pub fn get_count(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }

    /// The value of a saturated count (`REFCOUNT_SATURATED`).
    pub const SATURATED: i64 = i32::MIN as i64 / 2;

    /// Whether the count saturated after a misuse.
    pub fn saturated(&self) -> bool {
        self.get_count() < 0
    }

    /// Takes a reference; from 0 it is a `lifetime` violation (`refcount_t: addition on 0;
    /// use-after-free`) and the count saturates.
    #[track_caller]
    pub fn get(&self, rec: &Recorder, what: impl fmt::Display) {
        let before = self.0.fetch_add(1, Ordering::AcqRel);
        if before == 0 {
            rec.violation(&LIFETIME, format_args!("reference taken on {what} whose count is 0"));
            self.0.store(Self::SATURATED, Ordering::Release);
        } else if before < 0 {
            self.0.store(Self::SATURATED, Ordering::Release);
        }
    }

    /// `kref_get_unless_zero`: takes a reference unless the count is 0 (the object is being
    /// released); returns whether it did. What a lookup table whose entries may be in their last
    /// put uses.
    #[track_caller]
    pub fn get_unless_zero(&self) -> bool {
        let mut now = self.0.load(Ordering::Acquire);
        loop {
            if now == 0 {
                return false;
            }
            match self.0.compare_exchange(now, now + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(seen) => now = seen,
            }
        }
    }

    /// Drops a reference; returns true when the count reached 0 (the caller releases the object).
    /// Below 0 is a `lifetime` violation (`refcount_t: underflow; use-after-free`) and the count
    /// saturates; a saturated count stays saturated.
    #[track_caller]
    pub fn put(&self, rec: &Recorder, what: impl fmt::Display) -> bool {
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        if before == 0 {
            rec.violation(&LIFETIME, format_args!("reference put on {what} whose count is already 0"));
        }
        if before <= 0 {
            self.0.store(Self::SATURATED, Ordering::Release);
        }
        before == 1
    }
}

#[cfg(all(test, not(loom), not(feature = "shuttle")))]
mod tests {
    use super::*;

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
