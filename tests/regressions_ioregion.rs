//! Named regression tests for every distinct violation the state machines of
//! `crates/reference/tests/ioregion_state_machine.rs` found in the `rfc-v3` and `seed` designs.
//!
//! Each test runs a minimal script (the language of `ioregionfd_model::script`; `#` comments print
//! nothing) under the design and demands the exact output the model prints, then runs the same
//! sequence under `proposed` (adapted to its structure where the design's differs) and demands
//! its exact output, which has no `violation` line. The comment on each test gives the mechanism,
//! in terms of docs/spec.md (§2-4) and the knobs of `src/design.rs`.
//!
//! To replay one: `ioregionfd-model script --design rfc-v3 FILE` with the script in FILE.
//!
//! The `model_bug_*` tests at the end are cases where the model contradicted the spec or the knob
//! docs (not a defect of the design being modelled), once kept as ignored tests: each demands
//! what the spec says, which the model now gives.

use ioregionfd_model::design::Design;
use ioregionfd_model::script::run_script;

/// Runs `script` under `design`: (output, exit code). A script line that does not parse fails.
fn run(design: Design, script: &str) -> (String, i32) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = run_script(script.as_bytes(), &mut out, &mut err, design);
    let err = String::from_utf8(err).expect("utf-8");
    assert!(err.is_empty(), "{design}: the script does not run: {err}");
    (String::from_utf8(out).expect("utf-8"), code)
}

/// Demands the exact output (and the exit code that goes with it: 1 iff a violation).
#[track_caller]
fn prints(design: Design, script: &str, expected: &str) {
    let (out, code) = run(design, script);
    assert_eq!(out, expected, "{design} prints, for:\n{script}");
    assert_eq!(code, i32::from(expected.contains("\nviolation ")), "{design} exit code");
}

/// The same under `proposed`, which must violate nothing.
#[track_caller]
fn proposed_prints(script: &str, expected: &str) {
    assert!(!expected.contains("violation"), "the expectation for proposed has a violation");
    prints(Design::Proposed, script, expected);
}

// ---------------------------------------------------------------------------------------------
// rfc-v3
// ---------------------------------------------------------------------------------------------

/// `lifetime`: the context is allocated zeroed and never `kref_init`ed (spec, registration step
/// 5: "allocate a zeroed context {..., kref, busy=false} and kref_get it (the kref starts at 0:
/// there is no kref_init)"). The first `kref_get` is an increment from 0 (`refcount_t: addition
/// on 0; use-after-free`); the count saturates, so the context is never freed. Every first
/// registration of a read file shows it. proposed starts contexts at 1.
#[test]
fn rfc_v3_context_kref_get_from_zero() {
    let script = "\
vm
socketpair
ioregion 0 mmio 0x1000 8 3 3 user_data=1   # a new context for fd 3: kref_get from 0
serve 4
write 0 mmio 0x1000 4 0x11
read 0 mmio 0x1000 4
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
ok
violation lifetime: reference taken on context#1 whose count is 0
ok
ioregion 0x1 write 0x0 4 0x11
ioregion 0x1 read 0x0 4 0x11
",
    );
    proposed_prints(
        script,
        "vm 0
fd 3 4
ok
ok
ioregion 0x1 write 0x0 4 0x11
ioregion 0x1 read 0x0 4 0x11
",
    );
}

/// `lifetime` (NULL dereference), MMIO: a size-0 region has no read file and so no context, yet
/// it is on the VM's MMIO list; `ioregion_get_ctx` walks the list for the next registration with
/// a read file and dereferences its NULL context (spec step 5: "Regions without a read file
/// (size 0) have no context (NULL) but are on the same list"). The kernel would oops; the model
/// records the fault and fails the ioctl with `EFAULT`. proposed looks contexts up by inode.
#[test]
fn rfc_v3_null_context_of_a_size0_region_is_dereferenced_mmio() {
    let script = "\
vm
socketpair
ioregion 0 mmio 0x2000 0 3 3 user_data=2 posted   # size 0: no read file, no context
ioregion 0 mmio 0x1000 8 3 3 user_data=1          # the list walk reaches the NULL context
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
ok
err EFAULT
violation lifetime: NULL dereference: ioregion_get_ctx reads the context of ioregion#1(mmio 0x2000 size 0x0), which has none
",
    );
    proposed_prints(script, "vm 0\nfd 3 4\nok\nok\n");
}

/// The same on the PIO list (a size-0 PIO region has no FAST_MMIO twin, but is on the PIO list).
#[test]
fn rfc_v3_null_context_of_a_size0_region_is_dereferenced_pio() {
    let script = "\
vm
socketpair
ioregion 0 pio 0x70 0 3 3 user_data=2 posted
ioregion 0 pio 0x60 4 3 3 user_data=1
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
ok
err EFAULT
violation lifetime: NULL dereference: ioregion_get_ctx reads the context of ioregion#1(pio 0x70 size 0x0), which has none
",
    );
    proposed_prints(script, "vm 0\nfd 3 4\nok\nok\n");
}

/// `overlap`: rfc-v3's `overlap()` is `!(end1 < start2 || start1 >= end2)` with `end = start +
/// size - 1`: a region that starts on the last byte of another has `start1 == end2` and is
/// accepted (spec step 4). Both then answer for byte 0x1007; the bus gives it to the first. One
/// byte to the left the check works (EEXIST). proposed uses real interval overlap.
#[test]
fn rfc_v3_region_starting_on_the_last_byte_of_another_is_accepted() {
    let script = "\
vm
socketpair
ioregion 0 mmio 0x1000 8 3 3 user_data=1
ioregion 0 mmio 0x1007 8 3 3 user_data=2   # start1 >= end2: \"no overlap\"
ioregion 0 mmio 0x1006 8 3 3 user_data=3   # EEXIST
serve 4
write 0 mmio 0x1007 1 0x77
read 0 mmio 0x1007 1
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
ok
violation lifetime: reference taken on context#1 whose count is 0
ok
violation overlap: vm0: ioregion#1(mmio 0x1000 size 0x8) and ioregion#2(mmio 0x1007 size 0x8) overlap
err EEXIST
ok
ioregion 0x1 write 0x7 1 0x77
ioregion 0x1 read 0x7 1 0x77
",
    );
    proposed_prints(
        script,
        "vm 0
fd 3 4
ok
err EEXIST
err EEXIST
ok
ioregion 0x1 write 0x7 1 0x77
ioregion 0x1 read 0x7 1 0x77
",
    );
}

