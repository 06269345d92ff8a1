//! A coordinator's tasks and uploads in its Durable Object's SQLite database
//! (`crate::ports::TaskStore`, `crate::ports::AssetStore`),
//! with the table and queries of `crate::record::table`. SQLite calls are synchronous in a
//! Durable Object, so a load-merge-save with no `await` between is atomic.

use serde::Deserialize;
use worker::{SqlStorage, SqlStorageValue};

use crate::error::{code, ApiError};
use crate::ports::{AssetStore, TaskStore};
use crate::record::asset::Asset;
use crate::record::cache::RecordCache;
use crate::record::idempotency::KeyEntry;
use crate::record::intent::Intent;
use crate::record::table;
use crate::record::TaskRecord;

pub struct SqlStore {
    sql: SqlStorage,
    /// What `meta` holds, as read or written through this store (the object's only writer).
    meta: std::cell::RefCell<std::collections::HashMap<String, Option<String>>>,
    /// The records read or written last (written through: the store is the table's only
    /// writer).
    cache: std::cell::RefCell<RecordCache>,
}

fn failed(error: worker::Error) -> ApiError {
    worker::console_error!("{}", serde_json::json!({"event": "sql", "problem": error.to_string()}));
    ApiError::new(503, code::UNAVAILABLE, "the task coordinator's storage failed; retry shortly")
}

fn int(value: u64) -> SqlStorageValue {
    SqlStorageValue::Integer(i64::try_from(value).unwrap_or(i64::MAX))
}

#[derive(Deserialize)]
struct RecordRow {
    record: String,
}

#[derive(Deserialize)]
struct AssetRow {
    asset: String,
}

#[derive(Deserialize)]
struct IdRow {
    task_id: String,
}

#[derive(Deserialize)]
struct IntentRow {
    nonce: String,
    intent: String,
}

#[derive(Deserialize)]
struct DueRow {
    due_at: Option<f64>,
}

#[derive(Deserialize)]
struct CountRow {
    count: f64,
}

#[derive(Deserialize)]
struct ValueRow {
    value: String,
}

#[derive(Deserialize)]
struct StatusRow {
    status: String,
    count: f64,
}

#[derive(Deserialize)]
struct EntryRow {
    entry: String,
}

impl SqlStore {
    /// Opens the store, creating its tables the first time.
    pub fn open(sql: SqlStorage) -> Result<SqlStore, ApiError> {
        for statement in table::SCHEMA {
            sql.exec(statement, None).map_err(failed)?;
        }
        let version: Vec<ValueRow> =
            sql.exec(table::SCHEMA_VERSION, None).and_then(|c| c.to_array()).map_err(failed)?;
        let version = version.first().map(|row| row.value.as_str());
        let migrations = [
            ("1", table::HAS_POLL_AT, table::MIGRATE_FROM_1),
            ("2", table::HAS_STEP_AT, table::MIGRATE_FROM_2),
        ];
        let mut from = version.map(str::to_owned);
        for (version, has_column, statements) in migrations {
            if from.as_deref() != Some(version) {
                continue;
            }
            let has: Vec<CountRow> = sql.exec(has_column, None).and_then(|c| c.to_array()).map_err(failed)?;
            let skip_alter = has.first().is_some_and(|row| row.count > 0.0);
            for statement in &statements[usize::from(skip_alter)..] {
                sql.exec(statement, None).map_err(failed)?;
            }
            from = Some((version.parse::<u8>().unwrap_or(0) + 1).to_string());
        }
        for statement in table::INDEXES {
            sql.exec(statement, None).map_err(failed)?;
        }
        Ok(SqlStore { sql, meta: Default::default(), cache: Default::default() })
    }

    fn records(&self, query: &str, bindings: Vec<SqlStorageValue>) -> Result<Vec<TaskRecord>, ApiError> {
        let rows: Vec<RecordRow> =
            self.sql.exec(query, bindings).and_then(|c| c.to_array()).map_err(failed)?;
        Ok(rows.iter().filter_map(|row| serde_json::from_str(&row.record).ok()).collect())
    }

    fn assets(&self, query: &str, bindings: Vec<SqlStorageValue>) -> Result<Vec<Asset>, ApiError> {
        let rows: Vec<AssetRow> =
            self.sql.exec(query, bindings).and_then(|c| c.to_array()).map_err(failed)?;
        Ok(rows.iter().filter_map(|row| serde_json::from_str(&row.asset).ok()).collect())
    }

    fn ids(&self, query: &str, bindings: Vec<SqlStorageValue>) -> Result<Vec<String>, ApiError> {
        let rows: Vec<IdRow> = self.sql.exec(query, bindings).and_then(|c| c.to_array()).map_err(failed)?;
        Ok(rows.into_iter().map(|row| row.task_id).collect())
    }
}

impl TaskStore for SqlStore {
    fn load(&self, task_id: &str) -> Result<Option<TaskRecord>, ApiError> {
        if let Some(record) = self.cache.borrow().get(task_id) {
            return Ok(Some(record));
        }
        let record = self.records(table::LOAD, vec![task_id.into()])?.pop();
        if let Some(record) = &record {
            self.cache.borrow_mut().put(record);
        }
        Ok(record)
    }

