//! The data directory is readable by its owner only: the database holds auth tokens and
//! signing secrets, the attachments hold call recordings. Directories are 0700 and files
//! 0600 whatever the umask: created so, and set so at every start for what an older version
//! (or an operator's copy) left readable by others, each such file named in a warning.

use std::path::Path;

use anyhow::Context;

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

/// Create `dir` (and its parents) if needed; `dir` itself is 0700.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    restrict(dir, 0o700)
}

/// Create `path` empty with mode 0600 if it does not exist (SQLite then gives its journals the
/// database file's mode).
pub fn private_file(path: &Path) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    options.mode(0o600);
    options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok(())
}

/// Set `path` to `mode` if it allows more; a warning names it when others could read it.
fn restrict(path: &Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let current = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .permissions()
            .mode()
            & 0o777;
        if current & !mode != 0 {
            if current & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{current:o}"),
                    "readable by others: set to {mode:o}"
                );
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("restricting {}", path.display()))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Every directory and file under `dir` (the data directory) made the owner's only.
pub fn restrict_tree(dir: &Path) -> anyhow::Result<()> {
    restrict(dir, 0o700)?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            restrict_tree(&entry.path())?;
        } else if kind.is_file() {
            restrict(&entry.path(), 0o600)?;
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn what_others_could_read_is_restricted() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        private_dir(&data).unwrap();
        std::fs::create_dir(data.join("attachments")).unwrap();
        std::fs::write(data.join("attachments/a.mp3"), b"x").unwrap();
        std::fs::set_permissions(data.join("attachments"), PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::write(data.join("old.db"), b"x").unwrap();
        std::fs::set_permissions(data.join("old.db"), PermissionsExt::from_mode(0o644)).unwrap();
        private_file(&data.join("new.db")).unwrap();
        restrict_tree(&data).unwrap();
        let mode = |p: &str| {
            std::fs::metadata(data.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(""), 0o700);
        assert_eq!(mode("attachments"), 0o700);
        assert_eq!(mode("attachments/a.mp3"), 0o600);
        assert_eq!(mode("old.db"), 0o600);
        assert_eq!(mode("new.db"), 0o600);
    }
}
