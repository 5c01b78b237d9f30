//! Where attempts run: those of webhooks that answer on the runtime that serves requests and
//! writes the store, those of webhooks on probation on a runtime of one thread of their own.
//!
//! A thousand webhooks tried at once are a thousand connections opened in one moment. On the
//! shared runtime every step of the ingests behind them (each statement's answer, each row
//! read) waited its turn after them: the second message's transaction took 90 ms instead of
//! 5, and a healthy subscriber's next attempt waited behind the 500 retries of hanging
//! subscribers a poll had just claimed (21 ms). Apart, the operating system shares the cores
//! between the two, and neither ingest nor an answering subscriber waits in a queue behind
//! attempts that will time out. (A runtime of their own for the answering webhooks' attempts
//! was tried too: it added a thread hop to every delivery, +1 ms end to end at the median
//! under load.)
//!
//! The probation thread runs at a lower priority (nice 10 above the rest), so that when both
//! want the cores the rest goes first: most of a connection's cost is the kernel's, and on
//! loopback the kernel's work for both ends is charged to the thread that connects (a thousand
//! connections were about 90 ms of one core, seven tenths of it in the kernel). A second
//! probation thread was tried: no faster, the two cores being busy with the rest.

use std::future::Future;

use tokio::runtime::Runtime;

pub(super) struct Sends {
    probation: Option<Runtime>,
}

impl Sends {
    pub(super) fn start() -> anyhow::Result<Sends> {
        let probation = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("switchboard-probe")
            .on_thread_start(lower_priority)
            .enable_all()
            .build()?;
        Ok(Sends {
            probation: Some(probation),
        })
    }

    /// Run an attempt: on the probation runtime if its webhook is on probation, else here.
    pub(super) fn spawn<F>(&self, on_probation: bool, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.probation {
            Some(runtime) if on_probation => {
                runtime.spawn(task);
            }
            _ => {
                tokio::spawn(task);
            }
        }
    }
}

impl Drop for Sends {
    fn drop(&mut self) {
        // Not waiting for attempts in flight: their leases expire and they are sent again.
        if let Some(runtime) = self.probation.take() {
            runtime.shutdown_background();
        }
    }
}

/// The probation thread yields the cores to the rest of the server when both want them: its
/// nice value 10 above the process's (at most 19).
fn lower_priority() {
    // On Linux the nice value is per thread: no pid (0) is the calling thread, which the
    // runtime made from a thread of the process.
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let base = getpriority_process(None).unwrap_or(0);
        let _ = setpriority_process(None, (base + 10).min(19));
    }
}
