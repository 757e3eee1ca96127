//! The serialization contexts of response (and, in proposed, command) channels, the responses
//! owed to transactions that gave a channel up, and the host-wide table of contexts.

use crate::errno::Errno;
use crate::fd::channel::{Tag, Transfer, Wait};
use crate::fd::{File, Inode, IoregionfdObject};
use crate::sync::{Arc, Condvar, Mutex};
use crate::trace::{Kref, Lifetime, Recorder, VcpuId, vcpu_list};
use crate::wire::MESSAGE_SIZE;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Weak;

/// Where KVM writes a region's commands or reads a context's responses.
#[derive(Clone)]
pub enum KernelEnd {
    /// An ordinary file (rfc-v3, proposed): `kernel_write(wf)` / `kernel_read(rf)`.
    File(Arc<File>),
    /// The seed ioregionfd's kernel side.
    Object(Arc<IoregionfdObject>),
}

impl fmt::Debug for KernelEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelEnd::File(file) => write!(f, "{file}"),
            KernelEnd::Object(_) => f.write_str("ioregionfd"),
        }
    }
}

impl KernelEnd {
    /// KVM writes (part of) a command whose bytes carry the ghost `tag` of its access.
    pub fn write(&self, rec: &Recorder, buf: &[u8], wait: &Wait<'_>, tag: Tag) -> Transfer {
        match self {
            KernelEnd::File(f) => f.write_tagged(rec, buf, wait, Some(tag)),
            KernelEnd::Object(o) => o.cmd.write_tagged(buf, false, wait, Some(tag)),
        }
    }

    /// KVM reads (part of) a response, with the ghost tags of the bytes it took.
    pub fn read(&self, rec: &Recorder, buf: &mut [u8], wait: &Wait<'_>) -> (Transfer, Vec<Tag>) {
        match self {
            KernelEnd::File(f) => f.read_tagged(rec, buf, wait),
            KernelEnd::Object(o) => o.resp.read_tagged(buf, false, wait),
        }
    }
}

#[derive(Debug, Default)]
struct LockState {
    busy: bool,
    /// Ghost: the vCPUs that believe they own the lock (two is an `exclusive` break).
    owners: Vec<VcpuId>,
    /// Ghost: threads waiting on the side's wait queue (for the trace).
    waiters: usize,
    /// Response side (proposed): the responses still to come on the channel for transactions
    /// that gave the side up (interrupted or abandoned), in command order; the next owner reads
    /// each before it sends, into its [`ParkedReply`] or (abandoned) nowhere.
    owed: VecDeque<OwedReply>,
}

/// A response the channel still owes to a transaction that no longer owns the response side.
#[derive(Debug)]
struct OwedReply {
    /// Bytes of it still to read.
    remaining: usize,
    /// Where they go (`None`: the transaction was abandoned; the bytes are discarded).
    slot: Option<Arc<ParkedReply>>,
}

/// proposed: where the response of a transaction interrupted while it waited for it is
/// collected by whoever owns the response side next ([`InterruptedReply::NextOwnerCollects`]).
/// The interrupted transaction completes from it on its next KVM_RUN.
///
/// [`InterruptedReply::NextOwnerCollects`]: crate::design::InterruptedReply::NextOwnerCollects
#[derive(Debug, Default)]
pub struct ParkedReply {
    state: Mutex<ParkedState>,
}

#[derive(Debug, Default)]
struct ParkedState {
    buf: [u8; MESSAGE_SIZE],
    got: usize,
    /// Ghost: the tags of the bytes collected.
    tags: Vec<Tag>,
    /// The response will never come (end of file or an error while collecting it).
    lost: bool,
}

/// What a parked transaction finds in its [`ParkedReply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Collected {
    /// Not (all) there yet.
    Pending,
    /// The whole response, with the ghost tags of its bytes.
    Reply([u8; MESSAGE_SIZE], Vec<Tag>),
    /// It will never come.
    Lost,
}

impl ParkedReply {
    /// What has been collected so far.
    pub fn collected(&self) -> Collected {
        let s = self.state.lock();
        if s.lost {
            Collected::Lost
        } else if s.got == MESSAGE_SIZE {
            Collected::Reply(s.buf, s.tags.clone())
        } else {
            Collected::Pending
        }
    }

    fn put(&self, bytes: &[u8], tags: &[Tag]) {
        let mut s = self.state.lock();
        let at = s.got;
        s.buf[at..at + bytes.len()].copy_from_slice(bytes);
        s.got += bytes.len();
        for t in tags {
            if s.tags.last() != Some(t) {
                s.tags.push(*t);
            }
        }
    }
}

