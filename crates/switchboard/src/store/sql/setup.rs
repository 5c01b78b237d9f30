//! Setup and health: the server's shared secrets, the store's storage faults and write probe,
//! wake-ups from other nodes, and the leases a previous run of an embedded store left behind.

macro_rules! sql_setup {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
        #[async_trait]
        impl $crate::store::Setup for $store {
            fn embedded(&self) -> bool {
                $hooks::EMBEDDED
            }

            fn work_notifications(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<()>> {
                $hooks::listen(&self.writer)
            }

            async fn secret(&self, name: &str) -> StoreResult<Option<String>> {
                Ok(sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.reader)
                    .await?)
            }

            async fn put_secret_if_absent(&self, name: &str, value: &str) -> StoreResult<String> {

                self.faults.track(async {
                sqlx::query(
                    "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(value)
                .execute(&self.writer)
                .await?;
                Ok(sqlx::query_scalar("SELECT value FROM secrets WHERE name = $1")
                    .bind(name)
                    .fetch_one(&self.writer)
                    .await?)

                }).await

            }

            fn faults(&self) -> &$crate::store::StorageFaults {
                &self.faults
            }

            async fn health(&self) -> StoreResult<()> {
                if !self.faults.failing() {
                    sqlx::query("SELECT 1").execute(&self.reader).await?;
                    return Ok(());
                }
                // Writes have been failing: only a write tells whether they work again, and
                // one of the size of a group commit (a few bytes may fit where messages do
                // not). The padding is emptied again by a second transaction.
                let probe = async {
                    for pad in [Some(vec![0_u8; $crate::store::faults::PROBE_BYTES]), None] {
                        let mut tx = $hooks::begin_write(&self.writer).await?;
                        sqlx::query("UPDATE storage_probe SET checks = checks + 1, pad = $1 WHERE id = 1")
                            .bind(pad)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                    }
                    Ok(())
                }
                .await;
                self.faults.observe(&probe);
                probe
            }

            async fn release_leases(&self) -> StoreResult<u64> {

                self.faults.track(async {
                let done = sqlx::query(
                    "UPDATE deliveries SET lease_until = NULL
                     WHERE status = 'pending' AND lease_until IS NOT NULL",
                )
                .execute(&self.writer)
                .await?;
                Ok(done.rows_affected())

                }).await

            }
        }
    };
}

pub(crate) use sql_setup;
