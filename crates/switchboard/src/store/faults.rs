//! Storage faults: which database errors mean "the store cannot write now" (a full disk, a
//! lock held too long, an I/O error, a database that is down), and the store's record of
//! them. Such an error is answered 503 with `Retry-After`, never taken for a commit; it is
//! counted by kind, and logged once when an episode starts and once when it ends, not once
//! per request. A group commit or a readiness probe that succeeds ends the episode.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The size of the write `/readyz` makes while writes are failing, about what a group commit
/// of provider requests writes.
pub const PROBE_BYTES: usize = 256 * 1024;

/// What kind of fault made a write fail. Labels of the failure metric; never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// No space left (SQLite `SQLITE_FULL`, PostgreSQL class 53100).
    DiskFull,
    /// The database was locked by another connection longer than the busy timeout.
    Locked,
    /// An I/O error reading or writing the database files.
    Io,
    /// The database (or its directory) is read-only, or a standby.
    ReadOnly,
    /// The database server cannot be reached, or closed the connection.
    Connection,
    /// The database ran out of memory or another resource.
    Resources,
}

impl FaultKind {
    pub const ALL: [FaultKind; 6] = [
        FaultKind::DiskFull,
        FaultKind::Locked,
        FaultKind::Io,
        FaultKind::ReadOnly,
        FaultKind::Connection,
        FaultKind::Resources,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::DiskFull => "disk_full",
            FaultKind::Locked => "locked",
            FaultKind::Io => "io",
            FaultKind::ReadOnly => "read_only",
            FaultKind::Connection => "connection",
            FaultKind::Resources => "resources",
        }
    }

    /// What an operator reads in an answer or the log.
    pub fn describe(self) -> &'static str {
        match self {
            FaultKind::DiskFull => "the disk is full",
            FaultKind::Locked => "the database is locked by another connection",
            FaultKind::Io => "the database files cannot be read or written",
            FaultKind::ReadOnly => "the database is read-only",
            FaultKind::Connection => "the database cannot be reached",
            FaultKind::Resources => "the database is out of memory or resources",
        }
    }

    /// The fault a database error stands for, if it is one (and not, say, a constraint that
    /// a bad request broke or a bug).
    pub fn of(error: &sqlx::Error) -> Option<FaultKind> {
        match error {
            sqlx::Error::Database(db) => {
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    sqlite_fault(db.code()?.parse().ok()?)
                } else {
                    postgres_fault(&db.code()?)
                }
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed => Some(FaultKind::Connection),
            sqlx::Error::WorkerCrashed => Some(FaultKind::Io),
            _ => None,
        }
    }
}

/// SQLite's primary result codes (the low byte of an extended code).
fn sqlite_fault(code: i32) -> Option<FaultKind> {
    match code & 0xff {
        5 | 6 => Some(FaultKind::Locked), // SQLITE_BUSY, SQLITE_LOCKED
        7 => Some(FaultKind::Resources),  // SQLITE_NOMEM
        8 => Some(FaultKind::ReadOnly),   // SQLITE_READONLY
        10 | 14 => Some(FaultKind::Io),   // SQLITE_IOERR, SQLITE_CANTOPEN
        13 => Some(FaultKind::DiskFull),  // SQLITE_FULL
        _ => None,
    }
}

/// PostgreSQL's SQLSTATE classes that mean the server cannot take the write now.
fn postgres_fault(code: &str) -> Option<FaultKind> {
    match code {
        "53100" => Some(FaultKind::DiskFull),
        "25006" => Some(FaultKind::ReadOnly),
        "55P03" => Some(FaultKind::Locked),
        "58030" => Some(FaultKind::Io),
        c if c.starts_with("53") => Some(FaultKind::Resources),
        c if c.starts_with("08") || c.starts_with("57P") => Some(FaultKind::Connection),
        _ => None,
    }
}

/// A write the store could not make because of a fault, with the database's own error.
#[derive(Debug, thiserror::Error)]
#[error("storage unavailable ({}): {source:#}", kind.describe())]
pub struct StorageFault {
    pub kind: FaultKind,
    pub source: anyhow::Error,
}

impl StorageFault {
    /// The same fault, for another write that met it (each waiter gets its own answer).
    pub fn for_another(&self) -> StorageFault {
        StorageFault {
            kind: self.kind,
            source: anyhow::anyhow!("{:#}", self.source),
        }
    }
}

/// The store's faults: counted by kind, and whether writes are failing now.
#[derive(Default)]
pub struct StorageFaults {
    /// Read without a lock on every write; the episode's details are behind the mutex.
    failing: AtomicBool,
    episode: Mutex<Option<Episode>>,
    counts: [AtomicU64; FaultKind::ALL.len()],
}