/// `overlap`, ioregion against ioeventfd, both directions: the same `start1 >= end2` quirk in
/// `KVM_IOEVENTFD`'s check against ioregions (the ioeventfd is `start1`) and in
/// `KVM_SET_IOREGION`'s check against ioeventfds (the region is `start1`). The 4-byte write at
/// 0x1007 then goes to the ioeventfd although byte 0x1007 is the region's.
#[test]
fn rfc_v3_ioeventfd_and_region_sharing_a_last_byte_are_accepted() {
    let script = "\
vm
socketpair
eventfd
ioregion 0 mmio 0x1000 8 3 3 user_data=1
ioeventfd 0 mmio 0x1007 4 5                 # starts on the region's last byte: accepted
ioeventfd 0 mmio 0x1006 4 5                 # EEXIST
ioeventfd 0 pio 0x60 4 5
ioregion 0 pio 0x63 4 3 3 user_data=2       # starts on the ioeventfd's last byte: accepted
ioregion 0 pio 0x62 4 3 3 user_data=3       # EEXIST
serve 4
write 0 mmio 0x1007 4 0x77
write 0 mmio 0x1007 1 0x77
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
eventfd 5
ok
violation lifetime: reference taken on context#1 whose count is 0
ok
violation overlap: vm0: ioregion#1(mmio 0x1000 size 0x8) and ioeventfd(mmio 0x1007 len 4 -> eventfd 5) overlap
err EEXIST
ok
ok
violation lifetime: reference taken on context#2 whose count is 0
violation overlap: vm0: ioregion#2(pio 0x63 size 0x4) and ioeventfd(pio 0x60 len 4 -> eventfd 5) overlap
err EEXIST
ok
eventfd 5
ioregion 0x1 write 0x7 1 0x77
",
    );
    proposed_prints(
        script,
        "vm 0
fd 3 4
eventfd 5
ok
err EEXIST
err EEXIST
ok
err EEXIST
err EEXIST
ok
exit mmio 0x1007 4 0x77
ioregion 0x1 write 0x7 1 0x77
",
    );
}

/// `lifetime` (a file put too often): a FIFO opened twice is two files on one inode. The region
/// at 0x2000 reads its responses through the FIFO's write-end file, same `i_ino` as the read end,
/// so `ioregion_get_ctx` gives it the context of the region at 0x1000, whose read file is the
/// read end; the sharing region's own reference on the write end is never stored, never put.
/// Release puts the context's file, whichever region goes (spec, Removal: "put the context's read
/// file"): the two DEASSIGNs put the read end twice, though KVM took one reference on it. The
/// read end is released while fd 3 still names it, and `close 3` puts below zero. proposed keeps
/// each region's own read file, and refuses the FIFO's write end as a read file (`EBADF`,
/// `checks_file_modes`), so its second DEASSIGN finds nothing.
#[test]
fn rfc_v3_fifo_files_share_a_context_and_the_read_end_is_put_twice() {
    let script = "\
vm
fifo                                  # fd 3 (read end) and 4 (write end): one tmpfs inode
socketpair                            # commands go to fd 5
ioregion 0 mmio 0x1000 8 3 5 user_data=1
ioregion 0 mmio 0x2000 8 4 5 user_data=2   # same i_ino: shares the context of fd 3
ioregion 0 mmio 0x2000 8 0 0 deassign      # puts fd 3's file (not fd 4's)
ioregion 0 mmio 0x1000 8 0 0 deassign      # puts fd 3's file again: released
close 3
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
fd 5 6
ok
violation lifetime: reference taken on context#1 whose count is 0
ok
ok
ok
ok
violation lifetime: reference put on file#1 (pipe read end, inode tmpfs:100) whose count is already 0
",
    );
    proposed_prints(script, "vm 0\nfd 3 4\nfd 5 6\nok\nerr EBADF\nerr ENOENT\nok\nok\n");
}

/// `lifetime` (a file taken from 0, then used after release): the same two puts release the
/// FIFO's read end while fd 3 still names it; a new registration `fget`s fd 3 (a reference taken
/// on a count of 0), gets a new context for it, and the first access reads its response from the
/// released file. Under proposed (which refuses the write end as a read file) the same access
/// waits for a device that is not there.
#[test]
fn rfc_v3_a_file_released_by_the_double_put_is_taken_again_and_read() {
    let script = "\
vm
fifo
socketpair
ioregion 0 mmio 0x1000 8 3 5 user_data=1
ioregion 0 mmio 0x2000 8 4 5 user_data=2
ioregion 0 mmio 0x2000 8 0 0 deassign
ioregion 0 mmio 0x1000 8 0 0 deassign
ioregion 0 mmio 0x3000 8 3 5 user_data=3   # fget on a released file
write 0 mmio 0x3000 4 0x1                  # GET_REPLY reads the released file
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
fd 5 6
ok
violation lifetime: reference taken on context#1 whose count is 0
ok
ok
ok
ok
violation lifetime: reference taken on file#1 (pipe read end, inode tmpfs:100) whose count is 0
violation lifetime: reference taken on context#2 whose count is 0
exit mmio 0x3000 4 0x1
violation lifetime: use of file#1 (pipe read end, inode tmpfs:100) after it was destroyed or freed
",
    );
    proposed_prints(script, "vm 0\nfd 3 4\nfd 5 6\nok\nerr EBADF\nerr ENOENT\nok\nok\nblocked\n");
}

