//! The edge copy of finished tasks in Workers KV: written by the coordinator
//! (`crate::ports::ReadModel`), read by the edge to answer queries of finished tasks without
//! the coordinator or Kling.
//!
//! KV is eventually consistent between locations and caches reads (misses too) for up to a
//! minute, which suits what it holds: a finished task changes only if its webhook's outcome
//! does. A miss, or a copy that is not the caller's, falls back to the coordinator.

use worker::{console_log, Env, KvStore};

use crate::error::ApiError;
use crate::ports::{PublishedTasks, ReadModel};
use crate::record::{published_key, PublishedTask, RETENTION_MS};

/// The KV binding in `wrangler.toml`.
pub const BINDING: &str = "TASKS";

pub struct KvReadModel {
    kv: KvStore,
}

impl KvReadModel {
    pub fn open(env: &Env) -> Result<KvReadModel, ApiError> {
        env.kv(BINDING)
            .map(|kv| KvReadModel { kv })
            .map_err(|_| ApiError::config(BINDING, "is not bound: add the KV namespace to wrangler.toml"))
    }

    /// The edge copy of a task of this shard, if there is one.
    async fn read_published(&self, shard: &str, task_id: &str) -> Option<PublishedTask> {
        let text = self.kv.get(&published_key(shard, task_id)).text().await.ok()??;
        serde_json::from_str(&text).ok()
    }
}

/// The edge copies as the request path reads them: the binding is opened at the first read.
pub struct KvReader<'a> {
    pub env: &'a Env,
}

impl PublishedTasks for KvReader<'_> {
    async fn published(&self, shard: &str, task_id: &str) -> Option<PublishedTask> {
        KvReadModel::open(self.env).ok()?.read_published(shard, task_id).await
    }

    async fn legacy_task(&self, tenant: &str, id: &str) -> Option<serde_json::Value> {
        KvReadModel::open(self.env).ok()?.legacy_task(tenant, id).await
    }
}

/// A task record as the previous version kept it in KV (`task:{task_id}`).
#[derive(serde::Deserialize)]
struct LegacyRecord {
    tenant: String,
    data: serde_json::Value,
}

impl KvReadModel {
    /// A task recorded by the previous version (KV records `task:{id}` and
    /// `external:{tenant}:{id}`), if it is the tenant's: such tasks stay readable, as they
    /// were last stored, until their entries expire (30 days after they were written).
    pub async fn legacy_task(&self, tenant: &str, id: &str) -> Option<serde_json::Value> {
        let record = |task_id: String| async move {
            let text = self.kv.get(&format!("task:{task_id}")).text().await.ok()??;
            serde_json::from_str::<LegacyRecord>(&text).ok().filter(|record| record.tenant == tenant)
        };
        if let Some(found) = record(id.to_owned()).await {
            return Some(found.data);
        }
        let text = self.kv.get(&format!("external:{tenant}:{id}")).text().await.ok()??;
        let task_id: String = serde_json::from_str(&text).ok()?;
        record(task_id).await.map(|found| found.data)
    }
}

impl ReadModel for KvReadModel {
    async fn put(&self, key: &str, value: &str) -> Result<(), ApiError> {
        let put = self.kv.put(key, value).map_err(ApiError::unavailable)?;
        put.expiration_ttl(RETENTION_MS / 1000).execute().await.map_err(ApiError::unavailable)?;
        // One line per KV write: `make bench` counts them.
        console_log!("{}", serde_json::json!({"event": "kv_write", "op": "put"}));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), ApiError> {
        self.kv.delete(key).await.map_err(ApiError::unavailable)?;
        console_log!("{}", serde_json::json!({"event": "kv_write", "op": "delete"}));
        Ok(())
    }
}
