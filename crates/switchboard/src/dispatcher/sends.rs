//! Where attempts run: two runtimes of one thread each, apart from the one that serves
//! requests and writes the store, one for webhooks that answer and one for webhooks on
//! probation.
//!
//! A thousand webhooks tried at once are a thousand connections opened in one moment. On the
//! shared runtime every step of the ingests behind them (each statement's answer, each row
//! read) waited its turn after them: the second message's transaction took 90 ms instead of
//! 5. And on one runtime for all attempts, a healthy subscriber's next attempt waited behind
//! the 500 retries of hanging subscribers a poll had just claimed (20 ms). Apart, the
//! operating system shares the cores between the three, and neither ingest nor an answering
//! subscriber waits in a queue behind attempts that will time out.

use std::future::Future;

use tokio::runtime::Runtime;

pub(super) struct Sends {
    answered: Option<Runtime>,
    probation: Option<Runtime>,
}

impl Sends {
    pub(super) fn start() -> anyhow::Result<Sends> {
        let runtime = |name: &str| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(name)
                .enable_all()
                .build()
        };
        // Filled one at a time, so that if the second fails the first is shut down by `Drop`
        // (a runtime dropped in an async context would panic).
        let mut sends = Sends {
            answered: None,
            probation: None,
        };
        sends.answered = Some(runtime("switchboard-send")?);
        sends.probation = Some(runtime("switchboard-probe")?);
        Ok(sends)
    }

    /// Run an attempt: on the probation runtime if its webhook is on probation.
    pub(super) fn spawn<F>(&self, on_probation: bool, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let runtime = if on_probation {
            &self.probation
        } else {
            &self.answered
        };
        if let Some(runtime) = runtime {
            runtime.spawn(task);
        }
    }
}

impl Drop for Sends {
    fn drop(&mut self) {
        // Not waiting for attempts in flight: their leases expire and they are sent again.
        for runtime in [self.answered.take(), self.probation.take()]
            .into_iter()
            .flatten()
        {
            runtime.shutdown_background();
        }
    }
}