/// One step of collecting what a channel owes ([`Context::collect_owed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Collect {
    /// Nothing is owed.
    Nothing,
    /// Bytes were read (and stored or discarded); call again.
    Progress,
    /// Sequential model: the owed bytes are not there and nothing else can run.
    WouldBlock,
    /// A signal while waiting for the first byte of an owed response.
    Interrupted,
}

/// The serialization context of a response channel (`struct ioregionfd` in rfc-v3): a wait queue
/// and `busy` flag that let one transaction at a time use the channel, a reference count, and
/// where responses are read.
///
/// proposed also serializes the writers of a command channel on the context of its inode, with
/// a second lock of the same kind ([`Side::Send`]), taken only around SEND_CMD. Lock order: a
/// transaction takes its response side first; nothing waits for anything while it holds a send
/// side, so two regions wired crosswise cannot wait on each other.
pub struct Context {
    id: u64,
    resp: Option<KernelEnd>,
    key: Option<Inode>,
    state: Mutex<LockState>,
    wq: Condvar,
    send_state: Mutex<LockState>,
    send_wq: Condvar,
    pub(super) kref: Kref,
    life: Lifetime,
}

/// Which of a context's two locks: the transaction's (a response channel) or, in proposed, the
/// one held around a send (a command channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Held for a whole transaction: one reader of the response channel at a time.
    Response,
    /// Held around SEND_CMD only: one writer of the command channel at a time.
    Send,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "context#{}", self.id)
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "context#{}", self.id)?;
        if let Some(k) = self.key {
            write!(f, " (inode {k})")?;
        }
        Ok(())
    }
}

/// Why [`Context::lock`] did not return the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockError {
    /// Sequential model: another transaction owns it and nothing else can run.
    WouldBlock,
    /// A signal arrived while waiting (designs that give up: proposed, seed).
    Interrupted,
}

impl Context {
    pub(super) fn new(id: u64, resp: Option<KernelEnd>, key: Option<Inode>, kref_init: i64) -> Self {
        Context {
            id,
            resp,
            key,
            state: Mutex::new(LockState::default()),
            wq: Condvar::new(),
            send_state: Mutex::new(LockState::default()),
            send_wq: Condvar::new(),
            kref: Kref::new(kref_init),
            life: Lifetime::new(),
        }
    }

    /// Where responses are read (rfc-v3: the read file of the region that created the context).
    pub fn response_end(&self) -> Option<&KernelEnd> {
        self.resp.as_ref()
    }

    /// The inode of the channel the context serializes (its read file's, or its key).
    pub fn channel(&self) -> Option<Inode> {
        match &self.resp {
            Some(KernelEnd::File(f)) => Some(f.inode()),
            _ => self.key,
        }
    }

    /// References held now.
    pub fn refs(&self) -> i64 {
        self.kref.get_count()
    }

    /// Whether the context was freed.
    pub fn is_live(&self) -> bool {
        self.life.is_live()
    }

    /// `ioregion_lock_ctx`: waits, interruptibly and exclusively, until the context is free, then
    /// takes it. `takes_on_signal` is rfc-v3's behaviour: `busy = true` is set whether the wait
    /// ended because the context became free or because a signal arrived.
    pub fn lock(&self, rec: &Recorder, who: VcpuId, wait: &Wait<'_>, takes_on_signal: bool) -> Result<(), LockError> {
        self.lock_side(Side::Response, rec, who, wait, takes_on_signal)
    }

    /// [`lock`](Self::lock) on either side of the context.
    pub fn lock_side(
        &self,
        side: Side,
        rec: &Recorder,
        who: VcpuId,
        wait: &Wait<'_>,
        takes_on_signal: bool,
    ) -> Result<(), LockError> {
        if !self.life.check_use(rec, self) {
            return Ok(());
        }
        let (state, wq) = self.side(side);
        let mut s = state.lock();
        let what = if side == Side::Send { " for sending" } else { "" };
        let mut waited = false;
        loop {
            if !s.busy {
                break;
            }
            match wait {
                Wait::Never => return Err(LockError::WouldBlock),
                Wait::Block { pending } if pending() => {
                    crate::trace::unblocked();
                    rec.event(Some(who.vm), format_args!("{who}'s wait for {self}{what} ends: a signal is pending"));
                    if takes_on_signal {
                        rec.event(
                            Some(who.vm),
                            format_args!(
                                "{who} marks {self}{what} busy anyway (ioregion_lock_ctx does not look at why its wait ended)"
                            ),
                        );
                        break;
                    }
                    return Err(LockError::Interrupted);
                }
                Wait::Block { .. } => {
                    let holders = vcpu_list(&s.owners);
                    let again = if waited { "still busy: " } else { "" };
                    rec.event(Some(who.vm), format_args!("{again}{who} waits for {self}{what}, held by {holders}"));
                    crate::trace::blocked(format_args!("{self}{what}, held by {holders}"));
                    waited = true;
                    s.waiters += 1;
                    wq.wait(&mut s);
                    s.waiters -= 1;
                }
            }
        }
        if waited {
            crate::trace::unblocked();
        }
        s.busy = true;
        if !s.owners.is_empty() {
            rec.violation(
                &crate::invariants::EXCLUSIVE,
                format_args!("{who} takes {self}{what} while {} still owns it", vcpu_list(&s.owners)),
            );
        }
        s.owners.push(who);
        rec.event(Some(who.vm), format_args!("{who} takes {self}{what} (owners now {})", vcpu_list(&s.owners)));
        Ok(())
    }

