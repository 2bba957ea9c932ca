//! The flow log's writer thread: it drains the loops' records
//! ([`crate::packet::flowlog`]), names their ports and rules by the plan of
//! their generation, and writes one JSON line each to a file or stderr.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use sgswitch_config::FlowLogTo;

use crate::datapath::plan::Published;
use crate::packet::flowlog::{Writer, line};

/// Why the flow log cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum FlowLogError {
    #[error("flow log {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("starting the flow-log writer: {0}")]
    Thread(std::io::Error),
}

/// Opens the destination (a file is created if missing, appended to).
fn open(to: &FlowLogTo) -> Result<Box<dyn Write + Send>, FlowLogError> {
    match to {
        FlowLogTo::Stderr => Ok(Box::new(std::io::stderr())),
        FlowLogTo::File(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map(|f| Box::new(std::io::BufWriter::new(f)) as Box<dyn Write + Send>)
            .map_err(|source| FlowLogError::Open { path: p.display().to_string(), source }),
    }
}

/// What the writer reads: the published plans (to name ports and rules),
/// when the loops' clock started, and when to stop.
#[derive(Debug)]
pub struct Handle {
    pub published: Arc<ArcSwap<Published>>,
    pub started: SystemTime,
    pub stop: Arc<crate::control::stop::Stop>,
}

/// Starts the writer thread; it drains the queue until the switch stops.
///
/// # Errors
/// The destination cannot be opened, or the thread started.
pub fn start(writer: Writer, handle: Handle) -> Result<std::thread::JoinHandle<()>, FlowLogError> {
    let mut out = open(writer.to())?;
    std::thread::Builder::new()
        .name("sgswitch-flowlog".into())
        .spawn(move || {
            // The plans of the last few generations, to name ports and rules
            // of records made just before a reload.
            let mut recent: Vec<Arc<Published>> = Vec::new();
            let stats = Arc::clone(writer.stats());
            loop {
                let stopping = handle.stop.is_set();
                let cur = handle.published.load_full();
                if !recent.iter().any(|p| Arc::ptr_eq(p, &cur)) {
                    if recent.len() == 4 {
                        recent.remove(0);
                    }
                    recent.push(cur);
                }
                let epoch = super::unix_ms(handle.started);
                let mut wrote = false;
                while let Some(r) = writer.pop() {
                    let plan = recent.iter().rev().find(|p| p.plan.generation == r.generation).map(|p| &**p);
                    match writeln!(out, "{}", line(&r, epoch, plan)) {
                        Ok(()) => stats.written.add(1),
                        Err(_) => stats.errors.add(1),
                    }
                    wrote = true;
                }
                if wrote && out.flush().is_err() {
                    stats.errors.add(1);
                }
                if stopping {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .map_err(FlowLogError::Thread)
}
