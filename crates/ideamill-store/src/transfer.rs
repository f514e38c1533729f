//! Copying a whole store from one database to another (`ideamill store
//! copy`), between SQLite and PostgreSQL in either direction: every table
//! but the schema's own, every column, every row, ids kept.
//!
//! The source is read in one snapshot and the target written in one
//! transaction: a copy that fails half-way leaves the target as it was. The
//! row counts of every table are compared before the commit. Triggers are
//! off while the rows go in (they would rewrite copied items), foreign keys
//! are checked at the end, and PostgreSQL's id sequences are moved past the
//! copied ids. Item ids are never given twice: the target gives new items
//! ids above every item id the source or the target ever gave, even those of
//! items since pruned (SQLite's `id_high_water`, PostgreSQL's sequence).
//!
//! Both stores must have been opened (and so migrated) by this build first;
//! the caller also makes sure no engine is running on the source.

use std::collections::HashMap;

use futures_util::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::{Column, Connection, PgConnection, Row, SqliteConnection, TypeInfo, ValueRef};

use crate::{Result, StoreError, is_postgres_url, redact_url};

/// Tables in an order that inserts parents before children; tables not
/// named here (added by later migrations) follow, by name.
const ORDER: &[&str] = &[
    "items",
    "jobs",
    "attempts",
    "outputs",
    "feedback",
    "events",
    "processes",
    "intake_sources",
];

/// Rows per insert statement.
const CHUNK: usize = 500;

/// Rows copied, per table, in copy order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyReport {
    pub tables: Vec<TableCopy>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableCopy {
    pub table: String,
    pub rows: u64,
}

/// Rows in the target's tables, to refuse overwriting data by accident.
pub async fn target_rows(to: &str) -> Result<Vec<TableCopy>> {
    let mut target = Db::connect(to, false).await?;
    let mut counts = Vec::new();
    for table in target.tables().await? {
        let rows = target.count(&table).await?;
        counts.push(TableCopy { table, rows });
    }
    target.close().await;
    Ok(counts)
}

/// Copy everything from `from` into `to`. With `replace`, rows already in
/// the target are deleted first (in the same transaction); without it, a
/// target holding any row is refused.
pub async fn copy(from: &str, to: &str, replace: bool) -> Result<CopyReport> {
    let mut source = Db::connect(from, true).await?;
    let mut target = Db::connect(to, false).await?;
    let result = copy_between(&mut source, &mut target, replace).await;
    if result.is_err() {
        target.rollback().await;
    }
    source.close().await;
    target.close().await;
    result
}

async fn copy_between(source: &mut Db, target: &mut Db, replace: bool) -> Result<CopyReport> {
    source.begin_snapshot().await?;
    let mut tables = source.tables().await?;
    tables.sort_by_key(|t| {
        (
            ORDER.iter().position(|o| o == t).unwrap_or(ORDER.len()),
            t.clone(),
        )
    });
    let target_tables = target.tables().await?;
    let mut columns = HashMap::new();
    for table in &tables {
        if !target_tables.contains(table) {
            return Err(StoreError::InvalidRequest(format!(
                "the target has no table `{table}`: is it an older ideamill's store?"
            )));
        }
        let src = source.columns(table).await?;
        let dst = target.columns(table).await?;
        for (column, _) in &src {
            if !dst.iter().any(|(c, _)| c == column) {
                return Err(StoreError::InvalidRequest(format!(
                    "the target's table `{table}` has no column `{column}`: is it an older ideamill's store?"
                )));
            }
        }
        let types: HashMap<String, String> = dst.into_iter().collect();
        columns.insert(table.clone(), (src, types));
    }

    let triggers = target.begin_write().await?;
    // Before anything of the target is replaced: its own items may have
    // workspace folders too.
    let item_floor = source
        .item_id_floor()
        .await?
        .max(target.item_id_floor().await?);
    let mut held = Vec::new();
    for table in &tables {
        let n = target.count(table).await?;
        if n > 0 {
            held.push(format!("{n} {table}"));
        }
    }
    if !held.is_empty() {
        if !replace {
            return Err(StoreError::InvalidRequest(format!(
                "the target is not empty ({}); pass --force to replace what it holds",
                held.join(", ")
            )));
        }
        for table in tables.iter().rev() {
            target.execute(&format!("DELETE FROM {table}")).await?;
        }
    }

    let mut report = CopyReport::default();
    for table in &tables {
        let (src, types) = &columns[table];
        let names: Vec<&str> = src.iter().map(|(c, _)| c.as_str()).collect();
        let target_types: Vec<&str> = names
            .iter()
            .map(|c| types.get(*c).map_or("", String::as_str))
            .collect();
        let copied = copy_table(source, target, table, &names, &target_types).await?;
        let in_source = source.count(table).await?;
        let in_target = target.count(table).await?;
        if copied != in_source || in_target != in_source {
            return Err(StoreError::Corrupt(format!(
                "table `{table}`: the source has {in_source} rows, {copied} were read and the target has {in_target}; nothing was committed"
            )));
        }
        report.tables.push(TableCopy {
            table: table.clone(),
            rows: copied,
        });
    }
    target.finish_write(&tables, &triggers, item_floor).await?;
    source.execute("COMMIT").await?;
    Ok(report)
}

