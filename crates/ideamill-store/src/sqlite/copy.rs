//! `ideamill store copy` on SQLite: one end of a copy (`transfer.rs`), on a
//! plain connection. Triggers are dropped while rows go in and created again
//! from their own definitions; what they keep (the text index, the counts
//! per state) is rebuilt from the copied items, and so are the gate
//! tallies, from the copied jobs.

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::{Connection, Row, SqliteConnection, TypeInfo, ValueRef};

use crate::transfer::{Endpoint, Value};
use crate::{Result, StoreError, redact_url};

/// A plain connection for a copy, read-only for its source.
pub(crate) async fn copy_endpoint(
    url: &str,
    path: &str,
    read_only: bool,
) -> Result<Box<dyn Endpoint>> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(read_only)
        .busy_timeout(std::time::Duration::from_secs(10));
    let conn = SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| StoreError::Unsupported(format!("cannot open {}: {e}", redact_url(url))))?;
    Ok(Box::new(conn))
}

#[async_trait(?Send)]
impl Endpoint for SqliteConnection {
    async fn execute(&mut self, sql: &str) -> Result<()> {
        sqlx::raw_sql(sql).execute(&mut *self).await?;
        Ok(())
    }

    async fn begin_snapshot(&mut self) -> Result<()> {
        Endpoint::execute(self, "BEGIN").await
    }

    async fn begin_write(&mut self) -> Result<Vec<(String, String)>> {
        // Must be set outside a transaction; checked before commit.
        sqlx::raw_sql("PRAGMA foreign_keys = OFF")
            .execute(&mut *self)
            .await?;
        sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *self).await?;
        // Triggers are dropped for the copy and created again from
        // their own definitions before the commit.
        let triggers: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND sql IS NOT NULL",
        )
        .fetch_all(&mut *self)
        .await?;
        for (name, _) in &triggers {
            sqlx::raw_sql(&format!("DROP TRIGGER \"{name}\""))
                .execute(&mut *self)
                .await?;
        }
        Ok(triggers)
    }

    async fn finish_write(
        &mut self,
        _tables: &[String],
        triggers: &[(String, String)],
        item_floor: i64,
    ) -> Result<()> {
        for (_, sql) in triggers {
            sqlx::raw_sql(sql).execute(&mut *self).await?;
        }
        // The copy ran without the triggers that keep the text-search
        // index and the counts per state: build them again from the
        // copied items.
        let has_fts: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'items_fts'",
        )
        .fetch_optional(&mut *self)
        .await?;
        if has_fts.is_some() {
            sqlx::raw_sql("INSERT INTO items_fts (items_fts) VALUES ('rebuild')")
                .execute(&mut *self)
                .await?;
        }
        let has_counts: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'item_counts'",
        )
        .fetch_optional(&mut *self)
        .await?;
        if has_counts.is_some() {
            sqlx::raw_sql(
                "UPDATE item_counts SET n = (SELECT count(*) FROM items WHERE items.state = item_counts.state)",
            )
            .execute(&mut *self)
            .await?;
        }
        if sqlite_has_table(self, "queued_counts").await? {
            sqlx::raw_sql(crate::common::RECOUNT_QUEUED)
                .execute(&mut *self)
                .await?;
        }
        // The gate tallies are counted again from the copied jobs.
        if sqlite_has_table(self, "gate_tallies").await? {
            sqlx::raw_sql(&crate::shared::tallies::recount_sql())
                .execute(&mut *self)
                .await?;
        }
        // New items get ids above every item id ever given.
        if sqlite_has_table(self, "id_high_water").await? {
            sqlx::query(
                "INSERT INTO id_high_water (name, id) VALUES ('items', ?)
                 ON CONFLICT (name) DO UPDATE SET id = MAX(id, excluded.id)",
            )
            .bind(item_floor)
            .execute(&mut *self)
            .await?;
        }
        let broken: Vec<SqliteRow> = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(&mut *self)
            .await?;
        if let Some(r) = broken.first() {
            let table: String = r.try_get(0)?;
            return Err(StoreError::Corrupt(format!(
                "{} copied rows point at rows that do not exist (first in `{table}`); nothing was committed",
                broken.len()
            )));
        }
        sqlx::raw_sql("COMMIT").execute(&mut *self).await?;
        sqlx::raw_sql("PRAGMA foreign_keys = ON")
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn item_id_floor(&mut self) -> Result<i64> {
        let sql = if sqlite_has_table(self, "id_high_water").await? {
            "SELECT MAX(COALESCE((SELECT MAX(id) FROM items), 0),
                        COALESCE((SELECT id FROM id_high_water WHERE name = 'items'), 0))"
        } else {
            "SELECT COALESCE(MAX(id), 0) FROM items"
        };
        Ok(sqlx::query_scalar(sql).fetch_one(&mut *self).await?)
    }

    async fn tables(&mut self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            // The text-search index (`items_fts` and its shadow
            // tables), the counts (items' per state, queued jobs' per stage) and the gate tallies are
            // derived from `items` and `jobs`: rebuilt, not copied.
            // `id_high_water` is SQLite's own and copied as a whole
            // (`item_id_floor`).
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
               AND name NOT LIKE 'items_fts%' AND name NOT IN ('item_counts', 'queued_counts', 'gate_tallies', 'id_high_water')
             ORDER BY name",
        )
        .fetch_all(&mut *self)
        .await?)
    }

    async fn columns(&mut self, table: &str) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(&format!(
            "SELECT name, type FROM pragma_table_info('{table}') ORDER BY cid"
        ))
        .fetch_all(&mut *self)
        .await?)
    }

    fn values<'a>(&'a mut self, sql: &'a str) -> BoxStream<'a, Result<Vec<Value>>> {
        sqlx::query(sql)
            .fetch(self)
            .map(|row| sqlite_values(&row?))
            .boxed()
    }

    async fn insert(
        &mut self,
        table: &str,
        columns: &[&str],
        _types: &[&str],
        rows: &[Vec<Value>],
    ) -> Result<u64> {
        let head = format!("INSERT INTO \"{table}\" ({}) ", columns.join(", "));
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
        Ok(q.build().execute(&mut *self).await?.rows_affected())
    }

    async fn close(self: Box<Self>) {
        let _ = Connection::close(*self).await;
    }
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

async fn sqlite_has_table(c: &mut SqliteConnection, name: &str) -> Result<bool> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?")
            .bind(name)
            .fetch_optional(c)
            .await?;
    Ok(found.is_some())
}
