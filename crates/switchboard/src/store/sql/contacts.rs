//! Contacts and conversations: found by any verified identity or created, one conversation per
//! contact, rows created in a fixed order so two writers never wait on each other in opposite
//! orders.

macro_rules! sql_contacts {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
        /// Who sent one message: its verified identities (the channel's own first) and the name
        /// a new contact gets.
        struct Sender<'a> {
            identities: Vec<(&'a str, &'a str)>,
            name: Option<&'a str>,
        }

        /// The contact that owns each of `identities` (kind, value), where one does.
        async fn identity_owners(
            tx: &mut Transaction<'_, $db>,
            location_id: &str,
            identities: &[(&str, &str)],
            owners: &mut HashMap<(String, String), String>,
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
                let fixed = [("location_id", location_id), ("kind", kind)];
                for (value, contact) in probe_ids(
                    tx,
                    "contact_identities",
                    "contact_id",
                    &fixed,
                    "value",
                    &values,
                )
                .await?
                {
                    owners.insert((kind.to_owned(), value), contact);
                }
            }
            Ok(())
        }

        /// The contact of each sender, in order: the one that owns the first of its verified
        /// identities that any contact owns, else a new one (with the name given). The
        /// identities it did not have yet are added to it, unless another contact has them
        /// (contacts are never merged). Rows are written in id order, so two writers never wait
        /// on each other in opposite orders; an identity another transaction took since it was
        /// looked up is that transaction's contact, and a contact created here that got none of
        /// its identities is given up for it.
        async fn contacts_of(
            tx: &mut Transaction<'_, $db>,
            location_id: &str,
            senders: &[Sender<'_>],
            now: i64,
        ) -> StoreResult<Vec<String>> {
            let key = |(kind, value): (&str, &str)| (kind.to_owned(), value.to_owned());
            let mut all: Vec<(&str, &str)> = senders
                .iter()
                .flat_map(|s| s.identities.iter().copied())
                .collect();
            all.sort_unstable();
            all.dedup();
            let mut owners = HashMap::with_capacity(all.len());
            identity_owners(tx, location_id, &all, &mut owners).await?;

            let mut chosen = Vec::with_capacity(senders.len());
            let mut new_contacts: Vec<(String, Option<&str>)> = Vec::new();
            let mut new_identities: Vec<(&str, &str, String)> = Vec::new();
            for sender in senders {
                let found = sender
                    .identities
                    .iter()
                    .find_map(|i| owners.get(&key(*i)).cloned());
                let contact = found.unwrap_or_else(|| {
                    let id = new_id();
                    new_contacts.push((id.clone(), sender.name));
                    id
                });
                for i in &sender.identities {
                    owners.entry(key(*i)).or_insert_with(|| {
                        new_identities.push((i.0, i.1, contact.clone()));
                        contact.clone()
                    });
                }
                chosen.push(contact);
            }
            if new_identities.is_empty() {
                return Ok(chosen);
            }

            new_contacts.sort_unstable();
            for chunk in chunks(&new_contacts, rows_per_statement(6, 0)) {
                // The contact's own identity columns (unique per location) hold its id: it is
                // found through contact_identities.
                let sql = insert_text(
                    "contacts",
                    "id, location_id, identity_kind, identity, name, created_at",
                    chunk.len(),
                    "",
                );
                let mut query = sqlx::query(&sql);
                for (id, name) in chunk {
                    query = query
                        .bind(id.as_str())
                        .bind(location_id)
                        .bind("contact")
                        .bind(id.as_str())
                        .bind(*name)
                        .bind(now);
                }
                query.execute(&mut **tx).await?;
            }
            new_identities.sort_unstable();
            let mut inserted: HashSet<(String, String)> =
                HashSet::with_capacity(new_identities.len());
            for chunk in chunks(&new_identities, rows_per_statement(5, 0)) {
                let sql = insert_text(
                    "contact_identities",
                    "location_id, kind, value, contact_id, created_at",
                    chunk.len(),
                    "ON CONFLICT (location_id, kind, value) DO NOTHING RETURNING kind, value",
                );
                let mut query = sqlx::query(&sql);
                for (kind, value, contact) in chunk {
                    query = query
                        .bind(location_id)
                        .bind(*kind)
                        .bind(*value)
                        .bind(contact.as_str())
                        .bind(now);
                }
                for row in query.fetch_all(&mut **tx).await? {
                    inserted.insert((row.get(0), row.get(1)));
                }
            }
            let lost: Vec<(&str, &str)> = new_identities
                .iter()
                .filter(|(kind, value, _)| !inserted.contains(&key((*kind, *value))))
                .map(|(kind, value, _)| (*kind, *value))
                .collect();
            if lost.is_empty() {
                return Ok(chosen);
            }
            // Taken meanwhile by another node's transaction, committed since.
            let mut taken = HashMap::with_capacity(lost.len());
            identity_owners(tx, location_id, &lost, &mut taken).await?;
            let kept: HashSet<&str> = new_identities
                .iter()
                .filter(|(kind, value, _)| inserted.contains(&key((*kind, *value))))
                .map(|(_, _, contact)| contact.as_str())
                .collect();
            let mut instead: HashMap<String, String> = HashMap::new();
            for (id, _) in &new_contacts {
                if kept.contains(id.as_str()) {
                    continue;
                }
                let other = new_identities
                    .iter()
                    .filter(|(_, _, contact)| contact == id)
                    .find_map(|(kind, value, _)| taken.get(&key((*kind, *value))))
                    .ok_or_else(|| {
                        StoreError::Internal(anyhow::anyhow!(
                            "a contact identity was neither stored nor found"
                        ))
                    })?;
                sqlx::query("DELETE FROM contacts WHERE id = $1")
                    .bind(id.as_str())
                    .execute(&mut **tx)
                    .await?;
                instead.insert(id.clone(), other.clone());
            }
            for contact in &mut chosen {
                if let Some(other) = instead.get(contact.as_str()) {
                    *contact = other.clone();
                }
            }
            Ok(chosen)
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
                    probe_ids(tx, "conversations", "id", &fixed, "contact_id", contact_ids).await?,
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
