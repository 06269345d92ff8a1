//! The task store: Workers KV behind a few typed calls (layout in `crate::task::keys`).
//!
//! KV is eventually consistent across locations (a write can take up to a minute to be
//! seen elsewhere) and has no compare-and-swap, so two writers of one task can race; the
//! monotonic merge in `crate::task` makes any later report repair such a race. Every entry
//! expires after 30 days, with Kling's files.

use futures_util::future::join_all;
use serde::{de::DeserializeOwned, Serialize};
use worker::{Env, KvStore};

use crate::error::{code, ApiError};
use crate::task::{keys, CallbackTicket, TaskRecord, RECORD_TTL_SECS};
use crate::validate::Page;

/// The KV binding in `wrangler.toml`.
pub const BINDING: &str = "TASKS";

pub struct Store {
    kv: KvStore,
}

fn unavailable() -> ApiError {
    ApiError::new(503, code::UNAVAILABLE, "the task store (Workers KV) is unavailable; retry shortly")
}

impl Store {
    pub fn open(env: &Env) -> Result<Store, ApiError> {
        env.kv(BINDING)
            .map(|kv| Store { kv })
            .map_err(|_| ApiError::config(BINDING, "is not bound: add the KV namespace to wrangler.toml"))
    }

    async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ApiError> {
        let text = self.kv.get(key).text().await.map_err(|_| unavailable())?;
        // An entry this version cannot read is treated as absent rather than failing the call.
        Ok(text.and_then(|text| serde_json::from_str(&text).ok()))
    }

    async fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), ApiError> {
        let text = serde_json::to_string(value).map_err(|_| ApiError::internal("encoding a record"))?;
        // One retry: a transient KV error must not lose what Kling reported.
        for attempt in 0..2 {
            let put = self.kv.put(key, text.clone()).map_err(|_| unavailable())?;
            match put.expiration_ttl(RECORD_TTL_SECS).execute().await {
                Ok(()) => return Ok(()),
                Err(_) if attempt == 0 => continue,
                Err(_) => break,
            }
        }
        Err(unavailable())
    }

    pub async fn ticket(&self, token: &str) -> Result<Option<CallbackTicket>, ApiError> {
        self.get(&keys::ticket(token)).await
    }

    pub async fn put_ticket(&self, token: &str, ticket: &CallbackTicket) -> Result<(), ApiError> {
        self.put(&keys::ticket(token), ticket).await
    }

    pub async fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, ApiError> {
        self.get(&keys::task(task_id)).await
    }

    pub async fn put_task(&self, task_id: &str, record: &TaskRecord) -> Result<(), ApiError> {
        self.put(&keys::task(task_id), record).await
    }

    /// Records a new task's external id and its place in the tenant's list.
    pub async fn index_task(
        &self,
        task_id: &str,
        record: &TaskRecord,
        external_task_id: Option<&str>,
    ) -> Result<(), ApiError> {
        self.put(&keys::index(&record.tenant, record.created_at, task_id), &"").await?;
        if let Some(external) = external_task_id {
            self.put(&keys::external(&record.tenant, external), &task_id).await?;
        }
        Ok(())
    }

    /// The task an id names for this tenant: a task id, or one of the tenant's external ids.
    /// Another tenant's task is `None`, exactly like a task that does not exist.
    pub async fn find_for_tenant(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(String, TaskRecord)>, ApiError> {
        if let Some(record) = self.task(id).await? {
            if record.tenant == tenant {
                return Ok(Some((id.to_owned(), record)));
            }
        }
        let Some(task_id) = self.get::<String>(&keys::external(tenant, id)).await? else {
            return Ok(None);
        };
        Ok(self
            .task(&task_id)
            .await?
            .filter(|record| record.tenant == tenant)
            .map(|record| (task_id, record)))
    }

    /// One page of the tenant's tasks, newest first.
    pub async fn page(&self, tenant: &str, page: Page) -> Result<Vec<TaskRecord>, ApiError> {
        let skip = (page.num as usize - 1) * page.size as usize;
        let mut ids = Vec::with_capacity(page.size as usize);
        let mut seen = 0usize;
        let mut cursor: Option<String> = None;
        loop {
            let mut list = self.kv.list().prefix(keys::index_prefix(tenant));
            if let Some(cursor) = cursor.take() {
                list = list.cursor(cursor);
            }
            let listed = list.execute().await.map_err(|_| unavailable())?;
            for key in &listed.keys {
                if seen >= skip && ids.len() < page.size as usize {
                    if let Some(id) = keys::task_id_of_index(&key.name) {
                        ids.push(id.to_owned());
                    }
                }
                seen += 1;
            }
            if ids.len() >= page.size as usize || listed.list_complete {
                break;
            }
            match listed.cursor {
                Some(next) if !next.is_empty() => cursor = Some(next),
                _ => break,
            }
        }
        let records = join_all(ids.iter().map(|id| self.task(id))).await;
        let mut tasks = Vec::with_capacity(records.len());
        for record in records {
            if let Some(record) = record? {
                if record.tenant == tenant {
                    tasks.push(record);
                }
            }
        }
        Ok(tasks)
    }
}