    fn save(&self, record: &TaskRecord) -> Result<(), ApiError> {
        let json = serde_json::to_string(record).map_err(|_| ApiError::internal("encoding a task record"))?;
        let external = crate::kling::task::external_task_id_of(&record.data).map(str::to_owned);
        self.sql
            .exec(
                table::SAVE,
                vec![
                    record.task_id.as_str().into(),
                    SqlStorageValue::Integer(i64::from(record.endpoint)),
                    record.nonce.as_str().into(),
                    external.into(),
                    int(record.created_at),
                    record.due_at().map(int).unwrap_or(SqlStorageValue::Null),
                    SqlStorageValue::Integer(i64::from(record.is_running())),
                    json.into(),
                    record.poll_due_at().map(int).unwrap_or(SqlStorageValue::Null),
                    record.step_due_at().map(int).unwrap_or(SqlStorageValue::Null),
                ],
            )
            .map_err(failed)?;
        self.cache.borrow_mut().put(record);
        Ok(())
    }

    fn delete(&self, task_id: &str) -> Result<(), ApiError> {
        // Forgotten first: a removal that fails leaves the row, to be read again.
        self.cache.borrow_mut().remove(task_id);
        self.sql.exec(table::DELETE, vec![task_id.into()]).map_err(failed)?;
        Ok(())
    }

    fn find_external(&self, external_task_id: &str) -> Result<Option<String>, ApiError> {
        Ok(self.ids(table::FIND_EXTERNAL, vec![external_task_id.into()])?.pop())
    }

    fn find_nonce(&self, nonce: &str) -> Result<Option<String>, ApiError> {
        Ok(self.ids(table::FIND_NONCE, vec![nonce.into()])?.pop())
    }

    fn page(&self, endpoint: u8, offset: u32, limit: u32) -> Result<Vec<TaskRecord>, ApiError> {
        self.records(
            table::PAGE,
            vec![
                SqlStorageValue::Integer(i64::from(endpoint)),
                SqlStorageValue::Integer(i64::from(limit)),
                SqlStorageValue::Integer(i64::from(offset)),
            ],
        )
    }

    fn running(&self) -> Result<u32, ApiError> {
        let rows: Vec<CountRow> =
            self.sql.exec(table::RUNNING, None).and_then(|c| c.to_array()).map_err(failed)?;
        Ok(rows.first().map_or(0, |row| row.count.max(0.0) as u32))
    }

    fn due(&self, now: u64, limit: u32) -> Result<Vec<String>, ApiError> {
        self.ids(table::DUE, vec![int(now), SqlStorageValue::Integer(i64::from(limit))])
    }

    fn due_steps(&self, now: u64, limit: u32) -> Result<Vec<String>, ApiError> {
        self.ids(table::DUE_STEPS, vec![int(now), SqlStorageValue::Integer(i64::from(limit))])
    }

    fn due_polls(&self, now: u64, limit: u32) -> Result<Vec<String>, ApiError> {
        self.ids(table::DUE_POLLS, vec![int(now), SqlStorageValue::Integer(i64::from(limit))])
    }

    fn save_intent(&self, intent: &Intent) -> Result<(), ApiError> {
        let json = serde_json::to_string(intent).map_err(|_| ApiError::internal("encoding an intent"))?;
        self.sql
            .exec(table::SAVE_INTENT, vec![intent.nonce.as_str().into(), int(intent.check_at), json.into()])
            .map_err(failed)?;
        Ok(())
    }

    fn delete_intent(&self, nonce: &str) -> Result<(), ApiError> {
        self.sql.exec(table::DELETE_INTENT, vec![nonce.into()]).map_err(failed)?;
        Ok(())
    }

    fn has_intent(&self, nonce: &str) -> Result<bool, ApiError> {
        let rows: Vec<IntentRow> = self
            .sql
            .exec(table::HAS_INTENT, vec![nonce.into()])
            .and_then(|c| c.to_array())
            .map_err(failed)?;
        Ok(!rows.is_empty())
    }

    fn reschedule_intent(&self, intent: &Intent) -> Result<(), ApiError> {
        let json = serde_json::to_string(intent).map_err(|_| ApiError::internal("encoding an intent"))?;
        self.sql
            .exec(
                table::RESCHEDULE_INTENT,
                vec![int(intent.check_at), json.into(), intent.nonce.as_str().into()],
            )
            .map_err(failed)?;
        Ok(())
    }

    fn due_intents(&self, now: u64, limit: u32) -> Result<Vec<Intent>, ApiError> {
        let rows: Vec<IntentRow> = self
            .sql
            .exec(table::DUE_INTENTS, vec![int(now), SqlStorageValue::Integer(i64::from(limit))])
            .and_then(|c| c.to_array())
            .map_err(failed)?;
        let mut intents = Vec::new();
        for row in rows {
            match serde_json::from_str(&row.intent) {
                Ok(intent) => intents.push(intent),
                // Unreadable (written by no version of this code): it would stay due forever.
                Err(_) => self.delete_intent(&row.nonce)?,
            }
        }
        Ok(intents)
    }

