//! Logging, set up once: `tracing` to stdout with the filter from `log` / `SWITCHBOARD_LOG`.

use anyhow::Context;
use tracing_subscriber::EnvFilter;

pub fn init(filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)
        .with_context(|| format!("log: `{filter}` is not a valid filter"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .try_init()
        .map_err(|e| anyhow::anyhow!("{e}"))
}
