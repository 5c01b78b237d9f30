//! The project's shape, checked: nothing under `src/store/` names a provider (a channel is a
//! folder under `src/channels/`, and the store files what any channel produces), and no source
//! file of any crate (`crates/*/src`) is over 600 lines. Each checker also runs on a planted
//! mistake.

use std::path::{Path, PathBuf};

use crate::docs::{files_under, repo_root};

const MAX_LINES: usize = 600;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The providers: one folder each under `src/channels/`.
fn providers() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(src().join("channels"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
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

#[test]
fn the_store_names_no_provider() {
    let providers = providers();
    assert!(
        !providers.is_empty(),
        "no channel folder under src/channels"
    );
    let found = provider_mentions(&files_under(&src().join("store"), "rs"), &providers);
    assert!(
        found.is_empty(),
        "the store names a provider; key it by the fact's own provider instead:\n{}",
        found.join("\n")
    );

    // Planted: a store file that names the first provider is found.
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("calls.rs");
    let name = providers[0].to_uppercase();
    std::fs::write(
        &planted,
        format!("fn f() {{ merge(channels::{name}::PROVIDER) }}\n"),
    )
    .unwrap();
    assert_eq!(provider_mentions(&[planted], &providers).len(), 1);
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