struct Episode {
    started: Instant,
    kind: FaultKind,
    failures: u64,
}

impl StorageFaults {
    /// Whether the last write failed with a fault and none has succeeded since.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Faults of each kind since the start.
    pub fn counts(&self) -> impl Iterator<Item = (FaultKind, u64)> + '_ {
        FaultKind::ALL
            .iter()
            .zip(&self.counts)
            .map(|(kind, n)| (*kind, n.load(Ordering::Relaxed)))
    }

    /// A write failed with `fault`: counted; logged when it starts an episode.
    pub fn failed(&self, fault: &StorageFault) {
        let index = FaultKind::ALL
            .iter()
            .position(|k| *k == fault.kind)
            .expect("every kind is in ALL");
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        let mut episode = self.episode.lock().expect("storage faults lock");
        match episode.as_mut() {
            Some(e) => e.failures += 1,
            None => {
                tracing::error!(
                    kind = fault.kind.as_str(),
                    error = format!("{:#}", fault.source),
                    "storage failing: {}; requests are answered 503 until a write succeeds",
                    fault.kind.describe()
                );
                *episode = Some(Episode {
                    started: Instant::now(),
                    kind: fault.kind,
                    failures: 1,
                });
                self.failing.store(true, Ordering::Relaxed);
            }
        }
    }

    /// A write succeeded: an episode of failures, if any, is over.
    pub fn succeeded(&self) {
        if !self.failing() {
            return;
        }
        let mut episode = self.episode.lock().expect("storage faults lock");
        if let Some(e) = episode.take() {
            tracing::warn!(
                kind = e.kind.as_str(),
                failures = e.failures,
                lasted_ms = e.started.elapsed().as_millis() as u64,
                "storage recovered: writes succeed again"
            );
        }
        self.failing.store(false, Ordering::Relaxed);
    }

    /// Note the outcome of a write that is known to have written when it succeeds (a group
    /// commit, the readiness probe): a success ends an episode.
    pub fn observe<T>(&self, result: &super::StoreResult<T>) {
        match result {
            Ok(_) => self.succeeded(),
            Err(super::StoreError::Unavailable(fault)) => self.failed(fault),
            Err(_) => {}
        }
    }

    /// Run a store call that may write and note a fault it meets. Its success ends nothing: it
    /// may have found nothing to write and written nothing.
    pub async fn track<T>(
        &self,
        write: impl std::future::Future<Output = super::StoreResult<T>>,
    ) -> super::StoreResult<T> {
        let result = write.await;
        if let Err(super::StoreError::Unavailable(fault)) = &result {
            self.failed(fault);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_and_postgres_codes_map_to_kinds() {
        assert_eq!(sqlite_fault(13), Some(FaultKind::DiskFull));
        assert_eq!(sqlite_fault(5), Some(FaultKind::Locked));
        // SQLITE_BUSY_SNAPSHOT, SQLITE_IOERR_WRITE: extended codes keep their primary.
        assert_eq!(sqlite_fault(517), Some(FaultKind::Locked));
        assert_eq!(sqlite_fault(778), Some(FaultKind::Io));
        // A constraint (SQLITE_CONSTRAINT_UNIQUE) is not a fault.
        assert_eq!(sqlite_fault(2067), None);
        assert_eq!(postgres_fault("53100"), Some(FaultKind::DiskFull));
        assert_eq!(postgres_fault("57P01"), Some(FaultKind::Connection));
        assert_eq!(postgres_fault("08006"), Some(FaultKind::Connection));
        assert_eq!(postgres_fault("23505"), None);
        assert_eq!(
            FaultKind::of(&sqlx::Error::PoolTimedOut),
            Some(FaultKind::Connection)
        );
        assert_eq!(FaultKind::of(&sqlx::Error::RowNotFound), None);
    }

    #[test]
    fn an_episode_starts_with_a_fault_and_ends_with_a_write() {
        let faults = StorageFaults::default();
        let fault = || StorageFault {
            kind: FaultKind::DiskFull,
            source: anyhow::anyhow!("database or disk is full"),
        };
        assert!(!faults.failing());
        faults.failed(&fault());
        faults.failed(&fault());
        assert!(faults.failing());
        faults.succeeded();
        assert!(!faults.failing());
        let counts: Vec<_> = faults.counts().collect();
        assert_eq!(counts[0], (FaultKind::DiskFull, 2));
        assert!(counts[1..].iter().all(|(_, n)| *n == 0));
    }
}