/// `lifetime`, found by the `registration` fuzz target (docs/fuzzing.md): rfc-v3 takes any fd as
/// a region's read fd, eventfds included, and every eventfd is a file of the one anonymous inode,
/// so two regions reading from two eventfds share one context (contexts are keyed by `i_ino`).
/// Each DEASSIGN puts the context's read file, the first region's eventfd, so the second one frees
/// it while fd 3 is still open: the ioeventfd then takes a reference on the freed eventfd, and the
/// close puts a freed file. The double put of
/// `rfc_v3_fifo_files_share_a_context_and_the_read_end_is_put_twice`, reached through a kind of
/// file the state machines never give a region. proposed keeps each region's own file.
#[test]
fn rfc_v3_two_eventfds_as_read_fds_share_a_context_and_one_is_freed_while_open() {
    let script = "\
vm
eventfd
eventfd
socketpair
ioregion 0 mmio 0x1000 8 3 5 user_data=1   # responses from eventfd 3 (anon inode)
ioregion 0 mmio 0x2000 8 4 5 user_data=2   # eventfd 4: the same inode, the same context
ioregion 0 mmio 0x2000 8 4 5 user_data=2 deassign   # puts eventfd 3's file
ioregion 0 mmio 0x1000 8 3 5 user_data=1 deassign   # puts it again: freed, fd 3 still open
ioeventfd 0 mmio 0x3000 4 3
close 3
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
eventfd 3
eventfd 4
fd 5 6
ok
violation lifetime: reference taken on context#1 whose count is 0
ok
ok
ok
ok
violation lifetime: reference taken on eventfd 3 whose count is 0
ok
violation lifetime: reference put on file#1 (eventfd, inode anon:1) whose count is already 0
",
    );
    proposed_prints(script, "vm 0\neventfd 3\neventfd 4\nfd 5 6\nok\nok\nok\nok\nok\nok\n");
}

/// `lifetime` (use after free) across superblocks: sockfs/pipefs and tmpfs number their inodes
/// with separate counters that both start at 100, so the first socket (sockfs:100) and the first
/// FIFO (tmpfs:100) have the same `i_ino`. The region at 0x2000 (responses from socket fd 3) is
/// given the context of the region at 0x1000 (responses from the FIFO), so it would even read its
/// responses from the FIFO. Its DEASSIGN puts the context's file, the FIFO's read end, whose only
/// reference left is KVM's (fd 5 was closed): released while the region at 0x1000 still reads
/// it. proposed keys contexts on (superblock, number) and keeps each region's own file.
#[test]
fn rfc_v3_socket_and_fifo_inode_numbers_meet_and_a_file_in_use_is_freed() {
    let script = "\
vm
socketpair                      # fd 3: inode sockfs:100
fifo                            # fd 5 (read end): inode tmpfs:100
serve 4 6                       # the device answers into the FIFO
ioregion 0 mmio 0x1000 8 5 3 user_data=1
write 0 mmio 0x1000 4 0x11
ioregion 0 mmio 0x2000 8 3 3 user_data=2   # i_ino 100 again: shares the FIFO's context
close 5
ioregion 0 mmio 0x2000 8 3 3 deassign      # puts the FIFO's read end: its last reference
read 0 mmio 0x1000 4
close 6
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
fd 5 6
ok
ok
violation lifetime: reference taken on context#1 whose count is 0
ioregion 0x1 write 0x0 4 0x11
ok
ok
ok
exit mmio 0x1000 4
violation lifetime: use of file#3 (pipe read end, inode tmpfs:100) after it was destroyed or freed
ok
",
    );
    proposed_prints(
        script,
        "vm 0
fd 3 4
fd 5 6
ok
ok
ioregion 0x1 write 0x0 4 0x11
ok
ok
ok
ioregion 0x1 read 0x0 4 0x11
ok
",
    );
}

/// `isolation`: contexts are found on one VM's list (spec step 5, "Walk this VM's ioregions on
/// this bus"), so two VMs using the same socket get two contexts: two transactions share one
/// untagged response channel. VM 0's read waits (nobody serves fd 4); once the device runs it
/// answers VM 0's command, and VM 1's read, not held back by VM 0's context, sends its own and
/// reads the first response on the socket: VM 0's. proposed has one context per inode, host-wide:
/// VM 1's read waits behind VM 0's.
#[test]
fn rfc_v3_two_vms_on_one_socket_read_each_others_responses() {
    let script = "\
vm
vm
socketpair
ioregion 0 mmio 0x1000 8 3 3 user_data=1
ioregion 1 mmio 0x1000 8 3 3 user_data=2   # VM 1's list is empty: a second context
read 0 mmio 0x1000 4                       # nobody serves fd 4 yet
serve 4
read 1 mmio 0x1000 4
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
vm 1
fd 3 4
ok
violation lifetime: reference taken on context#1 whose count is 0
ok
violation lifetime: reference taken on context#2 whose count is 0
blocked
ok
ioregion 0x2 read 0x0 4 0x0
violation isolation: vm1 vcpu0 access 1 completes with the response to vm0 vcpu0 access 1
",
    );
    proposed_prints(script, "vm 0\nvm 1\nfd 3 4\nok\nok\nblocked\nok\nblocked\n");
}

