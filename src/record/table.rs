//! The coordinator's SQLite table: its schema, its migrations and every query the store
//! makes (`crate::edge::sql_store` runs them in the Durable Object).
//!
//! Each record is kept whole as JSON, beside the columns the coordinator searches and sorts
//! by: the external task id, the capability nonce, the creation time (the list, newest
//! first), the next time anything is due (the alarm), the next time the task's step is due
//! (its poll, webhook or edge copy: so a backlog of copies never hides a webhook), the next
//! poll (so a poll is never queued behind a backlog of webhooks) and whether Kling is still
//! working on the task.
//! Beside them, the creates on their way to Kling (`crate::record::intent`) and the
//! tenant's uploads (`crate::record::asset`).
//!
//! Every query the alarm and the create path make is answered from an index, never by a
//! scan of the table: a tenant keeps 90 days of tasks, and a scan would grow with its age.
//! The tests below check each query's plan in SQLite itself, and measure them at 100 and
//! 100,000 tasks.

/// The schema version this code writes (`meta.schema`).
pub const VERSION: &str = "3";

/// Run at every start: creates what is missing (a new object gets version 3 at once).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tasks (
        task_id TEXT PRIMARY KEY,
        endpoint INTEGER NOT NULL,
        nonce TEXT NOT NULL,
        external_id TEXT,
        created_at INTEGER NOT NULL,
        due_at INTEGER,
        running INTEGER NOT NULL DEFAULT 1,
        record TEXT NOT NULL,
        poll_at INTEGER,
        step_at INTEGER
    )",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', '3')",
    // Creates on their way to Kling (`crate::record::intent`), by their capability's nonce.
    "CREATE TABLE IF NOT EXISTS intents (nonce TEXT PRIMARY KEY, check_at INTEGER NOT NULL, intent TEXT NOT NULL)",
    // The tenant's `Idempotency-Key`s (`crate::record::idempotency`), kept a day.
    "CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, entry TEXT NOT NULL)",
    // The tenant's uploads (`crate::record::asset`): `listed` once measured and kept.
    "CREATE TABLE IF NOT EXISTS assets (
        asset_id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        due_at INTEGER NOT NULL,
        listed INTEGER NOT NULL,
        asset TEXT NOT NULL
    )",
];

/// Whether `tasks` has its version 2 column (a migration cut off after it must not add it
/// again).
pub const HAS_POLL_AT: &str =
    "SELECT COUNT(*) AS count FROM pragma_table_info('tasks') WHERE name = 'poll_at'";
/// From version 1 (no `poll_at`, scanned sweeps) to 2, once, for an object created before;
/// the first statement only if [`HAS_POLL_AT`] counts none.
pub const MIGRATE_FROM_1: &[&str] = &[
    "ALTER TABLE tasks ADD COLUMN poll_at INTEGER",
    "UPDATE tasks SET poll_at = json_extract(record, '$.next_poll_at')
       WHERE due_at IS NOT NULL AND NOT coalesce(json_extract(record, '$.dropped'), 0)",
    "UPDATE meta SET value = '2' WHERE name = 'schema'",
];

/// Whether `tasks` has its version 3 column.
pub const HAS_STEP_AT: &str =
    "SELECT COUNT(*) AS count FROM pragma_table_info('tasks') WHERE name = 'step_at'";
/// From version 2 to 3 (the step's own due time), once; the first statement only if
/// [`HAS_STEP_AT`] counts none. Every due task counts as due for its step until the alarm's
/// first look at it saves its real time (`flows::coordinator`).
pub const MIGRATE_FROM_2: &[&str] = &[
    "ALTER TABLE tasks ADD COLUMN step_at INTEGER",
    "UPDATE tasks SET step_at = due_at WHERE due_at IS NOT NULL",
    "UPDATE meta SET value = '3' WHERE name = 'schema'",
];