    fn side(&self, side: Side) -> (&Mutex<LockState>, &Condvar) {
        match side {
            Side::Response => (&self.state, &self.wq),
            Side::Send => (&self.send_state, &self.send_wq),
        }
    }

    /// `ioregion_unlock_ctx`: `busy = false`, wake one waiter.
    pub fn unlock(&self, rec: &Recorder, who: VcpuId) {
        self.unlock_side(Side::Response, rec, who);
    }

    /// [`unlock`](Self::unlock) on either side of the context.
    pub fn unlock_side(&self, side: Side, rec: &Recorder, who: VcpuId) {
        if !self.life.check_use(rec, self) {
            return;
        }
        let (state, wq) = self.side(side);
        let mut s = state.lock();
        s.busy = false;
        s.owners.retain(|o| *o != who);
        let what = if side == Side::Send { " for sending" } else { "" };
        let wakes =
            if s.waiters > 0 { format!(" and wakes one of its {} waiter(s)", s.waiters) } else { String::new() };
        rec.event(Some(who.vm), format_args!("{who} releases {self}{what}{wakes}"));
        wq.notify_one();
    }

    /// A destroyed vCPU's transaction gives the response side up: `owed` more response bytes
    /// are still to come on the channel (0 when its command was not sent), then the lock is
    /// released as [`unlock`](Self::unlock) does.
    pub fn abandon(&self, rec: &Recorder, who: VcpuId, owed: usize) {
        if !self.life.check_use(rec, self) {
            return;
        }
        if owed > 0 {
            self.state.lock().owed.push_back(OwedReply { remaining: owed, slot: None });
        }
        rec.event(Some(who.vm), format_args!("{who} abandons its transaction on {self}: {owed} response bytes owed"));
        self.unlock(rec, who);
    }

    /// proposed: a transaction interrupted while it waits for its response (nothing read yet)
    /// gives the response side up; its response is owed to `slot`, collected by the next owner.
    pub fn park(&self, rec: &Recorder, who: VcpuId, slot: Arc<ParkedReply>) {
        if !self.life.check_use(rec, self) {
            return;
        }
        self.state.lock().owed.push_back(OwedReply { remaining: MESSAGE_SIZE, slot: Some(slot) });
        rec.event(
            Some(who.vm),
            format_args!("{who} parks its transaction on {self}: its response is collected by the next owner"),
        );
        self.unlock(rec, who);
    }

    /// Responses owed to transactions that gave the response side up (the owner collects them).
    pub fn owed(&self) -> usize {
        self.state.lock().owed.len()
    }

