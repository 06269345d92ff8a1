//! The edge copies of finished tasks in Workers KV (`crate::record::edge_copy`): written by
//! the coordinator, read by the request path to answer queries of finished tasks without
//! the coordinator or Kling.
//!
//! KV is eventually consistent between locations and caches reads (misses too) for up to a
//! minute, which suits what it holds: a finished task changes only if its webhook's outcome
//! does. A miss, or a copy that is not the caller's, falls back to the coordinator. The
//! binding is opened at each use (a property of `Env`), so a request that never reads an
//! edge copy never touches it.

use worker::{console_log, Env, KvStore};

use crate::error::ApiError;
use crate::kling::RETENTION_MS;
use crate::ports::EdgeCopies;
use crate::record::edge_copy::{self, EdgeCopy};

/// The KV binding in `wrangler.toml`.
pub const BINDING: &str = "TASKS";

pub struct KvEdgeCopies<'a> {
    pub env: &'a Env,
}

/// A task record as the previous version kept it in KV (`task:{task_id}`).
#[derive(serde::Deserialize)]
struct LegacyRecord {
    tenant: String,
    data: serde_json::Value,
}

impl KvEdgeCopies<'_> {
    fn kv(&self) -> Result<KvStore, ApiError> {
        self.env
            .kv(BINDING)
            .map_err(|_| ApiError::config(BINDING, "is not bound: add the KV namespace to wrangler.toml"))
    }

    async fn text(&self, key: &str) -> Option<String> {
        self.kv().ok()?.get(key).text().await.ok()?
    }
}

impl EdgeCopies for KvEdgeCopies<'_> {
    async fn put(&self, key: &str, value: &str) -> Result<(), ApiError> {
        let put = self.kv()?.put(key, value).map_err(ApiError::unavailable)?;
        put.expiration_ttl(RETENTION_MS / 1000).execute().await.map_err(ApiError::unavailable)?;
        // One line per KV write: `make bench` counts them.
        console_log!("{}", serde_json::json!({"event": "kv_write", "op": "put"}));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), ApiError> {
        self.kv()?.delete(key).await.map_err(ApiError::unavailable)?;
        console_log!("{}", serde_json::json!({"event": "kv_write", "op": "delete"}));
        Ok(())
    }

    async fn get(&self, shard: &str, task_id: &str) -> Option<EdgeCopy> {
        serde_json::from_str(&self.text(&edge_copy::key(shard, task_id)).await?).ok()
    }

    /// A task recorded by the previous version (KV records `task:{id}` and
    /// `external:{tenant}:{id}`), if it is the tenant's: such tasks stay readable, as they
    /// were last stored, until their entries expire (30 days after they were written).
    async fn legacy_task(&self, tenant: &str, id: &str) -> Option<serde_json::Value> {
        let record = |task_id: String| async move {
            let text = self.text(&format!("task:{task_id}")).await?;
            serde_json::from_str::<LegacyRecord>(&text).ok().filter(|record| record.tenant == tenant)
        };
        if let Some(found) = record(id.to_owned()).await {
            return Some(found.data);
        }
        let task_id: String =
            serde_json::from_str(&self.text(&format!("external:{tenant}:{id}")).await?).ok()?;
        record(task_id).await.map(|found| found.data)
    }
}