/// Run at every start, after the migrations (the columns they index exist by then).
pub const INDEXES: &[&str] = &[
    "CREATE INDEX IF NOT EXISTS tasks_newest ON tasks (endpoint, created_at DESC, task_id DESC)",
    "CREATE INDEX IF NOT EXISTS tasks_due ON tasks (due_at) WHERE due_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS tasks_poll ON tasks (poll_at) WHERE poll_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS tasks_step ON tasks (step_at) WHERE step_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS tasks_settled ON tasks (created_at) WHERE due_at IS NULL",
    "CREATE INDEX IF NOT EXISTS tasks_running ON tasks (running) WHERE running = 1",
    "CREATE INDEX IF NOT EXISTS tasks_external ON tasks (external_id) WHERE external_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS tasks_nonce ON tasks (nonce)",
    "CREATE INDEX IF NOT EXISTS intents_check ON intents (check_at)",
    "CREATE INDEX IF NOT EXISTS assets_newest ON assets (created_at DESC, asset_id DESC) WHERE listed = 1",
    "CREATE INDEX IF NOT EXISTS assets_due ON assets (due_at)",
    "CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at)",
];

pub const SCHEMA_VERSION: &str = "SELECT value FROM meta WHERE name = 'schema'";
pub const LOAD: &str = "SELECT record FROM tasks WHERE task_id = ?";
pub const SAVE: &str =
    "INSERT INTO tasks (task_id, endpoint, nonce, external_id, created_at, due_at, running, record, poll_at, step_at)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
     ON CONFLICT (task_id) DO UPDATE SET endpoint = excluded.endpoint, nonce = excluded.nonce,
       external_id = excluded.external_id, created_at = excluded.created_at, due_at = excluded.due_at,
       running = excluded.running, record = excluded.record, poll_at = excluded.poll_at,
       step_at = excluded.step_at";
pub const DELETE: &str = "DELETE FROM tasks WHERE task_id = ?";
pub const FIND_EXTERNAL: &str =
    "SELECT task_id FROM tasks WHERE external_id = ? ORDER BY created_at DESC LIMIT 1";
pub const FIND_NONCE: &str = "SELECT task_id FROM tasks WHERE nonce = ? LIMIT 1";
pub const PAGE: &str =
    "SELECT record FROM tasks WHERE endpoint = ? ORDER BY created_at DESC, task_id DESC LIMIT ? OFFSET ?";
pub const RUNNING: &str = "SELECT COUNT(*) AS count FROM tasks WHERE running = 1";
pub const DUE: &str =
    "SELECT task_id FROM tasks WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at LIMIT ?";
pub const DUE_STEPS: &str =
    "SELECT task_id FROM tasks WHERE step_at IS NOT NULL AND step_at <= ? ORDER BY step_at LIMIT ?";
pub const DUE_POLLS: &str =
    "SELECT task_id FROM tasks WHERE poll_at IS NOT NULL AND poll_at <= ? ORDER BY poll_at LIMIT ?";
pub const NEXT_DUE: &str = "SELECT MIN(due_at) AS due_at FROM tasks WHERE due_at IS NOT NULL";
/// Candidates for forgetting by age (the record's own rule decides): settled tasks only.
pub const EXPIRED: &str =
    "SELECT record FROM tasks WHERE due_at IS NULL AND created_at < ? ORDER BY created_at LIMIT ?";
pub const SAVE_INTENT: &str = "INSERT INTO intents (nonce, check_at, intent) VALUES (?, ?, ?)
     ON CONFLICT (nonce) DO UPDATE SET check_at = excluded.check_at, intent = excluded.intent";
pub const DELETE_INTENT: &str = "DELETE FROM intents WHERE nonce = ?";
pub const HAS_INTENT: &str = "SELECT nonce, intent FROM intents WHERE nonce = ?";
pub const RESCHEDULE_INTENT: &str = "UPDATE intents SET check_at = ?, intent = ? WHERE nonce = ?";
pub const DUE_INTENTS: &str =
    "SELECT nonce, intent FROM intents WHERE check_at <= ? ORDER BY check_at LIMIT ?";
pub const NEXT_INTENT: &str = "SELECT MIN(check_at) AS due_at FROM intents";
pub const LOAD_ASSET: &str = "SELECT asset FROM assets WHERE asset_id = ?";
pub const SAVE_ASSET: &str =
    "INSERT INTO assets (asset_id, created_at, due_at, listed, asset) VALUES (?, ?, ?, ?, ?)
     ON CONFLICT (asset_id) DO UPDATE SET created_at = excluded.created_at, due_at = excluded.due_at,
       listed = excluded.listed, asset = excluded.asset";
pub const DELETE_ASSET: &str = "DELETE FROM assets WHERE asset_id = ?";
pub const ASSET_PAGE: &str =
    "SELECT asset FROM assets WHERE listed = 1 ORDER BY created_at DESC, asset_id DESC LIMIT ? OFFSET ?";