/// A value as either database stores it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bool(bool),
    Bytes(Vec<u8>),
}

async fn copy_table(
    source: &mut Db,
    target: &mut Db,
    table: &str,
    columns: &[&str],
    target_types: &[&str],
) -> Result<u64> {
    let list = columns.join(", ");
    let sql = format!("SELECT {list} FROM {table} ORDER BY 1");
    let mut copied = 0u64;
    let mut chunk: Vec<Vec<Value>> = Vec::with_capacity(CHUNK);
    match source {
        Db::Sqlite(conn) => {
            let mut rows = sqlx::query(&sql).fetch(&mut *conn);
            while let Some(row) = rows.try_next().await? {
                chunk.push(sqlite_values(&row)?);
                if chunk.len() == CHUNK {
                    copied += target.insert(table, columns, target_types, &chunk).await?;
                    chunk.clear();
                }
            }
        }
        Db::Postgres(conn) => {
            let mut rows = sqlx::query(&sql).fetch(&mut *conn);
            while let Some(row) = rows.try_next().await? {
                chunk.push(pg_values(&row)?);
                if chunk.len() == CHUNK {
                    copied += target.insert(table, columns, target_types, &chunk).await?;
                    chunk.clear();
                }
            }
        }
    }
    if !chunk.is_empty() {
        copied += target.insert(table, columns, target_types, &chunk).await?;
    }
    Ok(copied)
}

fn sqlite_values(row: &SqliteRow) -> Result<Vec<Value>> {
    (0..row.columns().len())
        .map(|i| {
            let raw = row.try_get_raw(i)?;
            if raw.is_null() {
                return Ok(Value::Null);
            }
            // SQLite types values, not columns: read each as what it is.
            let kind = raw.type_info().name().to_string();
            Ok(match kind.as_str() {
                "INTEGER" | "BOOLEAN" => Value::Int(row.try_get_unchecked(i)?),
                "REAL" => Value::Real(row.try_get_unchecked(i)?),
                "BLOB" => Value::Bytes(row.try_get_unchecked(i)?),
                _ => Value::Text(row.try_get_unchecked(i)?),
            })
        })
        .collect()
}