/// `route`: the same with one VM and two buses: the walk is per bus, so an MMIO and a PIO region
/// on one socket get two contexts, and the PIO read completes with the MMIO read's response.
#[test]
fn rfc_v3_mmio_and_pio_regions_on_one_socket_read_each_others_responses() {
    let script = "\
vm
socketpair
ioregion 0 mmio 0x1000 8 3 3 user_data=1
ioregion 0 pio 0x60 4 3 3 user_data=2      # the PIO list is empty: a second context
read 0 mmio 0x1000 4
serve 4
read 0 pio 0x60 4
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
ok
violation lifetime: reference taken on context#1 whose count is 0
ok
violation lifetime: reference taken on context#2 whose count is 0
blocked
ok
ioregion 0x2 read 0x0 4 0x0
violation route: vm0 vcpu1 access 1 completes with the response to vm0 vcpu0 access 1
",
    );
    proposed_prints(script, "vm 0\nfd 3 4\nok\nok\nblocked\nok\nblocked\n");
}

/// `route` with a response made of two: the per-bus contexts of the previous test on a stream
/// socket with 48-byte buffers. The PIO read takes the MMIO read's response; the device's answer
/// to it finds 16 bytes of room and only those go (the spec: a stream socket transfers "fewer
/// bytes than asked when their buffer is nearly full"); the next PIO read gets 16 bytes of that
/// answer and 16 of its own, i.e. a response assembled from two accesses' responses.
#[test]
fn rfc_v3_partial_responses_on_a_small_stream_socket_mix_two_responses() {
    let script = "\
vm
socketpair stream buf=48
ioregion 0 mmio 0x1000 8 3 3 user_data=1
ioregion 0 pio 0x60 4 3 3 user_data=2
read 0 mmio 0x1000 4                       # nobody serves fd 4 yet
serve 4                                    # 32 bytes of answer to the MMIO read
read 0 pio 0x60 4                          # takes them; 16 bytes of its own answer fit
read 0 pio 0x60 4                          # 16 old bytes and 16 of its own answer
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
ok
violation lifetime: reference taken on context#1 whose count is 0
ok
violation lifetime: reference taken on context#2 whose count is 0
blocked
ok
ioregion 0x2 read 0x0 4 0x0
violation route: vm0 vcpu1 access 1 completes with the response to vm0 vcpu0 access 1
ioregion 0x2 read 0x0 4 0x0
violation route: vm0 vcpu2 access 1 completes with the response to vm0 vcpu1 access 1 and vm0 vcpu2 access 1
",
    );
    proposed_prints(script, "vm 0\nfd 3 4\nok\nok\nblocked\nok\nblocked\nblocked\n");
}

/// `route`: "A read on a region without a context returns 0 here, having sent the command,
/// without reading any response" (spec, dispatch step 3). The device answers that read (v3
/// reads always have `resp` set); the answer stays on the socket, and the next read of the
/// sized region takes it: 0 instead of the 0x11 written. proposed sends nothing for a doorbell
/// read: see `model_bug_proposed_size0_read_leaves_its_response_on_the_channel`.
#[test]
fn rfc_v3_a_size0_read_leaves_its_response_for_the_next_access() {
    let script = "\
vm
socketpair
serve 4
ioregion 0 mmio 0x1000 8 3 3 user_data=1
ioregion 0 mmio 0x2000 0 3 3 user_data=2 posted
write 0 mmio 0x1000 4 0x11
read 0 mmio 0x2000 4                       # sends a read, reads no response
read 0 mmio 0x1000 4                       # takes that response
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
ok
ok
violation lifetime: reference taken on context#1 whose count is 0
ok
ioregion 0x1 write 0x0 4 0x11
ioregion 0x2 read 0x0 4 0x0
ioregion 0x1 read 0x0 4 0x0
violation route: vm0 vcpu2 access 1 completes with the response to vm0 vcpu1 access 1
",
    );
}

/// `wire` (a message made of two commands): a stream socket takes a command in pieces when it is
/// nearly full (spec: "Stream sockets and pipes may transfer fewer bytes than asked when their
/// buffer is nearly full"). With `O_NONBLOCK` the second posted write moves 8 of its 32 bytes;
/// rfc-v3 turns the short count into `EIO` and an exit (spec step 3), leaving the 8 bytes on the
/// socket. The device's next 32-byte message is those 8 bytes and 24 of the next command, which
/// decodes as a write of the wrong user_data (0x201) and offset (the device stores it there); the
/// one after is 8 bytes of that command and 24 of a read, and does not decode at all (command
/// byte 3). proposed refuses `O_NONBLOCK` files (`refuses_nonblocking_fds`) and continues short
/// transfers.
#[test]
fn rfc_v3_a_short_command_write_garbles_the_stream() {
    let script = "\
vm
socketpair stream nonblock buf=40
ioregion 0 mmio 0x1000 8 3 3 user_data=1 posted
write 0 mmio 0x1000 4 0x1                  # 32 bytes queued, nobody serves fd 4 yet
write 0 mmio 0x1000 4 0x2                  # 8 bytes fit: EIO, exit, 8 bytes left behind
serve 4
write 0 mmio 0x1004 4 0x3                  # read as 8 + 24 bytes: a valid-looking write
read 0 mmio 0x1000 4                       # read as 8 + 24 bytes: command byte 3
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
ok
violation lifetime: reference taken on context#1 whose count is 0
ioregion 0x1 write 0x0 4 0x1
exit mmio 0x1000 4 0x2
ok
ioregion 0x1 write 0x4 4 0x3
violation wire: a 32-byte message on the wire is made of bytes of vm0 vcpu1 access 1 and vm0 vcpu2 access 1
exit mmio 0x1000 4
violation wire: a 32-byte message on the wire is made of bytes of vm0 vcpu2 access 1 and vm0 vcpu3 access 1
violation wire: the device reads a malformed command: unknown command 3 (0 read, 1 write) ([03, 00, 00, 00, 00, 00, 00, 00, 00, 12, 00, 00, 00, 00, 00, 00, 01, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00])
",
    );
    proposed_prints(
        script,
        "vm 0
fd 3 4
err EINVAL
exit mmio 0x1000 4 0x1
exit mmio 0x1000 4 0x2
ok
exit mmio 0x1004 4 0x3
exit mmio 0x1000 4
",
    );
}

