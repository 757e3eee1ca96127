// SPDX-License-Identifier: MIT OR Apache-2.0
//! Round trip of one 32-byte command and one 32-byte response between a "vCPU" thread (the
//! benchmark's thread) and a device thread, over a pipe pair, a socketpair (`SOCK_STREAM` and
//! `SOCK_SEQPACKET`), a FIFO pair, an eventfd pair with a shared slot, and a futex ping-pong
//! (the floor); both threads pinned to one CPU, then across two CPUs.
//!
//! `cargo bench --bench transports` (add `-- --quick` for a shorter run). After each group it
//! prints each transport's median and its ratio to the futex floor of the same run.

use criterion::{Criterion, criterion_group, criterion_main};
use ioregionfd_model_cli::bench::report::{Table, criterion_median, time};
use ioregionfd_model_cli::bench::rt::{Kind, Pair};
use ioregionfd_model_cli::bench::{Pinning, Unpin, allowed_cpus, pin_current_thread};
use std::time::Duration;

fn round_trips(c: &mut Criterion) {
    let cpus = allowed_cpus();
    for pinning in Pinning::ALL {
        if pinning == Pinning::TwoCpus && cpus.len() < 2 {
            println!("skip: round trips across two CPUs: only {} CPU allowed", cpus.len());
            continue;
        }
        let _restore = Unpin(cpus.clone());
        pin_current_thread(&cpus, Some(pinning.cpus().0)).expect("pin the vCPU thread");
        let group_name = format!("round_trip_{}", pinning.id());
        let mut g = c.benchmark_group(&group_name);
        for kind in Kind::ALL {
            let mut pair = Pair::new(kind, pinning, &cpus).expect("connect a transport");
            g.bench_function(kind.id(), |b| b.iter_custom(|iters| pair.run(iters)));
        }
        g.finish();
        let floor = criterion_median(&group_name, Kind::Futex.id());
        let mut t = Table::new(
            format!("Round trip, {} (criterion medians of this run)", pinning.name()),
            &["transport", "median", "× floor"],
        );
        for kind in Kind::ALL {
            let m = criterion_median(&group_name, kind.id());
            let ratio = match (m, floor) {
                (Some(m), Some(f)) => format!("{:.2}", m / f),
                _ => "-".into(),
            };
            t.row(vec![kind.name().into(), m.map_or("-".into(), time), ratio]);
        }
        println!("\n{}", t.text());
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = round_trips
}
criterion_main!(benches);
