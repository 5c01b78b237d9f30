//! The `switchboard` command: parses the CLI, sets up logging, and calls into the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use switchboard::{Application, Config};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Self-hosted inbound messaging gateway"
)]
struct Cli {
    /// TOML configuration file (keys as in `switchboard config-defaults`).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: provider routes, management API and dispatcher.
    Serve {
        /// Listen address (host:port); overrides the config file and SWITCHBOARD_LISTEN.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Database URL; overrides the config file and SWITCHBOARD_DATABASE_URL.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Print the built-in configuration with a comment on every key.
    ConfigDefaults,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("switchboard: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::ConfigDefaults => {
            print!("{}", switchboard::config::DEFAULTS_TOML);
            Ok(())
        }
        Command::Migrate { database_url } => {
            config.database_url = database_url.or(config.database_url);
            switchboard::telemetry::init(&config.log)?;
            switchboard::startup::open_store(&config).await?;
            tracing::info!(database = %config.database_url(), "migrations applied");
            Ok(())
        }
        Command::Serve {
            listen,
            database_url,
        } => {
            config.listen = listen.unwrap_or(config.listen);
            config.database_url = database_url.or(config.database_url);
            switchboard::telemetry::init(&config.log)?;
            Application::build(config).await?.run_until_stopped().await
        }
    }
}
