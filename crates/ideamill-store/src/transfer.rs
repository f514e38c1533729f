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

use async_trait::async_trait;
use futures_util::TryStreamExt;
use futures_util::stream::BoxStream;

use crate::{Result, StoreError, is_postgres_url, postgres, redact_url, sqlite};

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
    /// One entry per table.
    pub tables: Vec<TableCopy>,
}

/// Rows copied into one table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableCopy {
    /// The table's name.
    pub table: String,
    /// Rows copied.
    pub rows: u64,
}

/// Rows in the target's tables, to refuse overwriting data by accident.
pub async fn target_rows(to: &str) -> Result<Vec<TableCopy>> {
    let mut target = connect(to, false).await?;
    let mut counts = Vec::new();
    for table in store_tables(&mut *target).await? {
        let rows = count(&mut *target, &table).await?;
        counts.push(TableCopy { table, rows });
    }
    target.close().await;
    Ok(counts)
}

/// Copy everything from `from` into `to`. With `replace`, rows already in
/// the target are deleted first (in the same transaction); without it, a
/// target holding any row is refused.
pub async fn copy(from: &str, to: &str, replace: bool) -> Result<CopyReport> {
    let mut source = connect(from, true).await?;
    let mut target = connect(to, false).await?;
    let result = copy_between(&mut *source, &mut *target, replace).await;
    if result.is_err() {
        let _ = target.execute("ROLLBACK").await;
    }
    source.close().await;
    target.close().await;
    result
}

async fn copy_between(
    source: &mut dyn Endpoint,
    target: &mut dyn Endpoint,
    replace: bool,
) -> Result<CopyReport> {
    source.begin_snapshot().await?;
    let mut tables = store_tables(source).await?;
    tables.sort_by_key(|t| {
        (
            ORDER.iter().position(|o| o == t).unwrap_or(ORDER.len()),
            t.clone(),
        )
    });
    let target_tables = store_tables(target).await?;
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
        let n = count(target, table).await?;
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
        let in_source = count(source, table).await?;
        let in_target = count(target, table).await?;
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
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bool(bool),
    Bytes(Vec<u8>),
}

async fn copy_table(
    source: &mut dyn Endpoint,
    target: &mut dyn Endpoint,
    table: &str,
    columns: &[&str],
    target_types: &[&str],
) -> Result<u64> {
    let list = columns.join(", ");
    let sql = format!("SELECT {list} FROM {table} ORDER BY 1");
    let mut copied = 0u64;
    let mut chunk: Vec<Vec<Value>> = Vec::with_capacity(CHUNK);
    let mut rows = source.values(&sql);
    while let Some(row) = rows.try_next().await? {
        chunk.push(row);
        if chunk.len() == CHUNK {
            copied += target.insert(table, columns, target_types, &chunk).await?;
            chunk.clear();
        }
    }
    drop(rows);
    if !chunk.is_empty() {
        copied += target.insert(table, columns, target_types, &chunk).await?;
    }
    Ok(copied)
}

/// A plain connection to the database a store URL names.
async fn connect(url: &str, read_only: bool) -> Result<Box<dyn Endpoint>> {
    if is_postgres_url(url) {
        postgres::copy_endpoint(url).await
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        sqlite::copy_endpoint(url, path, read_only).await
    } else {
        Err(StoreError::Unsupported(format!(
            "unknown store URL scheme in {}",
            redact_url(url)
        )))
    }
}

async fn count(db: &mut dyn Endpoint, table: &str) -> Result<u64> {
    let sql = format!("SELECT count(*) FROM \"{table}\"");
    match db.values(&sql).try_next().await?.as_deref() {
        Some([Value::Int(n)]) => Ok((*n).max(0) as u64),
        other => Err(StoreError::Corrupt(format!(
            "counting the rows of `{table}` gave {other:?}"
        ))),
    }
}

/// The store's tables: not the schema's own.
async fn store_tables(db: &mut dyn Endpoint) -> Result<Vec<String>> {
    Ok(db
        .tables()
        .await?
        .into_iter()
        .filter(|t| t != "ideamill_schema")
        .collect())
}

/// One end of a copy: a plain connection to either database, as each
/// database does it (`sqlite/copy.rs`, `postgres/copy.rs`).
// Not `Send`: sqlx's statement futures on a borrowed connection cannot be
// proved `Send` inside a boxed trait future, and a copy runs on the task
// that asked for it.
#[async_trait(?Send)]
pub(crate) trait Endpoint {
    async fn execute(&mut self, sql: &str) -> Result<()>;
    async fn close(self: Box<Self>);
    /// One consistent view of the source for the whole copy.
    async fn begin_snapshot(&mut self) -> Result<()>;
    /// The target's transaction, with triggers off and foreign keys checked
    /// only at the end. Returns the SQLite triggers it dropped.
    async fn begin_write(&mut self) -> Result<Vec<(String, String)>>;
    /// Triggers back on, what they keep rebuilt, foreign keys checked, new
    /// items' ids above `item_floor`, commit.
    async fn finish_write(
        &mut self,
        tables: &[String],
        triggers: &[(String, String)],
        item_floor: i64,
    ) -> Result<()>;
    /// The highest item id this database ever gave: the ids in use and
    /// those of items since deleted.
    async fn item_id_floor(&mut self) -> Result<i64>;
    /// The tables to copy (those derived from others are rebuilt instead).
    async fn tables(&mut self) -> Result<Vec<String>>;
    /// Column names and declared types, in table order.
    async fn columns(&mut self, table: &str) -> Result<Vec<(String, String)>>;
    /// The rows of a query, each as its values.
    fn values<'a>(&'a mut self, sql: &'a str) -> BoxStream<'a, Result<Vec<Value>>>;
    /// Insert rows; values are converted to the target column's type.
    async fn insert(
        &mut self,
        table: &str,
        columns: &[&str],
        types: &[&str],
        rows: &[Vec<Value>],
    ) -> Result<u64>;
}