    /// Whether `slot` is still waiting in this context's queue.
    pub fn owes(&self, slot: &Arc<ParkedReply>) -> bool {
        self.state.lock().owed.iter().any(|o| o.slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, slot)))
    }

    /// The owner of the response side reads (part of) the first owed response from `end` and
    /// stores it in its slot, or discards it. Only the wait for an owed response's first byte is
    /// interruptible; at end of file or on an error every owed response is lost.
    pub fn collect_owed(
        &self,
        rec: &Recorder,
        who: VcpuId,
        end: &KernelEnd,
        signal_pending: &(dyn Fn() -> bool + Sync),
        sequential: bool,
    ) -> Collect {
        let (remaining, slot) = match self.state.lock().owed.front() {
            None => return Collect::Nothing,
            Some(o) => (o.remaining, o.slot.clone()),
        };
        let uninterrupted = || false;
        let pending: &(dyn Fn() -> bool + Sync) =
            if remaining < MESSAGE_SIZE { &uninterrupted } else { signal_pending };
        let wait = if sequential { Wait::Never } else { Wait::Block { pending } };
        let mut buf = [0u8; MESSAGE_SIZE];
        let (t, tags) = end.read(rec, &mut buf[..remaining], &wait);
        match t {
            Transfer::Done(n) if n > 0 => {
                let mut s = self.state.lock();
                if let Some(slot) = &slot {
                    slot.put(&buf[..n], &tags);
                }
                let front = s.owed.front_mut().expect("the owner alone pops owed responses");
                front.remaining -= n;
                let done = front.remaining == 0;
                if done {
                    s.owed.pop_front();
                }
                drop(s);
                let whom = if slot.is_some() { "for the transaction parked on it" } else { "(abandoned: discarded)" };
                rec.event(Some(who.vm), format_args!("{who} collects {n} response bytes owed on {self} {whom}"));
                Collect::Progress
            }
            Transfer::WouldBlock { .. } => Collect::WouldBlock,
            Transfer::Failed(Errno::EINTR) => Collect::Interrupted,
            t => {
                let lost: Vec<OwedReply> = self.state.lock().owed.drain(..).collect();
                for o in &lost {
                    if let Some(slot) = &o.slot {
                        slot.state.lock().lost = true;
                    }
                }
                rec.event(
                    Some(who.vm),
                    format_args!("{who}: {self} will not get the {} response(s) owed ({t:?})", lost.len()),
                );
                Collect::Progress
            }
        }
    }

    /// Wakes every waiter on both sides (a signal was delivered to one of them).
    pub fn wake_all(&self) {
        for side in [Side::Response, Side::Send] {
            let (state, wq) = self.side(side);
            let _s = state.lock();
            wq.notify_all();
        }
    }

    /// Ghost: whether vCPU `who` (VM, vCPU) believes it owns either side of the context.
    pub fn owned_by(&self, who: VcpuId) -> bool {
        self.state.lock().owners.contains(&who) || self.send_state.lock().owners.contains(&who)
    }

    /// Ghost: how many vCPUs believe they own the context now (either side).
    pub fn owners(&self) -> usize {
        self.state.lock().owners.len() + self.send_state.lock().owners.len()
    }

    pub(super) fn get(&self, rec: &Recorder) {
        self.kref.get(rec, self);
    }

    /// `kref_put(&ctx->kref, ctx_free)`: frees the context at 0 (`ctx_free` puts nothing).
    pub(super) fn put(&self, rec: &Recorder) -> bool {
        let last = self.kref.put(rec, self);
        if last {
            self.life.end(rec, self);
            rec.event(None, format_args!("free {self}"));
        }
        last
    }
}

/// The host-wide table of contexts (proposed: one per response-channel inode, across VMs).
#[derive(Debug, Default)]
pub struct ContextTable {
    pub(super) by_inode: Mutex<HashMap<Inode, Weak<Context>>>,
    /// Every context ever made, held (ghost) so that one the kernel would leak stays visible.
    all: Mutex<Vec<Arc<Context>>>,
    next_id: Mutex<u64>,
    /// Ghost: the numbering of regions (`ioregion#N`), an id space of its own.
    next_region_id: Mutex<u64>,
}

impl ContextTable {
    /// The id of the next region made on the host.
    pub(super) fn next_region_id(&self) -> u64 {
        let mut n = self.next_region_id.lock();
        *n += 1;
        *n
    }

    pub(super) fn next_id(&self) -> u64 {
        let mut n = self.next_id.lock();
        *n += 1;
        *n
    }

    /// Registers a new context (so that a signal can wake its waiters).
    pub(super) fn add(&self, ctx: Context) -> Arc<Context> {
        let ctx = Arc::new(ctx);
        self.all.lock().push(ctx.clone());
        ctx
    }

    /// Every context ever made (freed or not).
    pub fn contexts(&self) -> Vec<Arc<Context>> {
        self.all.lock().clone()
    }
}

impl ContextTable {
    /// seed: the context of an ioregionfd object (one per object, shared by every VM).
    pub(super) fn for_object(&self, obj: &Arc<IoregionfdObject>, rec: &Recorder) -> Arc<Context> {
        let key = Inode { sb: crate::fd::Superblock::Anon, ino: Arc::as_ptr(obj) as u64 };
        let mut table = self.by_inode.lock();
        if let Some(ctx) = table.get(&key).and_then(Weak::upgrade).filter(|c| c.is_live()) {
            ctx.get(rec);
            return ctx;
        }
        let ctx = self.add(Context::new(self.next_id(), Some(KernelEnd::Object(obj.clone())), None, 1));
        table.insert(key, Arc::downgrade(&ctx));
        ctx
    }
}

/// A saved transaction's reference on its context (`kref_get`).
pub(crate) fn context_get(ctx: &Context, rec: &Recorder) {
    ctx.get(rec);
}

/// Drops a saved transaction's reference on its context (`kref_put`).
pub(crate) fn context_put(ctx: &Context, rec: &Recorder) {
    ctx.put(rec);
}
