//! The `switchboard` command: parses the CLI, sets up logging, and calls into the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use switchboard::{Application, Config};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// What this node does: all, api or dispatcher; overrides SWITCHBOARD_ROLE.
        #[arg(long, value_name = "ROLE")]
        role: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
    },
    /// Print the built-in configuration with a comment on every key.
    ConfigDefaults,
    /// Benchmark: a server and a subscriber sink on loopback, N signed Twilio webhooks at
    /// concurrency C, every event awaited; prints a table and a JSON line.
    Bench {
        /// How many messages [default: 20000; 1000 with --hanging-webhooks].
        #[arg(long)]
        messages: Option<usize>,
        /// Requests in flight at once (at most, with --rate).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Post at this many requests a second instead of as fast as possible; latencies then
        /// count from when each request was due.
        #[arg(long, value_name = "PER_SECOND")]
        rate: Option<f64>,
        /// PostgreSQL to benchmark instead of the embedded SQLite (an empty database; with
        /// --hanging-webhooks any database: each run makes a schema of its own and drops it).
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Extra server setting, KEY=VALUE with the SWITCHBOARD_ name (repeatable).
        #[arg(long = "server-env", value_name = "KEY=VALUE")]
        server_env: Vec<String>,
        /// List the requests slower than this, ingest→delivery, by 50 ms of posting time.
        #[arg(long, value_name = "MS")]
        slow_ms: Option<f64>,
        /// Run the server under this command (split on spaces), e.g. `valgrind
        /// --tool=callgrind --callgrind-out-file=server.callgrind`; the server is then stopped
        /// with SIGTERM, so that the command can write what it recorded. Peak RSS and CPU are
        /// then the command's process's.
        #[arg(long, value_name = "COMMAND")]
        server_wrapper: Option<String>,
        /// Run the load twice, on fresh servers: without, then with N more webhooks at a
        /// subscriber that accepts connections and never answers; prints the healthy
        /// webhook's latencies, peak RSS and open descriptors of both runs side by side.
        #[arg(long, value_name = "N")]
        hanging_webhooks: Option<usize>,
    },
    /// The benchmark's relay: answers every POST and posts its body on to --target.
    #[command(hide = true)]
    BenchRelay {
        #[arg(long, value_name = "ADDR")]
        listen: String,
        #[arg(long, value_name = "URL")]
        target: String,
        /// Sign each post as Switchboard signs a delivery.
        #[arg(long)]
        sign: bool,
    },
    /// Send a provider request to a running Switchboard, signed as the provider signs it.
    #[command(subcommand)]
    Simulate(Simulate),
}

#[derive(Subcommand)]
enum Simulate {
    /// An inbound SMS (or MMS with --media) from Twilio's "A message comes in" webhook.
    TwilioSms(switchboard::simulate::SimulatedSms),
    /// A mail by one of the e-mail routes (raw MIME, Mailgun, SendGrid, Postmark), signed or
    /// authenticated as that service does it.
    Email(switchboard::simulate::email::SimulatedEmail),
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
    let load = || Config::load(cli.config.as_deref());
    match cli.command {
        Command::Bench {
            messages,
            concurrency,
            rate,
            database_url,
            server_env,
            slow_ms,
            server_wrapper,
            hanging_webhooks,
        } => {
            let server_env = server_env
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .ok_or_else(|| anyhow::anyhow!("--server-env wants KEY=VALUE, got `{kv}`"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let options = switchboard::bench::BenchOptions {
                messages: messages.unwrap_or(if hanging_webhooks.is_some() {
                    1_000
                } else {
                    20_000
                }),
                concurrency,
                rate,
                database_url,
                server_env,
                slow_ms,
                server_wrapper: server_wrapper
                    .map(|w| w.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default(),
            };
            if let Some(hanging) = hanging_webhooks {
                let report = switchboard::bench::run_hanging(options, hanging).await?;
                println!("{}", switchboard::bench::hanging_table(&report));
                println!("{}", serde_json::to_string(&report)?);
                return Ok(());
            }
            let report = switchboard::bench::run(options).await?;
            println!("{}", switchboard::bench::table(&report));
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::BenchRelay {
            listen,
            target,
            sign,
        } => switchboard::bench::relay(&listen, target, sign).await,
        Command::ConfigDefaults => {
            print!("{}", switchboard::config::DEFAULTS_TOML);
            Ok(())
        }
        Command::Simulate(Simulate::TwilioSms(mut sms)) => {
            // Where the configured server listens, and the URL it checks signatures against.
            if sms.server.is_none() || sms.public_url.is_none() {
                let config = load()?;
                sms.server
                    .get_or_insert_with(|| switchboard::simulate::local_url(&config.listen));
                if sms.public_url.is_none() {
                    sms.public_url = config.public_url;
                }
            }
            let (status, text) = switchboard::simulate::twilio_sms(&sms).await?;
            println!("{status} {text}");
            anyhow::ensure!(
                (200..300).contains(&status),
                "Switchboard answered {status}"
            );
            Ok(())
        }
        Command::Simulate(Simulate::Email(mut mail)) => {
            if mail.server.is_none() {
                let config = load()?;
                mail.server = Some(if mail.via == switchboard::simulate::email::Via::Smtp {
                    let listen = anyhow::Context::context(
                        config.smtp_listen,
                        "--via smtp needs --server HOST:PORT, or smtp_listen in the configuration",
                    )?;
                    switchboard::simulate::local_addr(&listen)
                } else {
                    switchboard::simulate::local_url(&config.listen)
                });
            }
            let (status, text) = switchboard::simulate::email::email(&mail).await?;
            println!("{status} {text}");
            anyhow::ensure!(
                (200..300).contains(&status),
                "Switchboard answered {status}"
            );
            Ok(())
        }
        Command::Migrate { database_url } => {
            let mut config = load()?;
            config.database_url = database_url.or(config.database_url);
            switchboard::telemetry::init(&config.log)?;
            switchboard::startup::open_store(&config).await?;
            tracing::info!(
                database = %switchboard::config::redact_url(&config.database_url()),
                "migrations applied"
            );
            Ok(())
        }
        Command::Serve {
            listen,
            database_url,
            role,
        } => {
            let config = Config::load_with(
                cli.config.as_deref(),
                [
                    ("SWITCHBOARD_LISTEN", listen),
                    ("SWITCHBOARD_DATABASE_URL", database_url),
                    ("SWITCHBOARD_ROLE", role),
                ],
            )?;
            switchboard::telemetry::init(&config.log)?;
            raise_open_file_limit();
            Application::build(config).await?.run_until_stopped().await
        }
    }
}

/// Every connection, provider's or subscriber's, is a file descriptor, and many systems start a
/// service with a soft limit of 1,024. Raise the soft limit to the hard one, as Go's runtime
/// does, so the server runs out of descriptors only where the operator set the limit.
fn raise_open_file_limit() {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, _)) => match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(raised) if raised > soft => {
                tracing::info!(from = soft, to = raised, "raised the open-file limit")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, limit = soft, "could not raise the open-file limit")
            }
        },
        Err(e) => tracing::warn!(error = %e, "could not read the open-file limit"),
    }
}
