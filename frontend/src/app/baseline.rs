//! The in-process baseline ("the Closed division"): `run --local` drives the engine's workers
//! through the same issuer, connection actors and lane cores as a network run, over
//! `LocalTransport` instead of a socket. Built with the cargo feature `local` (the default).

use std::sync::Arc;

use anyhow::Context as _;
use qdl_engine::local::LocalTransport;
pub use qdl_engine::worker::WorkerPool;
use qdl_frontend::report::AcceleratorReport;
use qdl_frontend::supervisor::Cluster;
use qdl_shared::config::{AcceleratorConfig, FrontendConfig};
use qdl_shared::workload::WorkloadSpec;

/// Starts the workers of `cfg.local.accelerators` boxes of `acc`'s size, checks them against
/// `spec`, and adds one in-process lane per connection to `cluster`. Returns what each box
/// reports and the pool (the run warms it up, reads its batch sizes and shuts it down).
pub fn connect_local(
    cfg: &FrontendConfig,
    acc: &AcceleratorConfig,
    spec: &WorkloadSpec,
    cluster: &Cluster,
) -> anyhow::Result<(Vec<AcceleratorReport>, Arc<WorkerPool>)> {
    let boxes = cfg.local.accelerators as usize;
    let per_box = acc.workers.count as usize;
    let workers = qdl_shared::config::WorkersConfig { count: (boxes * per_box) as u32, gpus: acc.workers.gpus.clone() };
    let pool = Arc::new(
        WorkerPool::start(&workers, acc.batcher, &acc.generation, &acc.backend).context("starting local workers")?,
    );
    for note in pool.notes() {
        tracing::info!("{note}");
    }
    pool.check(spec)?;
    let spec = Arc::new(spec.clone());
    let slots = cfg.frontend.slots_per_connection.min(acc.limits.max_slots_per_connection);
    let conns = cfg.frontend.connections_per_accelerator;
    let mut reports = Vec::new();
    for b in 0..boxes {
        let name = format!("local-{b}");
        for c in 0..conns as usize {
            // Connections of one box share that box's workers, as they would on a real accelerator.
            let worker = pool.sender(b * per_box + c % per_box);
            let sp = spec.clone();
            cluster.add_connection("", &name, c as u32, slots, spec.output_bytes, move || {
                Box::new(LocalTransport::new(worker, sp, slots))
            });
        }
        reports.push(AcceleratorReport {
            address: "in-process".into(),
            name,
            connections: conns,
            slots_per_connection: slots,
            backend: pool.backend().into(),
            workers: per_box as u32,
            max_batch: pool.max_batch() as u32,
            batch_sizes: Vec::new(),
        });
    }
    Ok((reports, pool))
}