/// `route` after an `EAGAIN`: with `O_NONBLOCK`, GET_REPLY finds no response yet, `EAGAIN`
/// becomes `EINVAL` and the access exits (spec step 4) with its command sent; the device answers
/// later and the next access completes with that stale response.
#[test]
fn rfc_v3_a_nonblocking_reply_exits_and_its_response_goes_to_the_next_access() {
    let script = "\
vm
socketpair stream nonblock
ioregion 0 mmio 0x1000 8 3 3 user_data=1
read 0 mmio 0x1000 4                       # EAGAIN: exit, the command is on the socket
serve 4                                    # the device answers it
read 0 mmio 0x1004 4
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
ok
violation lifetime: reference taken on context#1 whose count is 0
exit mmio 0x1000 4
ok
ioregion 0x1 read 0x4 4 0x0
violation route: vm0 vcpu1 access 1 completes with the response to vm0 vcpu0 access 1
",
    );
    proposed_prints(script, "vm 0\nfd 3 4\nerr EINVAL\nexit mmio 0x1000 4\nok\nexit mmio 0x1004 4\n");
}

/// `bus`: the bus entry's len is an `int`; `kvm_io_bus_register_dev` is given `memory_size`
/// truncated (0x100000008 becomes 8: the region answers 8 bytes of its 4 GiB, and a write at
/// 0x1010 exits) or negative (0x80000000: INT_MIN, an entry `kvm_io_bus_cmp` matches for every
/// port from 0x60 up, so port 0x1000 is the region's). proposed refuses sizes above `INT_MAX`
/// (`sizes_fit_bus_len`).
#[test]
fn rfc_v3_sizes_beyond_int_are_truncated_or_negative_on_the_bus() {
    let script = "\
vm
socketpair
ioregion 0 mmio 0x1000 0x100000008 3 3 user_data=1
ioregion 0 pio 0x60 0x80000000 3 3 user_data=2
serve 4
write 0 mmio 0x1004 4 0x1
write 0 mmio 0x1010 4 0x2
write 0 pio 0x1000 4 0x3
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
ok
violation lifetime: reference taken on context#1 whose count is 0
violation bus: vm0: ioregion#1(mmio 0x1000 size 0x100000008) is on the mmio bus as [0x1000 len 8]
ok
violation lifetime: reference taken on context#2 whose count is 0
violation bus: vm0: ioregion#2(pio 0x60 size 0x80000000) is on the pio bus as [0x60 len -2147483648]
ok
ioregion 0x1 write 0x4 4 0x1
exit mmio 0x1010 4 0x2
ioregion 0x2 write 0xfa0 4 0x3
",
    );
    proposed_prints(
        script,
        "vm 0
fd 3 4
err EINVAL
err EINVAL
ok
exit mmio 0x1004 4 0x1
exit mmio 0x1010 4 0x2
exit pio 0x1000 4 0x3
",
    );
}

// ---------------------------------------------------------------------------------------------
// seed
// ---------------------------------------------------------------------------------------------

/// `overlap`: the seed document refuses only "a region that would split an existing one"
/// (`EINVAL`); a region that contains another, or straddles its end, is accepted, on MMIO and
/// PIO alike. The bus then answers each access from the first entry that holds it. proposed
/// (v3 structure, the same regions on a socket) refuses every overlap with `EEXIST`.
#[test]
fn seed_overlapping_regions_are_accepted_unless_they_split_one() {
    let script = "\
vm
ioregionfd
ioregion 0 mmio 0x1000 0x10 3 user_data=1
ioregion 0 mmio 0x1004 0x4 3 user_data=2   # strictly inside: a split, EINVAL
ioregion 0 mmio 0x1008 0x10 3 user_data=3  # straddles its end: accepted
ioregion 0 mmio 0xff0 0x40 3 user_data=4   # contains both: accepted
ioregion 0 pio 0x60 4 3 user_data=5
ioregion 0 pio 0x62 4 3 user_data=6        # straddles: accepted
serve 3
write 0 mmio 0x100c 4 0x5
read 0 mmio 0x100c 4
read 0 mmio 0x1010 4
";
    prints(
        Design::Seed,
        script,
        "vm 0
fd 3
ok
err EINVAL
ok
violation overlap: vm0: ioregion#1(mmio 0x1000 size 0x10) and ioregion#2(mmio 0x1008 size 0x10) overlap
ok
violation overlap: vm0: ioregion#1(mmio 0x1000 size 0x10) and ioregion#3(mmio 0xff0 size 0x40) overlap
violation overlap: vm0: ioregion#2(mmio 0x1008 size 0x10) and ioregion#3(mmio 0xff0 size 0x40) overlap
ok
ok
violation overlap: vm0: ioregion#4(pio 0x60 size 0x4) and ioregion#5(pio 0x62 size 0x4) overlap
ok
ioregion 0x1 write 0xc 4 0x5
ioregion 0x1 read 0xc 4 0x5
ioregion 0x3 read 0x8 4 0x0
",
    );
    proposed_prints(
        "\
vm
socketpair
ioregion 0 mmio 0x1000 0x10 3 3 user_data=1
ioregion 0 mmio 0x1004 0x4 3 3 user_data=2
ioregion 0 mmio 0x1008 0x10 3 3 user_data=3
ioregion 0 mmio 0xff0 0x40 3 3 user_data=4
ioregion 0 pio 0x60 4 3 3 user_data=5
ioregion 0 pio 0x62 4 3 3 user_data=6
serve 4
write 0 mmio 0x100c 4 0x5
read 0 mmio 0x100c 4
read 0 mmio 0x1010 4
",
        "vm 0
fd 3 4
ok
err EEXIST
err EEXIST
err EEXIST
ok
err EEXIST
ok
ioregion 0x1 write 0xc 4 0x5
ioregion 0x1 read 0xc 4 0x5
exit mmio 0x1010 4
",
    );
}

