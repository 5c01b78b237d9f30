//! The processes the benchmark starts: the server (this binary's `serve`, or under a wrapper
//! such as valgrind: then in a process group of its own, stopped gracefully so that the wrapper
//! can write its profile) and the relays; and their CPU time and peak memory.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{BenchOptions, ADMIN_TOKEN};

/// A child process of the benchmark (the server or the relay), stopped when dropped.
pub(super) struct Server {
    pub(super) child: std::process::Child,
    _dir: Option<tempfile::TempDir>,
    /// Run under a wrapper, in a process group of its own: stop the whole group with SIGTERM
    /// and wait (up to `GRACEFUL_STOP`) instead of killing the child at once.
    graceful: bool,
}

/// How long a server run under a wrapper may take to stop after SIGTERM.
const GRACEFUL_STOP: Duration = Duration::from_secs(120);

/// Send `signal` to the process group `group`; whether `kill` could do it.
fn signal_group(signal: &str, group: u32) -> bool {
    std::process::Command::new("kill")
        .args([signal, "--", &format!("-{group}")])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.graceful {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return;
        }
        // The wrapper's process group: the wrapper, the server and anything they started.
        let group = self.child.id();
        if signal_group("-TERM", group) {
            let deadline = Instant::now() + GRACEFUL_STOP;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "the server did not stop within {GRACEFUL_STOP:?} of SIGTERM; killing it"
                );
            }
        } else {
            eprintln!("could not send SIGTERM to the server (is `kill` installed?); killing it");
        }
        // Whatever of the group outlived the wrapper.
        if signal_group("-0", group) {
            signal_group("-KILL", group);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) async fn start_server(options: &BenchOptions, port: u16) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut command = match options.server_wrapper.split_first() {
        Some((program, args)) => {
            let mut command = std::process::Command::new(program);
            command.args(args).arg(&exe);
            // A group of its own, so that stopping it reaches the server under the wrapper.
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
            command
        }
        None => std::process::Command::new(&exe),
    };
    command
        .arg("serve")
        .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD_DATA_DIR", dir.path())
        .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SWITCHBOARD_ALLOW_PRIVATE_TARGETS", "true")
        .env("SWITCHBOARD_LOG", "error")
        .stdout(std::process::Stdio::null());
    if let Some(url) = &options.database_url {
        command.env("SWITCHBOARD_DATABASE_URL", url);
    }
    for (k, v) in &options.server_env {
        command.env(k, v);
    }
    let server = Server {
        child: command
            .spawn()
            .with_context(|| match options.server_wrapper.first() {
                Some(wrapper) => format!("starting the server under `{wrapper}`"),
                None => "starting the server".to_owned(),
            })?,
        _dir: Some(dir),
        graceful: !options.server_wrapper.is_empty(),
    };
    wait_ready(server, port).await
}

/// Start the relay (`switchboard bench-relay`) on `port`, posting on to `target`, signing
/// each post when `sign`.
pub(super) async fn start_relay(port: u16, target: &str, sign: bool) -> anyhow::Result<Server> {
    let relay = Server {
        child: std::process::Command::new(std::env::current_exe()?)
            .args(["bench-relay", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--target", target])
            .args(sign.then_some("--sign"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting the relay")?,
        _dir: None,
        graceful: false,
    };
    wait_ready(relay, port).await
}

/// The child once it answers `GET /readyz` on `port`.
async fn wait_ready(server: Server, port: u16) -> anyhow::Result<Server> {
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            if r.status().is_success() {
                return Ok(server);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the server did not become ready");
}

/// `(peak RSS in MiB, user+system CPU seconds)` of a process, from /proc.
pub(super) fn process_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_kb = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let cpu = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 12)
        .map(|f| {
            let ticks: f64 =
                f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
            ticks / 100.0
        })
        .unwrap_or(0.0);
    (peak_kb / 1024.0, cpu)
}