fn pg_values(row: &PgRow) -> Result<Vec<Value>> {
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let kind = column.type_info().name().to_string();
            Ok(match kind.as_str() {
                "INT8" => row.try_get::<Option<i64>, _>(i)?.map(Value::Int),
                "INT4" => row
                    .try_get::<Option<i32>, _>(i)?
                    .map(|v| Value::Int(v.into())),
                "INT2" => row
                    .try_get::<Option<i16>, _>(i)?
                    .map(|v| Value::Int(v.into())),
                "BOOL" => row.try_get::<Option<bool>, _>(i)?.map(Value::Bool),
                "FLOAT8" => row.try_get::<Option<f64>, _>(i)?.map(Value::Real),
                "FLOAT4" => row
                    .try_get::<Option<f32>, _>(i)?
                    .map(|v| Value::Real(v.into())),
                "BYTEA" => row.try_get::<Option<Vec<u8>>, _>(i)?.map(Value::Bytes),
                "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => {
                    row.try_get::<Option<String>, _>(i)?.map(Value::Text)
                }
                other => {
                    return Err(StoreError::Unsupported(format!(
                        "cannot copy a column of type {other} ({})",
                        column.name()
                    )));
                }
            }
            .unwrap_or(Value::Null))
        })
        .collect()
}

/// A plain connection to either database.
enum Db {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Db {
    async fn connect(url: &str, read_only: bool) -> Result<Db> {
        let name = redact_url(url);
        if is_postgres_url(url) {
            let conn = PgConnection::connect(url)
                .await
                .map_err(|e| StoreError::Unsupported(format!("cannot connect to {name}: {e}")))?;
            Ok(Db::Postgres(conn))
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            let options = SqliteConnectOptions::new()
                .filename(path)
                .read_only(read_only)
                .busy_timeout(std::time::Duration::from_secs(10));
            let conn = SqliteConnection::connect_with(&options)
                .await
                .map_err(|e| StoreError::Unsupported(format!("cannot open {name}: {e}")))?;
            Ok(Db::Sqlite(conn))
        } else {
            Err(StoreError::Unsupported(format!(
                "unknown store URL scheme in {name}"
            )))
        }
    }

    async fn close(self) {
        let _ = match self {
            Db::Sqlite(c) => c.close().await,
            Db::Postgres(c) => c.close().await,
        };
    }

    async fn execute(&mut self, sql: &str) -> Result<()> {
        match self {
            Db::Sqlite(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ())?,
            Db::Postgres(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ())?,
        }
        Ok(())
    }

    async fn rollback(&mut self) {
        let _ = self.execute("ROLLBACK").await;
    }

    /// One consistent view of the source for the whole copy.
    async fn begin_snapshot(&mut self) -> Result<()> {
        match self {
            Db::Sqlite(_) => self.execute("BEGIN").await,
            Db::Postgres(_) => {
                self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await
            }
        }
    }

