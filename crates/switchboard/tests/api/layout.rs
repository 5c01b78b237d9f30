//! The project's shape, checked: nothing outside `src/channels/` (and the tools that play a
//! provider) names a provider (a channel is a folder under `src/channels/` and a line of the
//! registry; everything else takes the channels from it), and no source file of any crate
//! (`crates/*/src`) is over 600 lines. Each checker also runs on a planted mistake.

use std::path::{Path, PathBuf};

use crate::docs::{files_under, repo_root};

const MAX_LINES: usize = 600;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The names only a channel's folder may say: each registered channel's vendors
/// (`Provider::vendors`). Every folder under `src/channels/` is a registered channel.
fn providers() -> Vec<String> {
    let folders: Vec<String> = std::fs::read_dir(src().join("channels"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for folder in &folders {
        assert!(
            switchboard::channels::find(folder).is_some(),
            "src/channels/{folder} is not a channel of the registry"
        );
    }
    let mut names: Vec<String> = switchboard::channels::CHANNELS
        .iter()
        .flat_map(|c| c.vendors())
        .map(|v| v.to_string())
        .collect();
    names.sort();
    names
}

/// `path:line: text` for each line of `files` that names one of `providers` (any case).
fn provider_mentions(files: &[PathBuf], providers: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_lowercase();
            if providers.iter().any(|p| lower.contains(p.as_str())) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

/// The files of `files` over `MAX_LINES` lines, with their lengths.
fn long_files(files: &[PathBuf]) -> Vec<(PathBuf, usize)> {
    files
        .iter()
        .map(|f| {
            (
                f.clone(),
                std::fs::read_to_string(f).unwrap().lines().count(),
            )
        })
        .filter(|(_, lines)| *lines > MAX_LINES)
        .collect()
}

/// The source files outside `src/channels/` that may name a provider: the tools that play
/// one (the benchmark, `simulate`, the fuzz entry points) and the command line that runs them.
const TOOLS: [&str; 4] = ["bench", "simulate", "fuzzing.rs", "main.rs"];

/// Every source file outside `src/channels/` and the tools.
fn core_files() -> Vec<PathBuf> {
    let root = src();
    files_under(&root, "rs")
        .into_iter()
        .filter(|f| {
            let rel = f.strip_prefix(&root).unwrap();
            let first = rel.components().next().unwrap().as_os_str();
            first != "channels" && !TOOLS.iter().any(|t| first == *t)
        })
        .collect()
}

/// Outside `src/channels/` (and the tools) no code, comment or test names a provider: the
/// router, the configuration API, the OpenAPI document, the store and the metrics take every
/// channel from the registry.
#[test]
fn nothing_outside_the_channels_names_a_provider() {
    let providers = providers();
    assert!(
        providers.len() >= 5,
        "expected the vendors of the Twilio, e-mail and test channels: {providers:?}"
    );
    let files = core_files();
    assert!(
        files.iter().any(|f| f.ends_with("routes/mod.rs"))
            && files.iter().any(|f| f.ends_with("store/sql/filing.rs"))
            && !files.iter().any(|f| f.ends_with("channels/mod.rs")),
        "{files:?}"
    );
    let found = provider_mentions(&files, &providers);
    assert!(
        found.is_empty(),
        "code outside src/channels names a provider; take it from the registry \
         (channels::CHANNELS) or move it into the channel's folder:\n{}",
        found.join("\n")
    );

    // Planted: a `twilio` identifier in a store file and in a route file is found.
    let dir = tempfile::tempdir().unwrap();
    let mut planted = Vec::new();
    for (name, text) in [
        ("calls.rs", "fn f() { merge(channels::twilio::PROVIDER) }\n"),
        ("routes.rs", "use crate::channels::twilio::INBOUND_PATH;\n"),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        planted.push(file);
    }
    assert_eq!(provider_mentions(&planted, &providers).len(), 2);
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("crates"))
        .unwrap()
        .flatten()
    {
        if entry.path().join("src").is_dir() {
            files.extend(files_under(&entry.path().join("src"), "rs"));
        }
    }
    assert!(files.len() > 50, "only {} source files found", files.len());
    let long = long_files(&files);
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");

    // Planted: a file of 601 lines is found.
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("sql.rs");
    std::fs::write(&planted, "//\n".repeat(MAX_LINES + 1)).unwrap();
    assert_eq!(long_files(&[planted]).len(), 1);
}