/// `overlap`, ioregion against ioeventfd: the seed document says nothing of ioeventfds, and
/// neither ioctl checks the other (`ioeventfd_checks_ioregions` is false): an ioeventfd inside
/// a region and a region over an ioeventfd are both accepted; which one takes an access depends
/// on the bus order. proposed refuses both (`EEXIST`).
#[test]
fn seed_ioeventfds_and_regions_overlap_in_both_directions() {
    let script = "\
vm
ioregionfd
eventfd
ioregion 0 mmio 0x1000 8 3 user_data=1
ioeventfd 0 mmio 0x1004 4 4                # inside the region: accepted
ioeventfd 0 pio 0x60 2 4
ioregion 0 pio 0x60 4 3 user_data=2        # over the ioeventfd: accepted
serve 3
write 0 mmio 0x1004 4 0x1                  # the region takes it
write 0 pio 0x60 2 0x1                     # the ioeventfd takes it
";
    prints(
        Design::Seed,
        script,
        "vm 0
fd 3
eventfd 4
ok
ok
violation overlap: vm0: ioregion#1(mmio 0x1000 size 0x8) and ioeventfd(mmio 0x1004 len 4 -> eventfd 4) overlap
ok
ok
violation overlap: vm0: ioregion#2(pio 0x60 size 0x4) and ioeventfd(pio 0x60 len 2 -> eventfd 4) overlap
ok
ioregion 0x1 write 0x4 4 0x1
eventfd 4
",
    );
    proposed_prints(
        "\
vm
socketpair
eventfd
ioregion 0 mmio 0x1000 8 3 3 user_data=1
ioeventfd 0 mmio 0x1004 4 5
ioeventfd 0 pio 0x60 2 5
ioregion 0 pio 0x60 4 3 3 user_data=2
serve 4
write 0 mmio 0x1004 4 0x1
write 0 pio 0x60 2 0x1
",
        "vm 0
fd 3 4
eventfd 5
ok
err EEXIST
ok
err EEXIST
ok
ioregion 0x1 write 0x4 4 0x1
eventfd 5
",
    );
}

/// `bus`: as in rfc-v3, seed hands `memory_size` to the bus's `int` len: 0x100000008 is
/// truncated to 8, 0x80000000 becomes INT_MIN. (proposed's refusal of the same sizes is checked
/// by the rfc-v3 test above.)
#[test]
fn seed_sizes_beyond_int_are_truncated_or_negative_on_the_bus() {
    let script = "\
vm
ioregionfd
ioregion 0 mmio 0x1000 0x100000008 3 user_data=1
ioregion 0 pio 0x60 0x80000000 3 user_data=2
serve 3
write 0 mmio 0x1004 4 0x1
write 0 mmio 0x1010 4 0x2
write 0 pio 0x1000 4 0x3
";
    prints(
        Design::Seed,
        script,
        "vm 0
fd 3
ok
violation bus: vm0: ioregion#1(mmio 0x1000 size 0x100000008) is on the mmio bus as [0x1000 len 8]
ok
violation bus: vm0: ioregion#2(pio 0x60 size 0x80000000) is on the pio bus as [0x60 len -2147483648]
ok
ioregion 0x1 write 0x4 4 0x1
exit mmio 0x1010 4 0x2
ioregion 0x2 write 0xfa0 4 0x3
",
    );
}

// ---------------------------------------------------------------------------------------------
// Userspace misuse: the checks fire under every design (pinned, not a design defect)
// ---------------------------------------------------------------------------------------------

/// A device served on KVM's own end of the socket reads the responses the real device sends as
/// commands: a command read twice (`exactly-once`) and a response that is not a valid command
/// (`wire`). No design can prevent a VMM from doing this; proposed reports it the same way.
#[test]
fn misuse_a_device_on_kvms_end_reads_responses_as_commands() {
    let script = "\
vm
socketpair
ioregion 0 mmio 0x1000 8 3 3 user_data=1
serve 4
serve 3                                    # a second device on KVM's end
read 0 mmio 0x1000 4
";
    let tail = "blocked
violation exactly-once: the device reads the command of vm0 vcpu0 access 1 a second time
violation wire: the device reads a malformed command: the response bit of a read is wrong for this format ([00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00, 00])
";
    prints(
        Design::RfcV3,
        script,
        &format!("vm 0\nfd 3 4\nok\nviolation lifetime: reference taken on context#1 whose count is 0\nok\nok\n{tail}"),
    );
    prints(Design::Proposed, script, &format!("vm 0\nfd 3 4\nok\nok\nok\n{tail}"));
}

/// A device that reads one ioregionfd's commands and writes its responses into another (seed's
/// `serve 3 4`; any transport can be wired so): VM 0's read on ioregionfd 4 completes with the
/// response to VM 1's command on ioregionfd 3 (`isolation`). The same wiring of two socketpairs
/// does it under proposed.
#[test]
fn misuse_a_device_answers_into_another_channel() {
    prints(
        Design::Seed,
        "\
vm
vm
ioregionfd
ioregionfd
ioregion 1 mmio 0x1000 8 3 user_data=1
read 1 mmio 0x1000 4                       # nobody serves fd 3 yet
serve 3 4                                  # commands from fd 3, responses into fd 4
ioregion 0 mmio 0x1000 8 4 user_data=2
read 0 mmio 0x1000 4
",
        "vm 0
vm 1
fd 3
fd 4
ok
blocked
ok
ok
ioregion 0x2 read 0x0 4 0x0
violation isolation: vm0 vcpu0 access 1 completes with the response to vm1 vcpu0 access 1
",
    );
    prints(
        Design::Proposed,
        "\
vm
vm
socketpair
socketpair
ioregion 1 mmio 0x1000 8 3 3 user_data=1
read 1 mmio 0x1000 4
serve 4 6                                  # commands from fd 4, responses into fd 6
ioregion 0 mmio 0x1000 8 5 5 user_data=2
read 0 mmio 0x1000 4
",
        "vm 0
vm 1
fd 3 4
fd 5 6
ok
blocked
ok
ok
ioregion 0x2 read 0x0 4 0x0
violation isolation: vm0 vcpu0 access 1 completes with the response to vm1 vcpu0 access 1
",
    );
}

