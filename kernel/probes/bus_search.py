#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Brute-force search for M1 sequences under mainline's kvm_io_bus rules.

Registers sane coalesced zones, zero-length ioeventfds (--ioeventfds) and
zones above INT_MAX ("big"), removes big zones, and reports, per sequence
length, the first sequence after which a write covered by a registered device
is missed although every big zone is gone, while the same sequence with the
big zones refused (the fix) reaches the device. --ioapic puts a range above
all others on the bus first, as the in-kernel IOAPIC of a selftest VM.

This is a search aid: confirm a sequence with the model
(cargo run -q -- script --design rfc-v3 FILE) and then on the kernel.
"""
import argparse

MASK = (1 << 64) - 1


def cmp(r1, r2):
    """kvm_io_bus_cmp() on (addr, int len) pairs."""
    a1, a2 = r1[0], r2[0]
    if a1 < a2:
        return -1
    if r2[1]:
        a1 = (a1 + (r1[1] & MASK)) & MASK
        a2 = (a2 + (r2[1] & MASK)) & MASK
    return 1 if a1 > a2 else 0


def insert(bus, entry):
    """kvm_io_bus_register_dev(): before the first entry that compares greater."""
    for i, x in enumerate(bus):
        if cmp(x, entry) > 0:
            return bus[:i] + (entry,) + bus[i:]
    return bus + (entry,)


def first_dev(bus, key):
    """bsearch() then the walk back of kvm_io_bus_get_first_dev()."""
    base, num = 0, len(bus)
    while num > 0:
        pivot = base + num // 2
        c = cmp(key, bus[pivot])
        if c == 0:
            while pivot > 0 and cmp(key, bus[pivot - 1]) == 0:
                pivot -= 1
            return pivot
        if c > 0:
            base = pivot + 1
            num -= 1
        num //= 2
    return None


def handler(bus, key):
    """The device that takes a write of key = (addr, len), or None (exit)."""
    i = first_dev(bus, key)
    while i is not None and i < len(bus) and cmp(key, bus[i]) == 0:
        addr, _, size, kind = bus[i]
        if kind == "zone" and addr <= key[0] and key[0] + key[1] <= addr + size:
            return bus[i]
        if kind == "ioeventfd" and key[0] == addr:
            return bus[i]
        i += 1
    return None


def as_int(size):
    size &= 0xFFFFFFFF
    return size - (1 << 32) if size >= 1 << 31 else size


def disjoint(a, b):
    """Sane entries of the search never share an address."""
    def span(e):
        return (e[0], e[0] + max(e[2], 1))
    (s1, e1), (s2, e2) = span(a), span(b)
    return e1 <= s2 or e2 <= s1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--ioeventfds", action="store_true")
    ap.add_argument("--ioapic", action="store_true")
    ap.add_argument("--sizes", default="4,8", help="sizes of the sane zones")
    ap.add_argument("--big", default="0xfffffff0,0xfffffff8,0x80000000")
    ap.add_argument("--max-big", type=int, default=2)
    ap.add_argument("--target", choices=("any", "zone", "ioeventfd"), default="any",
                    help="the kind of device whose miss counts")
    args = ap.parse_args()

    offsets = range(0, 0x20, 4)
    sane = [(a, s, s, "zone") for a in offsets for s in map(int, args.sizes.split(","))]
    if args.ioeventfds:
        sane += [(a, 0, 0, "ioeventfd") for a in offsets]
    big = [(a, as_int(s), s, "big") for a in offsets for s in (int(x, 0) for x in args.big.split(","))]
    start = ((0x100000, 0x100, 0x100, "ioapic"),) if args.ioapic else ()
    found = {}

    def replay_fixed(hist):
        bus = start
        for op, e in hist:
            if e[3] == "big":
                continue
            bus = insert(bus, e) if op == "register" else tuple(x for x in bus if x != e)
        return bus

    def check(bus, hist):
        fixed = replay_fixed(hist)
        for dev in bus:
            if dev[3] not in ("zone", "ioeventfd") or args.target not in ("any", dev[3]):
                continue
            keys = [(dev[0], 4)] if dev[3] == "ioeventfd" else [
                (dev[0] + o, n) for o in range(dev[2]) for n in (1, 2, 4) if o + n <= dev[2]]
            for key in keys:
                if handler(bus, key) is None and handler(fixed, key) is not None:
                    if len(hist) not in found:
                        found[len(hist)] = (hist, bus, key)
                    return

    def dfs(bus, hist, nbig):
        if nbig == 0 and hist:
            check(bus, hist)
        if len(hist) >= args.depth:
            return
        for s in sane:
            if all(disjoint(s, e) for e in bus if e[3] in ("zone", "ioeventfd")):
                dfs(insert(bus, s), hist + (("register", s),), nbig)
        if nbig < args.max_big:
            for z in big:
                dfs(insert(bus, z), hist + (("register", z),), nbig + 1)
        for z in bus:
            if z[3] == "big":
                dfs(tuple(x for x in bus if x != z), hist + (("remove", z),), nbig - 1)

    dfs(start, (), 0)
    if not found:
        print(f"no miss up to {args.depth} operations")
    for n in sorted(found):
        hist, bus, key = found[n]
        print(f"{n} operations:")
        for op, (addr, _, size, kind) in hist:
            print(f"  {op:8} {kind:9} 0x{addr:x} size 0x{size:x}")
        print("  bus: " + " ".join(f"[0x{a:x}, {l}]" for a, l, _, _ in bus))
        print(f"  missed: write of {key[1]} bytes at 0x{key[0]:x}")


if __name__ == "__main__":
    main()