    /// The target's transaction, with triggers off and foreign keys checked
    /// only at the end. Returns the SQLite triggers it dropped.
    async fn begin_write(&mut self) -> Result<Vec<(String, String)>> {
        match self {
            Db::Sqlite(c) => {
                // Must be set outside a transaction; checked before commit.
                sqlx::raw_sql("PRAGMA foreign_keys = OFF")
                    .execute(&mut *c)
                    .await?;
                sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *c).await?;
                // Triggers are dropped for the copy and created again from
                // their own definitions before the commit.
                let triggers: Vec<(String, String)> = sqlx::query_as(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND sql IS NOT NULL",
                )
                .fetch_all(&mut *c)
                .await?;
                for (name, _) in &triggers {
                    sqlx::raw_sql(&format!("DROP TRIGGER \"{name}\""))
                        .execute(&mut *c)
                        .await?;
                }
                Ok(triggers)
            }
            Db::Postgres(c) => {
                sqlx::raw_sql("BEGIN").execute(&mut *c).await?;
                sqlx::raw_sql("SET CONSTRAINTS ALL DEFERRED")
                    .execute(&mut *c)
                    .await?;
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()",
                )
                .fetch_all(&mut *c)
                .await?;
                for table in tables {
                    sqlx::raw_sql(&format!("ALTER TABLE \"{table}\" DISABLE TRIGGER USER"))
                        .execute(&mut *c)
                        .await?;
                }
                Ok(Vec::new())
            }
        }
    }

    /// Triggers back on, foreign keys checked, sequences moved, commit.
    async fn finish_write(
        &mut self,
        tables: &[String],
        triggers: &[(String, String)],
        item_floor: i64,
    ) -> Result<()> {
        match self {
            Db::Sqlite(c) => {
                for (_, sql) in triggers {
                    sqlx::raw_sql(sql).execute(&mut *c).await?;
                }
                // The copy ran without the triggers that keep the text-search
                // index and the counts per state: build them again from the
                // copied items.
                let has_fts: Option<String> = sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'items_fts'",
                )
                .fetch_optional(&mut *c)
                .await?;
                if has_fts.is_some() {
                    sqlx::raw_sql("INSERT INTO items_fts (items_fts) VALUES ('rebuild')")
                        .execute(&mut *c)
                        .await?;
                }
                let has_counts: Option<String> = sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'item_counts'",
                )
                .fetch_optional(&mut *c)
                .await?;
                if has_counts.is_some() {
                    sqlx::raw_sql(
                        "UPDATE item_counts SET n = (SELECT count(*) FROM items WHERE items.state = item_counts.state)",
                    )
                    .execute(&mut *c)
                    .await?;
                }
                // New items get ids above every item id ever given.
                if sqlite_has_table(c, "id_high_water").await? {
                    sqlx::query(
                        "INSERT INTO id_high_water (name, id) VALUES ('items', ?)
                         ON CONFLICT (name) DO UPDATE SET id = MAX(id, excluded.id)",
                    )
                    .bind(item_floor)
                    .execute(&mut *c)
                    .await?;
                }
                let broken: Vec<SqliteRow> = sqlx::query("PRAGMA foreign_key_check")
                    .fetch_all(&mut *c)
                    .await?;
                if let Some(r) = broken.first() {
                    let table: String = r.try_get(0)?;
                    return Err(StoreError::Corrupt(format!(
                        "{} copied rows point at rows that do not exist (first in `{table}`); nothing was committed",
                        broken.len()
                    )));
                }
                sqlx::raw_sql("COMMIT").execute(&mut *c).await?;
                sqlx::raw_sql("PRAGMA foreign_keys = ON")
                    .execute(&mut *c)
                    .await?;
            }
            Db::Postgres(c) => {
                // Check the deferred foreign keys now: a table with pending
                // checks cannot have its triggers switched back on.
                sqlx::raw_sql("SET CONSTRAINTS ALL IMMEDIATE")
                    .execute(&mut *c)
                    .await?;
                let all: Vec<String> = sqlx::query_scalar(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()",
                )
                .fetch_all(&mut *c)
                .await?;
                for table in all {
                    sqlx::raw_sql(&format!("ALTER TABLE \"{table}\" ENABLE TRIGGER USER"))
                        .execute(&mut *c)
                        .await?;
                }
                // The copy ran without the triggers that keep the counts per
                // state: count the copied items.
                let has_counts: bool =
                    sqlx::query_scalar("SELECT to_regclass('item_counts') IS NOT NULL")
                        .fetch_one(&mut *c)
                        .await?;
                if has_counts {
                    sqlx::raw_sql(
                        "DELETE FROM item_count_deltas;
                         UPDATE item_counts SET n = (SELECT count(*) FROM items WHERE items.state = item_counts.state);",
                    )
                    .execute(&mut *c)
                    .await?;
                }
                // Identity columns: the next id follows the copied ones, and
                // for items every item id ever given.
                let identities: Vec<(String, String)> = sqlx::query_as(
                    "SELECT table_name::text, column_name::text FROM information_schema.columns
                     WHERE table_schema = current_schema()
                       AND (is_identity = 'YES' OR column_default LIKE 'nextval%')",
                )
                .fetch_all(&mut *c)
                .await?;
                for (table, column) in identities.iter().filter(|(t, _)| tables.contains(t)) {
                    let floor = if (table.as_str(), column.as_str()) == ("items", "id") {
                        item_floor
                    } else {
                        0
                    };
                    sqlx::query(&format!(
                        "SELECT setval(pg_get_serial_sequence($1, $2),
                                       GREATEST(COALESCE(MAX(\"{column}\"), 0), $3) + 1, false)
                         FROM \"{table}\""
                    ))
                    .bind(table)
                    .bind(column)
                    .bind(floor)
                    .execute(&mut *c)
                    .await?;
                }
                sqlx::raw_sql("COMMIT").execute(&mut *c).await?;
            }
        }
        Ok(())
    }

    /// The highest item id this database ever gave: the ids in use and those
    /// of items since deleted (SQLite's `id_high_water`, what PostgreSQL's
    /// sequence handed out).
    async fn item_id_floor(&mut self) -> Result<i64> {
        match self {
            Db::Sqlite(c) => {
                let sql = if sqlite_has_table(c, "id_high_water").await? {
                    "SELECT MAX(COALESCE((SELECT MAX(id) FROM items), 0),
                                COALESCE((SELECT id FROM id_high_water WHERE name = 'items'), 0))"
                } else {
                    "SELECT COALESCE(MAX(id), 0) FROM items"
                };
                Ok(sqlx::query_scalar(sql).fetch_one(&mut *c).await?)
            }
            Db::Postgres(c) => {
                let in_use: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM items")
                    .fetch_one(&mut *c)
                    .await?;
                let sequence: Option<String> =
                    sqlx::query_scalar("SELECT pg_get_serial_sequence('items', 'id')")
                        .fetch_one(&mut *c)
                        .await?;
                let Some(sequence) = sequence else {
                    return Ok(in_use);
                };
                // `last_value` was handed out only once `is_called`.
                let (last, called): (i64, bool) =
                    sqlx::query_as(&format!("SELECT last_value, is_called FROM {sequence}"))
                        .fetch_one(&mut *c)
                        .await?;
                Ok(in_use.max(if called { last } else { last - 1 }))
            }
        }
    }

    /// The store's tables (not the schema table, not the database's own).
    async fn tables(&mut self) -> Result<Vec<String>> {
        let tables: Vec<String> = match self {
            Db::Sqlite(c) => {
                sqlx::query_scalar(
                    // The text-search index (`items_fts` and its shadow
                    // tables) and the counts per state are derived from
                    // `items`: rebuilt, not copied.
                    // `id_high_water` is SQLite's own and copied as a whole
                    // (`item_id_floor`).
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
                       AND name NOT LIKE 'items_fts%' AND name NOT IN ('item_counts', 'id_high_water')
                     ORDER BY name",
                )
                .fetch_all(c)
                .await?
            }
            Db::Postgres(c) => {
                sqlx::query_scalar(
                    // The counts per state are derived from `items`: rebuilt,
                    // not copied.
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()
                       AND tablename NOT IN ('item_counts', 'item_count_deltas') ORDER BY 1",
                )
                .fetch_all(c)
                .await?
            }
        };
        Ok(tables
            .into_iter()
            .filter(|t| t != "ideamill_schema")
            .collect())
    }

    /// Column names and declared types, in table order.
    async fn columns(&mut self, table: &str) -> Result<Vec<(String, String)>> {
        Ok(match self {
            Db::Sqlite(c) => {
                sqlx::query_as(&format!(
                    "SELECT name, type FROM pragma_table_info('{table}') ORDER BY cid"
                ))
                .fetch_all(c)
                .await?
            }
            Db::Postgres(c) => {
                sqlx::query_as(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                )
                .bind(table)
                .fetch_all(c)
                .await?
            }
        })
    }

    async fn count(&mut self, table: &str) -> Result<u64> {
        let sql = format!("SELECT count(*) FROM \"{table}\"");
        let n: i64 = match self {
            Db::Sqlite(c) => sqlx::query_scalar(&sql).fetch_one(c).await?,
            Db::Postgres(c) => sqlx::query_scalar(&sql).fetch_one(c).await?,
        };
        Ok(n.max(0) as u64)
    }

    /// Insert rows; values are converted to the target column's type.
    async fn insert(
        &mut self,
        table: &str,
        columns: &[&str],
        types: &[&str],
        rows: &[Vec<Value>],
    ) -> Result<u64> {
        let head = format!("INSERT INTO \"{table}\" ({}) ", columns.join(", "));
        match self {
            Db::Sqlite(c) => {
                let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(head);
                q.push_values(rows, |mut b, row| {
                    for v in row {
                        match v.clone() {
                            Value::Null => b.push_bind(None::<i64>),
                            Value::Int(i) => b.push_bind(i),
                            Value::Real(f) => b.push_bind(f),
                            Value::Text(s) => b.push_bind(s),
                            Value::Bool(x) => b.push_bind(i64::from(x)),
                            Value::Bytes(x) => b.push_bind(x),
                        };
                    }
                });
                Ok(q.build().execute(c).await?.rows_affected())
            }
            Db::Postgres(c) => {
                let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(head);
                let mut bad = None;
                q.push_values(rows, |mut b, row| {
                    for (v, ty) in row.iter().zip(types) {
                        match pg_value(v, ty) {
                            Ok(PgValue::Int(x)) => b.push_bind(x),
                            Ok(PgValue::Real(x)) => b.push_bind(x),
                            Ok(PgValue::Bool(x)) => b.push_bind(x),
                            Ok(PgValue::Text(x)) => b.push_bind(x),
                            Ok(PgValue::Bytes(x)) => b.push_bind(x),
                            Err(e) => {
                                bad.get_or_insert(e);
                                b.push_bind(None::<String>)
                            }
                        };
                    }
                });
                if let Some(e) = bad {
                    return Err(StoreError::Unsupported(format!("table `{table}`: {e}")));
                }
                Ok(q.build().execute(c).await?.rows_affected())
            }
        }
    }
}