/// One pipe as both read_fd and write_fd: KVM writes its command into the pipe and reads it
/// back as the response (its own bytes, so `route` holds; bytes 8-31 are the command's user_data
/// and offset: `wire`, and the guest reads 0x1200, the command's first bytes). The review thread
/// says pipes are one-way; rfc-v3 does not check. proposed refuses it: see
/// `model_bug_proposed_accepts_one_pipe_for_both_directions`.
#[test]
fn misuse_one_pipe_for_both_directions_reads_the_command_back() {
    prints(
        Design::RfcV3,
        "\
vm
pipe
ioregion 0 mmio 0x1000 8 3 4 user_data=1   # responses from the pipe the commands go into
read 0 mmio 0x1004 4
",
        "vm 0
fd 3 4
ok
violation lifetime: reference taken on context#1 whose count is 0
ioregion 0x1 read 0x4 4 0x1200
violation wire: vm0 vcpu0 access 1 reads a malformed response: reserved bits set in byte 8
",
    );
}

// ---------------------------------------------------------------------------------------------
// An artifact of the sequential model (pinned; proposed's blocked access keeps its claim: see the
// model bugs below)
// ---------------------------------------------------------------------------------------------

/// `route` under seed: a read blocks (nobody serves the ioregionfd) holding the ioregionfd's
/// context; the region is deleted (fd = -1), which puts the last reference on that context; a new
/// region on the same ioregionfd gets a new, free context, and its access completes with the
/// response the device then gives to the blocked read. In the kernel the blocked vCPU is inside
/// its SRCU read section, so the delete would wait for it in `synchronize_srcu` (the deadlock the
/// `waits_outside_srcu` knob describes), and the blocked vCPU would read its own response; the
/// sequential model abandons the blocked access instead. rfc-v3 does the same with DEASSIGN;
/// proposed's blocked access keeps its claim and the context
/// (`model_bug_proposed_blocked_access_loses_its_context_to_a_deassign`).
#[test]
fn sequential_artifact_seed_delete_under_a_blocked_access() {
    prints(
        Design::Seed,
        "\
vm
ioregionfd
ioregion 0 mmio 0x1000 8 3 user_data=1
read 0 mmio 0x1000 4                       # blocked, holding the context
ioregion 0 mmio 0x1000 8 -1                # delete: the context's last reference
serve 3
ioregion 0 mmio 0x1000 8 3 user_data=2     # a new context
read 0 mmio 0x1000 4
",
        "vm 0
fd 3
ok
blocked
ok
ok
ok
ioregion 0x2 read 0x0 4 0x0
violation route: vm0 vcpu1 access 1 completes with the response to vm0 vcpu0 access 1
",
    );
}

// ---------------------------------------------------------------------------------------------
// Model bugs, fixed: the model contradicted the spec or the knob docs (the state machines found
// each); each test demands the spec's answer, which the model now gives
// ---------------------------------------------------------------------------------------------

/// Spec, seed: "When the last userspace file descriptor of an ioregionfd is closed, all regions
/// registered with it (in every VM) are dropped", and "Same (guest_paddr, memory_size) as an
/// existing region -> modify it" (the seed order documented on `KvmIo::set_ioregion_seed`:
/// "modifies that region (its user_data, flags and ioregionfd)"). After the modify the region is
/// registered with ioregionfd 4, so the last close of ioregionfd 3 leaves it in place. (The model
/// used to leave the release hook of the region's first ioregionfd in place without checking
/// which ioregionfd the region uses when the hook runs, and printed `exit mmio 0x1000 4`.)
#[test]
fn model_bug_seed_last_close_drops_a_region_modified_to_another_ioregionfd() {
    prints(
        Design::Seed,
        "\
vm
ioregionfd
ioregionfd
ioregion 0 mmio 0x1000 8 3 user_data=1
ioregion 0 mmio 0x1000 8 4 user_data=2     # modify: the region now uses ioregionfd 4
serve 4
close 3                                    # last close of ioregionfd 3
read 0 mmio 0x1000 4                       # the region is registered with fd 4
",
        "vm 0\nfd 3\nfd 4\nok\nok\nok\nok\nioregion 0x2 read 0x0 4 0x0\n",
    );
}

/// Spec, proposed: "every invariant in the crate's catalogue holds in every scenario, under every
/// transport it supports". A size-0 region is a doorbell (knob `size_zero`: nobody answers it): a
/// read of one exits to userspace with nothing sent, so nothing is left on the channel for the
/// next access. (proposed used to keep rfc-v3's rule, a read sends its command and reads no
/// response; the device answered it and the next read on that socket completed with that answer:
/// `route`.)
#[test]
fn model_bug_proposed_size0_read_leaves_its_response_on_the_channel() {
    proposed_prints(
        "\
vm
socketpair
serve 4
ioregion 0 mmio 0x1000 8 3 3 user_data=1
ioregion 0 mmio 0x2000 0 3 3 user_data=2 posted
write 0 mmio 0x1000 4 0x11
read 0 mmio 0x2000 4                       # a doorbell read: an exit, nothing sent
read 0 mmio 0x1000 4
",
        "vm 0\nfd 3 4\nok\nok\nok\nioregion 0x1 write 0x0 4 0x11\nexit mmio 0x2000 4\nioregion 0x1 read 0x0 4 0x11\n",
    );
}

