//! Locations and their channel accounts: an account per provider with its addresses, and the
//! account a provider request claims (by its call, by the address called, by account id).

macro_rules! sql_locations {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
    /// The account a provider request claims: by the call it belongs to (a call stays with
    /// the location it started at, and another account cannot sign for it), by the number
    /// called, else by account id when exactly one location uses it; and whether it was
    /// found by the number called (the only route the embedded store caches).
    async fn lookup_channel_account(
        reader: &sqlx::Pool<$db>,
        provider: &str,
        key: &RouteKey,
    ) -> StoreResult<Option<(ChannelAccount, bool)>> {
            const COLUMNS: &str = "SELECT a.location_id, a.account_id, a.secret, a.settings
                                   FROM channel_accounts a";
            let to_account = |r: $row| ChannelAccount {
                location_id: r.get("location_id"),
                account_id: r.get("account_id"),
                secret: r.get("secret"),
                settings: serde_json::from_str(r.get::<&str, _>("settings"))
                    .unwrap_or(serde_json::Value::Null),
            };
            // By the call the request belongs to, then by the number called.
            let joined = [
                (
                    "JOIN calls c ON c.location_id = a.location_id AND c.provider = a.provider
                     WHERE c.provider = $1 AND c.call_sid = $2",
                    &key.correlation_id,
                    false,
                ),
                (
                    "JOIN channel_addresses n
                       ON n.location_id = a.location_id AND n.provider = a.provider
                     WHERE n.provider = $1 AND n.address = $2",
                    &key.address,
                    true,
                ),
            ];
            for (join, value, by_address) in joined {
                let Some(value) = value else { continue };
                let row = sqlx::query(&format!("{COLUMNS} {join}"))
                    .bind(provider)
                    .bind(value)
                    .fetch_optional(reader)
                    .await?;
                if let Some(row) = row {
                    return Ok(Some((to_account(row), by_address)));
                }
            }
            if let Some(account_id) = &key.account_id {
                let mut rows = sqlx::query(&format!(
                    "{COLUMNS} WHERE a.provider = $1 AND a.account_id = $2 LIMIT 2"
                ))
                .bind(provider)
                .bind(account_id)
                .fetch_all(reader)
                .await?;
                if rows.len() == 1 {
                    return Ok(rows.pop().map(|row| (to_account(row), false)));
                }
            }
            Ok(None)
        }

        #[async_trait]
        impl $crate::store::Locations for $store {
            async fn create_location(&self, name: &str, now: i64) -> StoreResult<Location> {

                self.faults.track(async {
                let location = Location {
                    id: new_id(),
                    name: name.to_owned(),
                    created_at: now,
                };
                sqlx::query("INSERT INTO locations (id, name, created_at) VALUES ($1, $2, $3)")
                    .bind(&location.id)
                    .bind(&location.name)
                    .bind(now)
                    .execute(&self.writer)
                    .await?;
                Ok(location)

                }).await

            }

            async fn get_location(&self, id: &str) -> StoreResult<Option<Location>> {
                let row = sqlx::query("SELECT id, name, created_at FROM locations WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.reader)
                    .await?;
                Ok(row.map(|r| Location {
                    id: r.get("id"),
                    name: r.get("name"),
                    created_at: r.get("created_at"),
                }))
            }

            async fn list_locations(&self) -> StoreResult<Vec<Location>> {
                let rows = sqlx::query("SELECT id, name, created_at FROM locations ORDER BY created_at, id")
                    .fetch_all(&self.reader)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|r| Location {
                        id: r.get("id"),
                        name: r.get("name"),
                        created_at: r.get("created_at"),
                    })
                    .collect())
            }

            async fn get_channel_account(
                &self,
                location_id: &str,
                provider: &str,
            ) -> StoreResult<Option<(ChannelAccount, Vec<String>)>> {
                // One snapshot for the account and its addresses.
                let mut tx = self.reader.begin().await?;
                $hooks::snapshot(&mut *tx).await?;
                let Some(row) = sqlx::query(
                    "SELECT account_id, secret, settings FROM channel_accounts
                     WHERE location_id = $1 AND provider = $2",
                )
                .bind(location_id)
                .bind(provider)
                .fetch_optional(&mut *tx)
                .await?
                else {
                    return Ok(None);
                };
                let account = ChannelAccount {
                    location_id: location_id.to_owned(),
                    account_id: row.get("account_id"),
                    secret: row.get("secret"),
                    settings: serde_json::from_str(row.get::<&str, _>("settings"))
                        .unwrap_or(serde_json::Value::Null),
                };
                let addresses = sqlx::query_scalar(
                    "SELECT address FROM channel_addresses
                     WHERE location_id = $1 AND provider = $2 ORDER BY address",
                )
                .bind(location_id)
                .bind(provider)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some((account, addresses)))
            }

            async fn delete_channel_account(&self, location_id: &str, provider: &str) -> StoreResult<bool> {

                self.faults.track(async {
                let mut tx = $hooks::begin_write(&self.writer).await?;
                sqlx::query("DELETE FROM channel_addresses WHERE provider = $1 AND location_id = $2")
                    .bind(provider)
                    .bind(location_id)
                    .execute(&mut *tx)
                    .await?;
                let done = sqlx::query("DELETE FROM channel_accounts WHERE location_id = $1 AND provider = $2")
                    .bind(location_id)
                    .bind(provider)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                self.accounts.clear();
                Ok(done.rows_affected() > 0)

                }).await

            }

            async fn put_channel_account(
                &self,
                location_id: &str,
                input: &ChannelAccountInput,
                now: i64,
            ) -> StoreResult<()> {

                self.faults.track(async {
                let mut tx = $hooks::begin_write(&self.writer).await?;
                let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM locations WHERE id = $1")
                    .bind(location_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_none() {
                    return Err(StoreError::NotFound(format!("no location {location_id}")));
                }
                for address in &input.addresses {
                    let owner: Option<String> = sqlx::query_scalar(
                        "SELECT location_id FROM channel_addresses WHERE provider = $1 AND address = $2",
                    )
                    .bind(input.provider)
                    .bind(address)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(owner) = owner.filter(|o| o != location_id) {
                        return Err(StoreError::Conflict(format!(
                            "{address} already belongs to location {owner}"
                        )));
                    }
                }
                sqlx::query("DELETE FROM channel_addresses WHERE provider = $1 AND location_id = $2")
                    .bind(input.provider)
                    .bind(location_id)
                    .execute(&mut *tx)
                    .await?;
                for address in &input.addresses {
                    sqlx::query(
                        "INSERT INTO channel_addresses (provider, address, location_id) VALUES ($1, $2, $3)",
                    )
                    .bind(input.provider)
                    .bind(address)
                    .bind(location_id)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(
                    "INSERT INTO channel_accounts (location_id, provider, account_id, secret, settings, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (location_id, provider) DO UPDATE SET account_id = excluded.account_id,
                         secret = excluded.secret, settings = excluded.settings,
                         updated_at = excluded.updated_at",
                )
                .bind(location_id)
                .bind(input.provider)
                .bind(&input.account_id)
                .bind(&input.secret)
                .bind(input.settings.to_string())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                self.accounts.clear();
                Ok(())

                }).await

            }

            async fn find_channel_account(
                &self,
                provider: &str,
                key: &RouteKey,
            ) -> StoreResult<Option<ChannelAccount>> {
                if !$hooks::EMBEDDED {
                    let found = lookup_channel_account(&self.reader, provider, key).await?;
                    return Ok(found.map(|(account, _)| account));
                }
                let (hit, generation) = self.accounts.get(provider, key);
                if hit.is_some() {
                    return Ok(hit);
                }
                let found = lookup_channel_account(&self.reader, provider, key).await?;
                if let (Some((account, true)), Some(address)) = (&found, &key.address) {
                    self.accounts.put(provider, address, generation, account);
                }
                Ok(found.map(|(account, _)| account))
            }
        }
    };
}

pub(crate) use sql_locations;
