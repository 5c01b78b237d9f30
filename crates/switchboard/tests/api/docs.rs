//! Checks that keep the documentation true: every relative link in the project's Markdown
//! resolves to a file (and a `#fragment` to a heading in it), and every key of the built-in
//! configuration is documented in `docs/configuration.md`. Each checker is also run on a
//! planted mistake, so a checker that finds nothing cannot pass unnoticed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The repository's root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Markdown files whose links are checked: the root pages and everything under `docs/`.
fn documentation_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "SECURITY.md"]
        .iter()
        .map(|name| root.join(name))
        .collect();
    files.extend(files_under(&root.join("docs"), "md"));
    files.sort();
    files
}

/// Every file under `dir` (its subfolders too) whose name ends in `.extension`, sorted.
pub fn files_under(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == extension) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The lines of a Markdown text outside fenced code blocks, with their line numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            lines.push((i + 1, line));
        }
    }
    lines
}

/// A line without its inline code spans (`` `…` ``), which may hold `](` without being links.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    for (i, part) in line.split('`').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        }
    }
    out
}

/// The targets of the inline links `[text](target)` on a line.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(start) = rest.find("](") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or("");
        targets.push(target.to_owned());
        rest = &after[end..];
    }
    targets
}

/// The anchor GitHub gives a heading: lower case, only letters, digits, spaces, `-` and `_`
/// kept, spaces turned into `-`.
pub fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a Markdown text's headings give (a repeated heading gets `-1`, `-2`, …).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = heading_anchor(&line[hashes..]);
        let mut anchor = base.clone();
        let mut n = 0;
        while found.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        found.insert(anchor);
    }
    found
}

/// Every relative link of `files` that does not resolve, as `file:line: target (why)`.
pub fn broken_links(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut broken = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let shown = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        for (number, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, fragment) = match target.split_once('#') {
                    Some((path, fragment)) => (path, Some(fragment)),
                    None => (target.as_str(), None),
                };
                let resolved = if path.is_empty() {
                    file.clone()
                } else {
                    file.parent().unwrap().join(path)
                };
                if !resolved.exists() {
                    broken.push(format!("{shown}:{number}: {target} (no such file)"));
                    continue;
                }
                let Some(fragment) = fragment else { continue };
                let headings = std::fs::read_to_string(&resolved)
                    .map(|t| anchors(&t))
                    .unwrap_or_default();
                if !headings.contains(fragment) {
                    broken.push(format!("{shown}:{number}: {target} (no such heading)"));
                }
            }
        }
    }
    broken
}

/// The keys of the built-in configuration: those set, and those shown commented out
/// (`# key = …`, and tables as `# [table]`, whose own lines are not keys).
pub fn default_keys(defaults: &str) -> BTreeSet<String> {
    let table: toml::Table = defaults.parse().expect("the built-in configuration parses");
    let mut keys: BTreeSet<String> = table.keys().cloned().collect();
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let mut in_table = false;
    for line in defaults.lines() {
        let Some(comment) = line.strip_prefix("# ") else {
            in_table = false;
            continue;
        };
        if let Some(name) = comment.strip_prefix('[').and_then(|c| c.strip_suffix(']')) {
            if is_name(name) {
                keys.insert(name.to_owned());
                in_table = true;
            }
            continue;
        }
        if let Some((name, _)) = comment.split_once(" = ") {
            if is_name(name) && !in_table {
                keys.insert(name.to_owned());
            }
        }
    }
    keys
}

/// The keys `doc` does not document: each must appear as `` `key` ``, and, unless it is a
/// table (TOML only), with its environment variable `SWITCHBOARD_<KEY>`.
pub fn undocumented_keys(defaults: &str, doc: &str) -> Vec<String> {
    let tables: BTreeSet<&str> = defaults
        .lines()
        .filter_map(|l| l.trim_start_matches("# ").strip_prefix('['))
        .filter_map(|l| l.strip_suffix(']'))
        .collect();
    default_keys(defaults)
        .into_iter()
        .filter(|key| {
            let variable = format!("`SWITCHBOARD_{}`", key.to_uppercase());
            !doc.contains(&format!("`{key}`"))
                || (!tables.contains(key.as_str()) && !doc.contains(&variable))
        })
        .collect()
}

#[test]
fn every_relative_link_resolves() {
    let root = repo_root();
    let files = documentation_files(&root);
    assert!(
        files.len() >= 10,
        "expected the root pages and docs/, found {files:?}"
    );
    let broken = broken_links(&root, &files);
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_check_finds_a_missing_file_and_a_missing_heading() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("docs")).unwrap();
    std::fs::write(
        dir.path().join("docs/page.md"),
        "# A page\n\n## Several nodes (PostgreSQL)\n\nText.\n\n## A page\n",
    )
    .unwrap();
    let readme = dir.path().join("README.md");
    std::fs::write(
        &readme,
        "# Title\n\n[fine](docs/page.md#several-nodes-postgresql), [also](docs/page.md#a-page-1), \
         [self](#title), [web](https://example.com/x), `[code](nowhere.md)`\n\n\
         [gone](docs/missing.md) and [wrong](docs/page.md#several-nodes)\n\n\
         ```\n[in a block](ignored.md)\n```\n",
    )
    .unwrap();
    let broken = broken_links(dir.path(), &[readme]);
    assert_eq!(
        broken,
        [
            "README.md:5: docs/missing.md (no such file)",
            "README.md:5: docs/page.md#several-nodes (no such heading)",
        ]
    );
}

#[test]
fn headings_get_the_anchors_github_gives_them() {
    assert_eq!(
        heading_anchor(" When storage fails, nothing is acknowledged"),
        "when-storage-fails-nothing-is-acknowledged"
    );
    assert_eq!(
        heading_anchor(" `sqlite_synchronous` and power loss"),
        "sqlite_synchronous-and-power-loss"
    );
    assert_eq!(
        heading_anchor(" What `cargo test --workspace` runs"),
        "what-cargo-test---workspace-runs"
    );
}

#[test]
fn every_configuration_key_is_documented() {
    let defaults = switchboard::config::DEFAULTS_TOML;
    let keys = default_keys(defaults);
    // Set, commented out, and a table: the scan must see all three kinds.
    for expected in ["listen", "database_url", "admin_token", "dns_overrides"] {
        assert!(keys.contains(expected), "{expected} not found in {keys:?}");
    }
    assert!(!keys.contains("twilio"), "a table's line taken for a key");
    let doc = std::fs::read_to_string(repo_root().join("docs/configuration.md")).unwrap();
    let missing = undocumented_keys(defaults, &doc);
    assert!(
        missing.is_empty(),
        "keys of config.default.toml missing from docs/configuration.md: {missing:?}"
    );
}

#[test]
fn the_key_check_finds_an_undocumented_key() {
    let defaults = switchboard::config::DEFAULTS_TOML;
    let doc = std::fs::read_to_string(repo_root().join("docs/configuration.md")).unwrap();
    let without = doc.replace("`retry_jitter`", "`retry jitter`");
    assert_eq!(undocumented_keys(defaults, &without), ["retry_jitter"]);
    let without_variable = doc.replace("`SWITCHBOARD_POLL_INTERVAL`", "`POLL_INTERVAL`");
    assert_eq!(
        undocumented_keys(defaults, &without_variable),
        ["poll_interval"]
    );
}