async fn sqlite_has_table(c: &mut SqliteConnection, name: &str) -> Result<bool> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?")
            .bind(name)
            .fetch_optional(c)
            .await?;
    Ok(found.is_some())
}

/// A value typed for a PostgreSQL column (a NULL keeps the column's type).
enum PgValue {
    Int(Option<i64>),
    Real(Option<f64>),
    Bool(Option<bool>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

fn pg_value(v: &Value, column_type: &str) -> std::result::Result<PgValue, String> {
    let kind = match column_type {
        "bigint" | "integer" | "smallint" => 'i',
        "double precision" | "real" | "numeric" => 'r',
        "boolean" => 'b',
        "bytea" => 'x',
        _ => 't',
    };
    Ok(match (kind, v) {
        ('i', Value::Null) => PgValue::Int(None),
        ('r', Value::Null) => PgValue::Real(None),
        ('b', Value::Null) => PgValue::Bool(None),
        ('x', Value::Null) => PgValue::Bytes(None),
        (_, Value::Null) => PgValue::Text(None),
        ('i', Value::Int(i)) => PgValue::Int(Some(*i)),
        ('i', Value::Bool(b)) => PgValue::Int(Some(i64::from(*b))),
        ('r', Value::Real(f)) => PgValue::Real(Some(*f)),
        ('r', Value::Int(i)) => PgValue::Real(Some(*i as f64)),
        ('b', Value::Bool(b)) => PgValue::Bool(Some(*b)),
        ('b', Value::Int(i)) => PgValue::Bool(Some(*i != 0)),
        ('x', Value::Bytes(x)) => PgValue::Bytes(Some(x.clone())),
        ('t', Value::Text(s)) => PgValue::Text(Some(s.clone())),
        ('t', Value::Int(i)) => PgValue::Text(Some(i.to_string())),
        ('t', Value::Real(f)) => PgValue::Text(Some(f.to_string())),
        (_, other) => return Err(format!("cannot store {other:?} in a {column_type} column")),
    })
}
