// SPDX-License-Identifier: MIT OR Apache-2.0
//! The paths a guest MMIO access takes on `/dev/kvm` (kvm-ioctls): `KVM_EXIT_MMIO` handled in the
//! vCPU thread (read and write), the exit forwarded to a device thread over each transport and
//! answered (pinned to one CPU and across two), and an ioeventfd-signalled posted write. One
//! iteration is one guest access. Prints `skip: /dev/kvm not available: <reason>` and measures
//! nothing when `/dev/kvm` cannot be opened.
//!
//! `cargo bench --bench kvm_paths` (add `-- --quick` for a shorter run).

use criterion::{Criterion, criterion_group, criterion_main};
use ioregionfd_model_cli::bench::kvm::{Access, Guest, NO_KVM, Path, Runner};
use ioregionfd_model_cli::bench::report::{Table, criterion_median, time};
use ioregionfd_model_cli::bench::{Pinning, Unpin, allowed_cpus, pin_current_thread};
use std::time::Duration;

fn kvm_paths(c: &mut Criterion) {
    if let Err(e) = Guest::new(Access::Read) {
        match e.strip_prefix(NO_KVM) {
            Some(reason) => println!("skip: /dev/kvm not available: {reason}"),
            None => println!("skip: cannot set up a KVM guest: {e}"),
        }
        return;
    }
    let cpus = allowed_cpus();
    let _restore = Unpin(cpus.clone());
    pin_current_thread(&cpus, Some(0)).expect("pin the vCPU thread");
    let mut g = c.benchmark_group("kvm_paths");
    let mut ran = Vec::new();
    for path in Path::all() {
        if matches!(path, Path::Forwarded(_, Pinning::TwoCpus)) && cpus.len() < 2 {
            println!("skip: {}: only {} CPU allowed", path.name(), cpus.len());
            continue;
        }
        let mut runner = Runner::new(path, &cpus).expect("set up the path");
        let id = path.id().replace('/', "_");
        g.bench_function(&id, |b| {
            b.iter_custom(|iters| runner.run(u32::try_from(iters).unwrap_or(u32::MAX)).expect("run the guest"))
        });
        ran.push((path, id));
    }
    g.finish();
    let inline = criterion_median("kvm_paths", &Path::Inline(Access::Read).id().replace('/', "_"));
    let mut t = Table::new(
        "Guest MMIO access paths (criterion medians of this run)",
        &["path", "median", "× exit answered inline"],
    );
    for (path, id) in ran {
        let m = criterion_median("kvm_paths", &id);
        let ratio = match (m, inline) {
            (Some(m), Some(i)) => format!("{:.2}", m / i),
            _ => "-".into(),
        };
        t.row(vec![path.name(), m.map_or("-".into(), time), ratio]);
    }
    println!("\n{}", t.text());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(15)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500));
    targets = kvm_paths
}
criterion_main!(benches);