pub const DUE_ASSETS: &str = "SELECT asset FROM assets WHERE due_at <= ? ORDER BY due_at LIMIT ?";
pub const NEXT_ASSET: &str = "SELECT MIN(due_at) AS due_at FROM assets";
pub const META: &str = "SELECT value FROM meta WHERE name = ?";
pub const STATUSES_SINCE: &str =
    "SELECT coalesce(json_extract(record, '$.data.task_status'), '') AS status, COUNT(*) AS count
     FROM tasks WHERE endpoint = ? AND created_at >= ? GROUP BY status";
pub const LOAD_KEY: &str = "SELECT entry FROM idempotency WHERE key = ?";
pub const SAVE_KEY: &str = "INSERT OR REPLACE INTO idempotency (key, expires_at, entry) VALUES (?, ?, ?)";
pub const DELETE_KEY: &str = "DELETE FROM idempotency WHERE key = ?";
pub const FORGET_KEYS: &str =
    "DELETE FROM idempotency WHERE key IN (SELECT key FROM idempotency WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)";
pub const SET_META: &str =
    "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value";

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{params, Connection};
    use std::time::Instant;

    fn open() -> Connection {
        let db = Connection::open_in_memory().unwrap();
        for statement in SCHEMA.iter().chain(INDEXES) {
            db.execute(statement, []).unwrap();
        }
        db
    }

    /// `count` tasks as a tenant accumulates them: all settled long ago but the newest 50,
    /// which are running with something due.
    fn fill(db: &Connection, count: u64) {
        let tx = db.unchecked_transaction().unwrap();
        {
            let mut save = tx.prepare(SAVE).unwrap();
            for i in 0..count {
                let settled = i + 50 < count;
                let due = (!settled).then_some(1_000 + i);
                let record = format!(r#"{{"task_id":"t{i}","padding":"{}"}}"#, "x".repeat(600));
                save.execute(params![
                    format!("t{i}"),
                    1 + (i % 3),
                    format!("n{i}"),
                    format!("e{i}"),
                    i * 1_000,
                    due,
                    i64::from(!settled),
                    record,
                    due,
                    due
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn plan(db: &Connection, query: &str) -> String {
        let mut statement = db.prepare(&format!("EXPLAIN QUERY PLAN {query}")).unwrap();
        let count = statement.parameter_count();
        let values: Vec<i64> = vec![1; count];
        let rows = statement
            .query_map(rusqlite::params_from_iter(values), |row| row.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>();
        rows.join("; ")
    }

    #[test]
    fn every_query_is_answered_from_an_index_never_a_scan_of_the_table() {
        let db = open();
        fill(&db, 1_000);
        db.execute("ANALYZE", []).unwrap();
        for (query, index) in [
            (LOAD, "sqlite_autoindex_tasks_1"),
            (FIND_EXTERNAL, "tasks_external"),
            (FIND_NONCE, "tasks_nonce"),
            (PAGE, "tasks_newest"),
            (RUNNING, "tasks_running"),
            (DUE, "tasks_due"),
            (DUE_POLLS, "tasks_poll"),
            (DUE_STEPS, "tasks_step"),
            (NEXT_DUE, "tasks_due"),
            (EXPIRED, "tasks_settled"),
            (DUE_INTENTS, "intents_check"),
            (NEXT_INTENT, "intents_check"),
            (DELETE_INTENT, "sqlite_autoindex_intents_1"),
            (HAS_INTENT, "sqlite_autoindex_intents_1"),
            (LOAD_ASSET, "sqlite_autoindex_assets_1"),
            (ASSET_PAGE, "assets_newest"),
            (DUE_ASSETS, "assets_due"),
            (NEXT_ASSET, "assets_due"),
            (STATUSES_SINCE, "tasks_newest"),
            (LOAD_KEY, "sqlite_autoindex_idempotency_1"),
            (DELETE_KEY, "sqlite_autoindex_idempotency_1"),
            (FORGET_KEYS, "idempotency_expiry"),
        ] {
            let plan = plan(&db, query);
            assert!(plan.contains(index), "{query}\n  plan: {plan}");
            // A walk of an index in its order (a page with a LIMIT) is fine; a scan of the table is not.
            let scans_table = plan.split("; ").any(|step| {
                ["tasks", "assets", "idempotency"].iter().any(|table| {
                    step.strip_prefix(&format!("SCAN {table}"))
                        .is_some_and(|rest| !rest.starts_with(" USING"))
                })
            });
            assert!(!scans_table, "{query}\n  plan: {plan}");
        }
    }

    #[test]
    fn a_version_1_table_is_migrated_to_3_once_with_its_polls_and_steps_found() {
        let db = Connection::open_in_memory().unwrap();
        // Version 1 as it was created.
        db.execute_batch(
            "CREATE TABLE tasks (task_id TEXT PRIMARY KEY, endpoint INTEGER NOT NULL, nonce TEXT NOT NULL,
               external_id TEXT, created_at INTEGER NOT NULL, due_at INTEGER, running INTEGER NOT NULL DEFAULT 1,
               record TEXT NOT NULL);
             CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT INTO meta VALUES ('schema', '1');
             INSERT INTO tasks VALUES ('t1', 1, 'n1', NULL, 5, 70, 1, '{\"next_poll_at\": 70}');
             INSERT INTO tasks VALUES ('t2', 1, 'n2', NULL, 6, 80, 1, '{\"next_poll_at\": 90, \"dropped\": true}');
             INSERT INTO tasks VALUES ('t3', 1, 'n3', NULL, 7, NULL, 0, '{}');",
        )
        .unwrap();
        for statement in SCHEMA {
            db.execute(statement, []).unwrap();
        }
        let version: String = db.query_row(SCHEMA_VERSION, [], |row| row.get(0)).unwrap();
        assert_eq!(version, "1", "an existing object keeps its version until migrated");
        let has: i64 = db.query_row(HAS_POLL_AT, [], |row| row.get(0)).unwrap();
        assert_eq!(has, 0);
        for statement in MIGRATE_FROM_1 {
            db.execute(statement, []).unwrap();
        }
        let has: i64 = db.query_row(HAS_POLL_AT, [], |row| row.get(0)).unwrap();
        assert_eq!(has, 1, "a second open skips the ALTER");
        for statement in MIGRATE_FROM_2 {
            db.execute(statement, []).unwrap();
        }
        let has: i64 = db.query_row(HAS_STEP_AT, [], |row| row.get(0)).unwrap();
        assert_eq!(has, 1);
        for statement in INDEXES {
            db.execute(statement, []).unwrap();
        }
        let version: String = db.query_row(SCHEMA_VERSION, [], |row| row.get(0)).unwrap();
        assert_eq!(version, VERSION);
        let polls: Vec<String> = db
            .prepare(DUE_POLLS)
            .unwrap()
            .query_map(params![100, 10], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(polls, ["t1"], "a dropped task is not polled");
        let steps: Vec<String> = db
            .prepare(DUE_STEPS)
            .unwrap()
            .query_map(params![100, 10], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(steps, ["t1", "t2"], "every due task, until the alarm saves its step's time");
    }

    /// Prints what the alarm's own queries cost at 100 and 100,000 tasks; asserts nothing
    /// about time, so it runs only when asked: `cargo test --lib record::table -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "a measurement: run with --ignored --nocapture"]
    fn the_alarms_queries_cost_the_same_at_100_and_100_000_tasks() {
        let mut figures = Vec::new();
        for count in [100, 100_000] {
            let db = open();
            fill(&db, count);
            let started = Instant::now();
            let rounds = 200;
            for _ in 0..rounds {
                for (query, bindings) in
                    [(DUE, 2), (DUE_STEPS, 2), (DUE_POLLS, 2), (EXPIRED, 2), (NEXT_DUE, 0), (RUNNING, 0)]
                {
                    let mut statement = db.prepare_cached(query).unwrap();
                    let values: Vec<i64> = [i64::MAX / 2, 25][..bindings].to_vec();
                    let mut rows = statement.query(rusqlite::params_from_iter(values)).unwrap();
                    while rows.next().unwrap().is_some() {}
                }
            }
            figures.push((count, started.elapsed().as_secs_f64() * 1_000.0 / f64::from(rounds)));
        }
        for (count, ms) in &figures {
            println!("the alarm's queries at {count} tasks: {ms:.3} ms");
        }
        println!("ratio 100,000 : 100 = {:.2}", figures[1].1 / figures[0].1);
    }
}
