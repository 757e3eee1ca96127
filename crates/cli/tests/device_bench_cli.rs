// SPDX-License-Identifier: MIT OR Apache-2.0
//! `ioregionfd-model bench --quick` runs to the end and prints its tables (no timing is
//! asserted: speed belongs to the benchmarks). The KVM table either appears or is replaced by
//! one `skip: /dev/kvm not available: <reason>` line.

#![cfg(target_os = "linux")]

use std::process::Command;

#[test]
fn quick_bench_prints_every_table_and_draws_the_chart() {
    let svg = std::env::temp_dir().join(format!("ioregionfd-bench-{}.svg", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_ioregionfd-model"))
        .args(["bench", "--quick", "--svg"])
        .arg(&svg)
        .output()
        .expect("run ioregionfd-model bench");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.starts_with("machine: "), "{out}");
    assert!(out.contains("Round trip, 32-byte command + 32-byte response, one CPU"), "{out}");
    for transport in
        ["pipe pair", "socketpair SOCK_STREAM", "socketpair SOCK_SEQPACKET", "FIFO pair", "eventfd pair", "futex"]
    {
        assert!(out.contains(transport), "{transport} missing:\n{out}");
    }
    let kvm_table = out.contains("Guest MMIO access paths on /dev/kvm");
    let kvm_skip = out.lines().any(|l| l.starts_with("skip: /dev/kvm not available: "));
    assert!(kvm_table != kvm_skip, "exactly one of the KVM table or its skip line:\n{out}");
    if kvm_skip {
        println!("{}", out.lines().find(|l| l.starts_with("skip: ")).unwrap_or_default());
    }
    assert!(out.contains("Bus lookup, per access"), "{out}");
    let chart = std::fs::read_to_string(&svg).expect("the chart was written");
    let _ = std::fs::remove_file(&svg);
    assert!(chart.starts_with("<svg ") && chart.trim_end().ends_with("</svg>"), "{chart}");
    assert!(chart.contains("round trip, one CPU"), "{chart}");
}