/// Knob `waits_outside_srcu` (proposed): "inside it the ioregion only claims the access
/// (references on the region, its context and files)", the sequential vCPUs of `Kvm::access`
/// included. The blocked read keeps its claim and the context it locked: the DEASSIGN does not
/// free that context, the re-registered region on the same inode shares it, and its read waits
/// behind the blocked one (`blocked`). (Sequential accesses used to claim nothing: the DEASSIGN
/// freed the context, the new region got a free one, and its read completed with the response
/// to the blocked read: `route`. seed and rfc-v3 still do that, see
/// `sequential_artifact_seed_delete_under_a_blocked_access`.)
#[test]
fn model_bug_proposed_blocked_access_loses_its_context_to_a_deassign() {
    proposed_prints(
        "\
vm
socketpair
ioregion 0 mmio 0x1000 8 3 3 user_data=1
read 0 mmio 0x1000 4                       # blocked: nobody serves fd 4
ioregion 0 mmio 0x1000 8 3 3 deassign      # the blocked read's claim keeps the context
serve 4
ioregion 0 mmio 0x1000 8 3 3 user_data=2   # shares the context the blocked read holds
read 0 mmio 0x1000 4
",
        "vm 0\nfd 3 4\nok\nblocked\nok\nok\nok\nblocked\n",
    );
}

/// Knob `short_transfer` (proposed): "continue from the byte reached until all 32 have moved".
/// A blocking stream socket with a small buffer takes 8 bytes of a command and the sequential
/// vCPU is marked blocked with the other 24 never sent, holding the send side of the socket's
/// context. A size-0 region on the same socket serializes its writes on that send side too (knob
/// `size_zero`, `send_lock`): its posted write waits (`blocked`) instead of sending a command
/// behind the 8 stray bytes. (A doorbell used to have no context, and the device read a
/// message made of two commands: `wire`.)
#[test]
fn model_bug_proposed_half_sent_command_and_a_doorbell_interleave() {
    proposed_prints(
        "\
vm
socketpair stream buf=40
ioregion 0 mmio 0x1000 8 3 3 user_data=1 posted
ioregion 0 mmio 0x2000 0 3 3 user_data=2 posted
write 0 mmio 0x1000 4 0x1                  # 32 bytes queued
write 0 mmio 0x1000 4 0x2                  # 8 bytes fit: blocked with 24 unsent
serve 4
write 0 mmio 0x2000 4 0x3                  # the doorbell waits for the send side
",
        "vm 0\nfd 3 4\nok\nok\nioregion 0x1 write 0x0 4 0x1\nblocked\nok\nblocked\n",
    );
}

/// Spec, proposed, "every transport it supports", and the review thread's "pipes are one-way":
/// knob `refuses_nonblocking_fds` also refuses (`EINVAL`) a read file and a write file that are
/// the two ends of one pipe or FIFO, so the read finds no region and exits. (proposed used to
/// accept them and read its own command back as the response: `wire`.)
#[test]
fn model_bug_proposed_accepts_one_pipe_for_both_directions() {
    proposed_prints(
        "\
vm
pipe
ioregion 0 mmio 0x1000 8 3 4 user_data=1   # responses from the pipe the commands go into
read 0 mmio 0x1004 4
",
        "vm 0\nfd 3 4\nerr EINVAL\nexit mmio 0x1004 4\n",
    );
}

/// proposed, "every transport it supports": a region may send its commands on one stream socket
/// and read its responses from another; a size-0 doorbell on the command socket must not write
/// into the middle of that region's half-sent command. The region's context is its response
/// channel's; so proposed also takes the command channel's context (the doorbell's) around each
/// send, and a vCPU blocked in the middle of a message keeps it: the doorbell waits (`blocked`)
/// instead of garbling the wire. (Found by the state machines' author after the doorbell fix.)
#[test]
fn proposed_serializes_every_writer_of_a_command_channel() {
    proposed_prints(
        "\
vm
socketpair stream buf=40
socketpair
ioregion 0 mmio 0x1000 8 5 3 user_data=1 posted   # commands on fd 3, responses from fd 5
ioregion 0 mmio 0x2000 0 3 3 user_data=2 posted   # a doorbell on fd 3
write 0 mmio 0x1000 4 0x1
write 0 mmio 0x1000 4 0x2                         # 8 of 32 bytes fit: blocked mid-message
serve 4 6
write 0 mmio 0x2000 4 0x3                         # waits for the command channel
",
        "vm 0\nfd 3 4\nfd 5 6\nok\nok\nioregion 0x1 write 0x0 4 0x1\nblocked\nok\nblocked\n",
    );
}

/// Found by the model-vs-kernel differential (`tests/kernel_ioregion_oracle.rs`, run by
/// `kernel/run`): a pipe's write end as `read_fd` or its read end as `write_fd` was accepted by
/// the model's proposed design, and the access failed at its first transfer; on the kernel series
/// that transfer is `kernel_write` on a file not open for writing, a `WARN` in
/// `__kernel_write_iter`. rfc-v3 (no such check) still accepts them and the read exits; proposed
/// now refuses them (`checks_file_modes`: `EBADF`), a doorbell's write file too.
#[test]
fn differential_files_of_the_wrong_mode_are_refused() {
    let script = "\
vm
pipe                                  # fd 3 (read end) and 4 (write end)
socketpair
ioregion 0 mmio 0x1000 8 4 5          # read_fd open only for writing
ioregion 0 mmio 0x2000 8 5 3          # write_fd open only for reading
ioregion 0 mmio 0x3000 0 -1 3 posted  # a doorbell's write_fd open only for reading
read 0 mmio 0x2000 4
";
    prints(
        Design::RfcV3,
        script,
        "vm 0
fd 3 4
fd 5 6
ok
violation lifetime: reference taken on context#1 whose count is 0
ok
violation lifetime: reference taken on context#2 whose count is 0
ok
exit mmio 0x2000 4
",
    );
    proposed_prints(script, "vm 0\nfd 3 4\nfd 5 6\nerr EBADF\nerr EBADF\nerr EBADF\nexit mmio 0x2000 4\n");
}
