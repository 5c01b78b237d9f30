//! Contacts and conversations: found by identity or created, one conversation per contact,
//! rows created in a fixed order so two writers never wait on each other in opposite orders.

macro_rules! sql_contacts {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
        /// Contact ids by (identity kind, identity): found, or created with the name given.
        async fn contacts_of(
            tx: &mut Transaction<'_, $db>,
            location_id: &str,
            identities: &[(&str, &str, Option<&str>)],
            now: i64,
        ) -> StoreResult<HashMap<(String, String), String>> {
            async fn find(
                tx: &mut Transaction<'_, $db>,
                location_id: &str,
                identities: &[(&str, &str, Option<&str>)],
                found: &mut HashMap<(String, String), String>,
            ) -> StoreResult<()> {
                let mut kinds: Vec<&str> = identities.iter().map(|i| i.0).collect();
                kinds.sort_unstable();
                kinds.dedup();
                for kind in kinds {
                    let values: Vec<&str> = identities
                        .iter()
                        .filter(|i| i.0 == kind)
                        .map(|i| i.1)
                        .collect();
                    let fixed = [("location_id", location_id), ("identity_kind", kind)];
                    for (value, id) in
                        probe_ids(tx, "contacts", &fixed, "identity", &values).await?
                    {
                        found.insert((kind.to_owned(), value), id);
                    }
                }
                Ok(())
            }
            let missing =
                |found: &HashMap<(String, String), String>| -> Vec<(&str, &str, Option<&str>)> {
                    identities
                        .iter()
                        .filter(|i| !found.contains_key(&(i.0.to_owned(), i.1.to_owned())))
                        .copied()
                        .collect()
                };
            let mut found = HashMap::with_capacity(identities.len());
            find(tx, location_id, identities, &mut found).await?;
            // Created in identity order, so two writers never wait on each other in opposite
            // orders.
            let mut new = missing(&found);
            new.sort_unstable_by_key(|i| (i.0, i.1));
            for chunk in chunks(&new, rows_per_statement(6, 0)) {
                let sql = insert_text(
                    "contacts",
                    "id, location_id, identity_kind, identity, name, created_at",
                    chunk.len(),
                    "ON CONFLICT (location_id, identity_kind, identity) DO NOTHING \
                     RETURNING identity_kind, identity, id",
                );
                let mut query = sqlx::query(&sql);
                for (kind, value, name) in chunk {
                    query = query
                        .bind(new_id())
                        .bind(location_id)
                        .bind(*kind)
                        .bind(*value)
                        .bind(*name)
                        .bind(now);
                }
                for row in query.fetch_all(&mut **tx).await? {
                    found.insert((row.get(0), row.get(1)), row.get(2));
                }
            }
            // Created meanwhile by another node's transaction, committed since.
            let raced = missing(&found);
            if !raced.is_empty() {
                find(tx, location_id, &raced, &mut found).await?;
            }
            Ok(found)
        }

        /// Conversation ids by contact id: one conversation per contact, created when there is
        /// none. Rows are created in contact order, so two writers never wait on each other
        /// in opposite orders.
        async fn conversations_of(
            tx: &mut Transaction<'_, $db>,
            location_id: &str,
            contact_ids: &[&str],
            now: i64,
        ) -> StoreResult<HashMap<String, String>> {
            async fn find(
                tx: &mut Transaction<'_, $db>,
                location_id: &str,
                contact_ids: &[&str],
                found: &mut HashMap<String, String>,
            ) -> StoreResult<()> {
                let fixed = [("location_id", location_id)];
                found.extend(
                    probe_ids(tx, "conversations", &fixed, "contact_id", contact_ids).await?,
                );
                Ok(())
            }
            let mut found = HashMap::with_capacity(contact_ids.len());
            find(tx, location_id, contact_ids, &mut found).await?;
            let mut new: Vec<&str> = contact_ids
                .iter()
                .copied()
                .filter(|c| !found.contains_key(*c))
                .collect();
            new.sort_unstable();
            for chunk in chunks(&new, rows_per_statement(4, 0)) {
                let sql = insert_text(
                    "conversations",
                    "id, location_id, contact_id, created_at",
                    chunk.len(),
                    "ON CONFLICT (location_id, contact_id) DO NOTHING RETURNING contact_id, id",
                );
                let mut query = sqlx::query(&sql);
                for contact_id in chunk {
                    query = query
                        .bind(new_id())
                        .bind(location_id)
                        .bind(*contact_id)
                        .bind(now);
                }
                for row in query.fetch_all(&mut **tx).await? {
                    found.insert(row.get(0), row.get(1));
                }
            }
            // Created meanwhile by another node's transaction, committed since.
            let raced: Vec<&str> = new
                .iter()
                .copied()
                .filter(|c| !found.contains_key(*c))
                .collect();
            if !raced.is_empty() {
                find(tx, location_id, &raced, &mut found).await?;
            }
            Ok(found)
        }
    };
}

pub(crate) use sql_contacts;
