//! A coordinator's tasks in its Durable Object's SQLite database (`crate::ports::TaskStore`).
//!
//! Each record is kept whole as JSON, beside the columns the coordinator searches and sorts
//! by: the external task id, the capability nonce, the creation time (the list, newest
//! first) and the next time something is due (the alarm). SQLite calls are synchronous in
//! a Durable Object, so a load-merge-save with no `await` between is atomic.
//!
//! Records are versioned by the `schema` entry in `meta`; this is version 1.

use serde::Deserialize;
use worker::{SqlStorage, SqlStorageValue};

use crate::error::{code, ApiError};
use crate::ports::TaskStore;
use crate::record::TaskRecord;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tasks (
        task_id TEXT PRIMARY KEY,
        endpoint INTEGER NOT NULL,
        nonce TEXT NOT NULL,
        external_id TEXT,
        created_at INTEGER NOT NULL,
        due_at INTEGER,
        running INTEGER NOT NULL DEFAULT 1,
        record TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS tasks_newest ON tasks (endpoint, created_at DESC, task_id DESC)",
    "CREATE INDEX IF NOT EXISTS tasks_due ON tasks (due_at) WHERE due_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS tasks_external ON tasks (external_id) WHERE external_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS tasks_nonce ON tasks (nonce)",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', '1')",
];

pub struct SqlStore {
    sql: SqlStorage,
    /// What `meta` holds, as read or written through this store (the object's only writer).
    meta: std::cell::RefCell<std::collections::HashMap<String, Option<String>>>,
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
struct IdRow {
    task_id: String,
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

impl SqlStore {
    /// Opens the store, creating its tables the first time.
    pub fn open(sql: SqlStorage) -> Result<SqlStore, ApiError> {
        for statement in SCHEMA {
            sql.exec(statement, None).map_err(failed)?;
        }
        Ok(SqlStore { sql, meta: Default::default() })
    }

    fn records(&self, query: &str, bindings: Vec<SqlStorageValue>) -> Result<Vec<TaskRecord>, ApiError> {
        let rows: Vec<RecordRow> =
            self.sql.exec(query, bindings).and_then(|c| c.to_array()).map_err(failed)?;
        Ok(rows.iter().filter_map(|row| serde_json::from_str(&row.record).ok()).collect())
    }

    fn ids(&self, query: &str, bindings: Vec<SqlStorageValue>) -> Result<Vec<String>, ApiError> {
        let rows: Vec<IdRow> = self.sql.exec(query, bindings).and_then(|c| c.to_array()).map_err(failed)?;
        Ok(rows.into_iter().map(|row| row.task_id).collect())
    }
}

impl TaskStore for SqlStore {
    fn load(&self, task_id: &str) -> Result<Option<TaskRecord>, ApiError> {
        Ok(self.records("SELECT record FROM tasks WHERE task_id = ?", vec![task_id.into()])?.pop())
    }

    fn save(&self, record: &TaskRecord) -> Result<(), ApiError> {
        let json = serde_json::to_string(record).map_err(|_| ApiError::internal("encoding a task record"))?;
        let external = crate::kling::task::external_task_id_of(&record.data).map(str::to_owned);
        self.sql
            .exec(
                "INSERT INTO tasks (task_id, endpoint, nonce, external_id, created_at, due_at, running, record)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (task_id) DO UPDATE SET endpoint = excluded.endpoint, nonce = excluded.nonce,
                   external_id = excluded.external_id, created_at = excluded.created_at,
                   due_at = excluded.due_at, running = excluded.running, record = excluded.record",
                vec![
                    record.task_id.as_str().into(),
                    SqlStorageValue::Integer(i64::from(record.endpoint)),
                    record.nonce.as_str().into(),
                    external.into(),
                    int(record.created_at),
                    record.due_at().map(int).unwrap_or(SqlStorageValue::Null),
                    SqlStorageValue::Integer(i64::from(record.is_running())),
                    json.into(),
                ],
            )
            .map_err(failed)?;
        Ok(())
    }

