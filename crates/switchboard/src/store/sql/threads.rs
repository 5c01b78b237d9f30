//! Mail threads: each stored mail's Message-ID with the thread it was filed in, per location.
//! A mail joins the thread of the first id of its `References` / `In-Reply-To` chain that is
//! stored (any stored id of the chain leads to its thread), else the thread a stored mail
//! already gave one of those ids (a reply that came before its parent), else the chain's
//! first id; a mail that replies to nothing starts its own. A Message-ID stored before (with
//! other content: the same content is the same message and never gets here) marks the mail
//! `messageIdReused`.

macro_rules! sql_threads {
    ($store:ident, $db:ty, $row:ty, $hooks:ident) => {
        /// Ids of a chain looked up at most: the root comes first in `References`, and a
        /// chain of hundreds costs no more than this.
        const MAX_CHAIN: usize = 100;

        /// The thread of a mail being filed as `message_id` in `conversation_id`, recorded for
        /// the mails after it; and whether it is over the conversation's flood cap (`cap`
        /// mails in the minute before it, suppressed ones included).
        async fn file_in_thread(
            tx: &mut Transaction<'_, $db>,
            location_id: &str,
            message_id: &str,
            conversation_id: &str,
            email: &$crate::domain::EmailDetails,
            now: i64,
            cap: Option<u32>,
        ) -> StoreResult<$crate::event::Thread> {
            let suppressed = match cap {
                Some(cap) => {
                    let recent: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM email_messages
                         WHERE conversation_id = $1 AND created_at > $2",
                    )
                    .bind(conversation_id)
                    .bind(now - 60_000)
                    .fetch_one(&mut **tx)
                    .await?;
                    recent >= i64::from(cap)
                }
                None => false,
            };
            let own = email.message_id.as_str();
            let mut chain: Vec<&str> = email
                .references
                .iter()
                .take(MAX_CHAIN)
                .map(String::as_str)
                .filter(|id| *id != own)
                .collect();
            chain.push(own);
            let by_id = TEXTS.get("by_id", "email_messages", chain.len(), || {
                $hooks::positional(format!(
                    "SELECT email_message_id, thread_id FROM email_messages
                     WHERE location_id = $1 AND email_message_id IN ({})",
                    placeholders(chain.len(), 2)
                ))
            });
            let mut query = sqlx::query(&by_id).bind(location_id);
            for id in &chain {
                query = query.bind(*id);
            }
            let stored: HashMap<String, String> = query
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let message_id_reused = stored.contains_key(own);
            let replied_to = &chain[..chain.len() - 1];
            let mut thread_id = replied_to.iter().find_map(|id| stored.get(*id)).cloned();
            if thread_id.is_none() {
                let by_thread = TEXTS.get("by_thread", "email_messages", chain.len(), || {
                    $hooks::positional(format!(
                        "SELECT thread_id FROM email_messages
                         WHERE location_id = $1 AND thread_id IN ({}) LIMIT 1",
                        placeholders(chain.len(), 2)
                    ))
                });
                let mut query = sqlx::query_scalar::<_, String>(&by_thread).bind(location_id);
                for id in &chain {
                    query = query.bind(*id);
                }
                thread_id = query.fetch_optional(&mut **tx).await?;
            }
            let thread_id = thread_id.unwrap_or_else(|| email.thread_root().to_owned());
            sqlx::query(
                "INSERT INTO email_messages
                   (location_id, email_message_id, message_id, thread_id, created_at, conversation_id)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(location_id)
            .bind(own)
            .bind(message_id)
            .bind(&thread_id)
            .bind(now)
            .bind(conversation_id)
            .execute(&mut **tx)
            .await?;
            Ok($crate::event::Thread {
                thread_id,
                message_id_reused,
                suppressed,
            })
        }
    };
}

pub(crate) use sql_threads;
