//! The README's quick start, run as pasted against the built binary: its first block (the
//! server) in the background, its other blocks in one shell as typed in a second terminal, and
//! the event the sample subscriber prints checked. Only the two port numbers are swapped for
//! free ones, and `cargo run --release --` stands for the binary this suite built.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::docs::repo_root;
use crate::helpers::{free_port, skip};

/// The fenced blocks of `language` in `text`, in order.
fn fenced_blocks(text: &str, language: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match current.as_mut() {
            None if line.trim() == format!("```{language}") => current = Some(String::new()),
            Some(_) if line.trim() == "```" => blocks.push(current.take().unwrap()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// The text of the README section under `## {title}`, up to the next `## `.
fn section<'a>(readme: &'a str, title: &str) -> &'a str {
    let heading = format!("\n## {title}\n");
    let start = readme
        .find(&heading)
        .unwrap_or_else(|| panic!("README has no section {title:?}"))
        + heading.len();
    let end = readme[start..]
        .find("\n## ")
        .map_or(readme.len(), |e| start + e);
    &readme[start..end]
}

/// Fails when `text` no longer holds `what`, so that a README that changes its ports or its
/// commands makes this test say so instead of testing something else.
fn require(text: &str, what: &str) {
    assert!(
        text.contains(what),
        "the quick start no longer holds {what:?}"
    );
}

/// A shell started in a process group of its own, killed (with everything it started) when
/// dropped.
struct Shell(Child);

impl Shell {
    fn start(script: &str, dir: &Path, env: &[(&str, String)], output: &Path) -> Shell {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(output).unwrap();
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("starting bash");
        Shell(child)
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_two_commands_are_the_ones_ci_runs() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = fenced_blocks(section(&readme, "The two commands"), "sh");
    assert_eq!(
        blocks,
        ["cargo run --release -- serve\n", "cargo test --workspace\n"]
    );
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(
        ci.lines()
            .any(|l| l.trim_start().starts_with("cargo test --workspace")),
        ".ci/run does not run the README's test command"
    );
}

#[test]
fn the_quick_start_runs_as_pasted() {
    let missing: Vec<&str> = ["bash", "curl", "python3"]
        .into_iter()
        .filter(|p| !have(p))
        .collect();
    if !missing.is_empty() {
        skip(&format!("the README's quick start needs {missing:?}"));
        return;
    }
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let blocks = fenced_blocks(section(&readme, "Quick start"), "sh");
    assert!(
        blocks.len() >= 2,
        "expected the server and the second terminal"
    );
    let (server_port, subscriber_port) = (free_port(), free_port());
    let ports = |block: &str| {
        let block = block.replace("127.0.0.1:8080", &format!("127.0.0.1:{server_port}"));
        let block = block.replace("127.0.0.1:9000", &format!("127.0.0.1:{subscriber_port}"));
        block.replace(
            "\"127.0.0.1\", 9000)",
            &format!("\"127.0.0.1\", {subscriber_port})"),
        )
    };
    // Then the e-mail channel's quick start, in the same terminal (it builds on LOC and auth).
    let email_doc = std::fs::read_to_string(repo_root().join("docs/channels/email.md")).unwrap();
    let email_blocks = fenced_blocks(section(&email_doc, "Quick start"), "sh");
    assert_eq!(email_blocks.len(), 1, "the e-mail quick start is one block");
    let (server_block, terminal) = (&blocks[0], blocks[1..].concat() + &email_blocks[0]);
    require(server_block, "cargo run --release -- serve");
    for expected in ["127.0.0.1:8080", "127.0.0.1:9000", "\"127.0.0.1\", 9000)"] {
        require(&terminal, expected);
    }
    // `cargo run --release -- ARGS` runs the binary this suite built, with ARGS.
    let prelude = r#"cargo() {
  if [ "$1 $2 $3" = "run --release --" ]; then shift 3; "$SWITCHBOARD_BIN" "$@"
  else echo "the quick start ran cargo $*" >&2; return 127; fi
}
"#;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("HOME", dir.path().display().to_string()),
        (
            "SWITCHBOARD_BIN",
            env!("CARGO_BIN_EXE_switchboard").to_owned(),
        ),
        // The server's default address, moved with the port the blocks now name.
        ("SWITCHBOARD_LISTEN", format!("127.0.0.1:{server_port}")),
    ];
    let server_log = dir.path().join("server.out");
    let _server = Shell::start(
        &format!("{prelude}{}", ports(server_block)),
        dir.path(),
        &env,
        &server_log,
    );
    wait_until(Duration::from_secs(60), "the server to start", || {
        dir.path().join("switchboard-data/admin-token").exists()
            && std::net::TcpStream::connect(("127.0.0.1", server_port)).is_ok()
    });

    // The second terminal: its commands run to the end, the subscriber stays in the
    // background (killed with the shell's group when the test ends).
    let terminal_log = dir.path().join("terminal.out");
    let mut terminal_shell = Shell::start(
        &format!("{prelude}{}", ports(&terminal)),
        dir.path(),
        &env,
        &terminal_log,
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = terminal_shell.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the second terminal's commands did not finish:\n{}",
            std::fs::read_to_string(&terminal_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let printed = || std::fs::read_to_string(&terminal_log).unwrap_or_default();
    assert!(
        status.success(),
        "the second terminal's commands failed ({status}):\n{}\nserver:\n{}",
        printed(),
        std::fs::read_to_string(&server_log).unwrap_or_default()
    );

    let mut event = None;
    wait_until(
        Duration::from_secs(30),
        "the subscriber to print the event",
        || {
            // The SMS's: the e-mail quick start's mails may be delivered before it (other
            // contacts, other conversations: no order between them).
            event = printed_events(&terminal_log, "SMS").into_iter().next();
            event.is_some()
        },
    );
    let event = event.unwrap();
    let printed = printed();
    assert_eq!(event["type"], "InboundMessage", "{printed}");
    assert_eq!(event["body"], "Is the shop open today?");
    assert_eq!(event["from"], "+12125550199");
    assert_eq!(event["to"], "+14155550100");
    assert_eq!(event["messageType"], "SMS");
    assert_eq!(event["messageTypeId"], 2);
    let webhook_id = event["webhookId"].as_str().unwrap();
    assert!(
        printed.contains(&format!("webhook-id: {webhook_id}")),
        "the subscriber printed no webhook-id header matching the event:\n{printed}"
    );
    // `simulate` printed the provider's answer: 200 and empty TwiML.
    assert!(printed.lines().any(|l| l.starts_with("200 ")), "{printed}");

    // The e-mail quick start: one mail by each route, under one contact.
    let mut mails = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "the subscriber to print four mails",
        || {
            mails = printed_events(&terminal_log, "Email");
            mails.len() == 4
        },
    );
    let providers: Vec<&str> = mails
        .iter()
        .map(|m| m["provider"].as_str().unwrap())
        .collect();
    assert_eq!(providers.len(), 4);
    for via in ["raw", "mailgun", "sendgrid", "postmark"] {
        assert!(providers.contains(&via), "{providers:?}");
    }
    assert!(
        mails
            .iter()
            .all(|m| m["contactId"] == mails[0]["contactId"]),
        "{mails:#?}"
    );
    assert!(
        mails
            .iter()
            .all(|m| m["body"] == "<div>Is the shop open today?</div>"),
        "{mails:#?}"
    );
}

/// The events of `messageType` the subscriber printed.
fn printed_events(log: &Path, message_type: &str) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("{\"type\""))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["messageType"] == message_type)
        .collect()
}