    fn delete(&self, task_id: &str) -> Result<(), ApiError> {
        self.sql.exec("DELETE FROM tasks WHERE task_id = ?", vec![task_id.into()]).map_err(failed)?;
        Ok(())
    }

    fn find_external(&self, external_task_id: &str) -> Result<Option<String>, ApiError> {
        Ok(self
            .ids(
                "SELECT task_id FROM tasks WHERE external_id = ? ORDER BY created_at DESC LIMIT 1",
                vec![external_task_id.into()],
            )?
            .pop())
    }

    fn find_nonce(&self, nonce: &str) -> Result<Option<String>, ApiError> {
        Ok(self.ids("SELECT task_id FROM tasks WHERE nonce = ? LIMIT 1", vec![nonce.into()])?.pop())
    }

    fn page(&self, endpoint: u8, offset: u32, limit: u32) -> Result<Vec<TaskRecord>, ApiError> {
        self.records(
            "SELECT record FROM tasks WHERE endpoint = ? ORDER BY created_at DESC, task_id DESC LIMIT ? OFFSET ?",
            vec![
                SqlStorageValue::Integer(i64::from(endpoint)),
                SqlStorageValue::Integer(i64::from(limit)),
                SqlStorageValue::Integer(i64::from(offset)),
            ],
        )
    }

    fn running(&self) -> Result<u32, ApiError> {
        let rows: Vec<CountRow> = self
            .sql
            .exec("SELECT COUNT(*) AS count FROM tasks WHERE running = 1", None)
            .and_then(|c| c.to_array())
            .map_err(failed)?;
        Ok(rows.first().map_or(0, |row| row.count.max(0.0) as u32))
    }

    fn due(&self, now: u64, limit: u32) -> Result<Vec<String>, ApiError> {
        self.ids(
            "SELECT task_id FROM tasks WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at LIMIT ?",
            vec![int(now), SqlStorageValue::Integer(i64::from(limit))],
        )
    }

    fn next_due(&self) -> Result<Option<u64>, ApiError> {
        let rows: Vec<DueRow> = self
            .sql
            .exec("SELECT MIN(due_at) AS due_at FROM tasks WHERE due_at IS NOT NULL", None)
            .and_then(|c| c.to_array())
            .map_err(failed)?;
        Ok(rows.first().and_then(|row| row.due_at).map(|at| at.max(0.0) as u64))
    }

    fn expired(&self, now: u64, keep_ms: u64, limit: u32) -> Result<Vec<String>, ApiError> {
        // Candidates by age first (cheap), then the record's own rule.
        let cutoff = now.saturating_sub(keep_ms.max(crate::record::RETENTION_MS));
        Ok(self
            .records(
                "SELECT record FROM tasks WHERE due_at IS NULL AND created_at < ? ORDER BY created_at LIMIT ?",
                vec![int(cutoff), SqlStorageValue::Integer(i64::from(limit))],
            )?
            .into_iter()
            .filter(|record| record.expired(now, keep_ms))
            .map(|record| record.task_id)
            .collect())
    }

    fn meta(&self, name: &str) -> Result<Option<String>, ApiError> {
        if let Some(known) = self.meta.borrow().get(name) {
            return Ok(known.clone());
        }
        let rows: Vec<ValueRow> = self
            .sql
            .exec("SELECT value FROM meta WHERE name = ?", vec![name.into()])
            .and_then(|c| c.to_array())
            .map_err(failed)?;
        let value = rows.into_iter().next().map(|row| row.value);
        self.meta.borrow_mut().insert(name.to_owned(), value.clone());
        Ok(value)
    }

    fn set_meta(&self, name: &str, value: &str) -> Result<(), ApiError> {
        self.sql
            .exec(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                vec![name.into(), value.into()],
            )
            .map_err(failed)?;
        self.meta.borrow_mut().insert(name.to_owned(), Some(value.to_owned()));
        Ok(())
    }
}