    fn next_due(&self) -> Result<Option<u64>, ApiError> {
        let mut earliest = None;
        for query in [table::NEXT_DUE, table::NEXT_INTENT, table::NEXT_ASSET] {
            let rows: Vec<DueRow> = self.sql.exec(query, None).and_then(|c| c.to_array()).map_err(failed)?;
            let at = rows.first().and_then(|row| row.due_at).map(|at| at.max(0.0) as u64);
            earliest = earliest.into_iter().chain(at).min();
        }
        Ok(earliest)
    }

    fn expired(&self, now: u64, keep_ms: u64, limit: u32) -> Result<Vec<String>, ApiError> {
        // Candidates by age first (cheap), then the record's own rule.
        let cutoff = now.saturating_sub(keep_ms.max(crate::record::RETENTION_MS));
        Ok(self
            .records(table::EXPIRED, vec![int(cutoff), SqlStorageValue::Integer(i64::from(limit))])?
            .into_iter()
            .filter(|record| record.expired(now, keep_ms))
            .map(|record| record.task_id)
            .collect())
    }

    fn meta(&self, name: &str) -> Result<Option<String>, ApiError> {
        if let Some(known) = self.meta.borrow().get(name) {
            return Ok(known.clone());
        }
        let rows: Vec<ValueRow> =
            self.sql.exec(table::META, vec![name.into()]).and_then(|c| c.to_array()).map_err(failed)?;
        let value = rows.into_iter().next().map(|row| row.value);
        self.meta.borrow_mut().insert(name.to_owned(), value.clone());
        Ok(value)
    }

    fn set_meta(&self, name: &str, value: &str) -> Result<(), ApiError> {
        self.sql.exec(table::SET_META, vec![name.into(), value.into()]).map_err(failed)?;
        self.meta.borrow_mut().insert(name.to_owned(), Some(value.to_owned()));
        Ok(())
    }

    fn statuses_since(&self, endpoint: u8, since: u64) -> Result<Vec<(String, u32)>, ApiError> {
        let rows: Vec<StatusRow> = self
            .sql
            .exec(table::STATUSES_SINCE, vec![int(u64::from(endpoint)), int(since)])
            .and_then(|c| c.to_array())
            .map_err(failed)?;
        Ok(rows.into_iter().map(|row| (row.status, row.count as u32)).collect())
    }

    fn load_key(&self, key: &str) -> Result<Option<KeyEntry>, ApiError> {
        let rows: Vec<EntryRow> =
            self.sql.exec(table::LOAD_KEY, vec![key.into()]).and_then(|c| c.to_array()).map_err(failed)?;
        Ok(rows.first().and_then(|row| serde_json::from_str(&row.entry).ok()))
    }

    fn save_key(&self, entry: &KeyEntry) -> Result<(), ApiError> {
        let json = serde_json::to_string(entry).map_err(|_| ApiError::internal("encoding a key"))?;
        let bindings = vec![entry.key.as_str().into(), int(entry.expires_at), json.into()];
        self.sql.exec(table::SAVE_KEY, bindings).map_err(failed)?;
        Ok(())
    }

    fn delete_key(&self, key: &str) -> Result<(), ApiError> {
        self.sql.exec(table::DELETE_KEY, vec![key.into()]).map_err(failed)?;
        Ok(())
    }

    fn forget_keys(&self, now: u64, limit: u32) -> Result<(), ApiError> {
        self.sql.exec(table::FORGET_KEYS, vec![int(now), int(u64::from(limit))]).map_err(failed)?;
        Ok(())
    }
}

impl AssetStore for SqlStore {
    fn load_asset(&self, asset_id: &str) -> Result<Option<Asset>, ApiError> {
        Ok(self.assets(table::LOAD_ASSET, vec![asset_id.into()])?.pop())
    }

    fn save_asset(&self, asset: &Asset) -> Result<(), ApiError> {
        let json = serde_json::to_string(asset).map_err(|_| ApiError::internal("encoding an asset"))?;
        self.sql
            .exec(
                table::SAVE_ASSET,
                vec![
                    asset.asset_id.as_str().into(),
                    int(asset.created_at),
                    int(asset.due_at),
                    SqlStorageValue::Integer(i64::from(asset.is_stored())),
                    json.into(),
                ],
            )
            .map_err(failed)?;
        Ok(())
    }

    fn delete_asset(&self, asset_id: &str) -> Result<(), ApiError> {
        self.sql.exec(table::DELETE_ASSET, vec![asset_id.into()]).map_err(failed)?;
        Ok(())
    }

    fn asset_page(&self, offset: u32, limit: u32) -> Result<Vec<Asset>, ApiError> {
        self.assets(
            table::ASSET_PAGE,
            vec![SqlStorageValue::Integer(i64::from(limit)), SqlStorageValue::Integer(i64::from(offset))],
        )
    }

    fn due_assets(&self, now: u64, limit: u32) -> Result<Vec<Asset>, ApiError> {
        self.assets(table::DUE_ASSETS, vec![int(now), SqlStorageValue::Integer(i64::from(limit))])
    }
}
