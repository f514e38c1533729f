//! `ideamill store copy` on PostgreSQL: one end of a copy (`transfer.rs`),
//! on a plain connection. User triggers are off and foreign keys deferred
//! while rows go in; identity sequences are moved past the copied ids.

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use sqlx::postgres::PgRow;
use sqlx::{Column, Connection, PgConnection, Row, TypeInfo};

use crate::transfer::{Endpoint, Value};
use crate::{Result, StoreError, redact_url};

/// A plain connection for a copy.
pub(crate) async fn copy_endpoint(url: &str) -> Result<Box<dyn Endpoint>> {
    let conn = PgConnection::connect(url).await.map_err(|e| {
        StoreError::Unsupported(format!("cannot connect to {}: {e}", redact_url(url)))
    })?;
    Ok(Box::new(conn))
}

#[async_trait(?Send)]
impl Endpoint for PgConnection {
    async fn execute(&mut self, sql: &str) -> Result<()> {
        sqlx::raw_sql(sql).execute(&mut *self).await?;
        Ok(())
    }

    async fn begin_snapshot(&mut self) -> Result<()> {
        Endpoint::execute(self, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await
    }

    async fn begin_write(&mut self) -> Result<Vec<(String, String)>> {
        sqlx::raw_sql("BEGIN").execute(&mut *self).await?;
        sqlx::raw_sql("SET CONSTRAINTS ALL DEFERRED")
            .execute(&mut *self)
            .await?;
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()",
        )
        .fetch_all(&mut *self)
        .await?;
        for table in tables {
            sqlx::raw_sql(&format!("ALTER TABLE \"{table}\" DISABLE TRIGGER USER"))
                .execute(&mut *self)
                .await?;
        }
        Ok(Vec::new())
    }

    async fn finish_write(
        &mut self,
        tables: &[String],
        _triggers: &[(String, String)],
        item_floor: i64,
    ) -> Result<()> {
        // Check the deferred foreign keys now: a table with pending
        // checks cannot have its triggers switched back on.
        sqlx::raw_sql("SET CONSTRAINTS ALL IMMEDIATE")
            .execute(&mut *self)
            .await?;
        let all: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()",
        )
        .fetch_all(&mut *self)
        .await?;
        for table in all {
            sqlx::raw_sql(&format!("ALTER TABLE \"{table}\" ENABLE TRIGGER USER"))
                .execute(&mut *self)
                .await?;
        }
        // The copy ran without the triggers that keep the counters: count
        // them again from the copied rows, with no delta left pending.
        let recounts = [
            (
                "item_counts",
                "DELETE FROM item_count_deltas;
                 UPDATE item_counts SET n = (SELECT count(*) FROM items WHERE items.state = item_counts.state);"
                    .to_string(),
            ),
            (
                "queued_counts",
                format!(
                    "DELETE FROM queued_count_deltas; {}",
                    crate::common::RECOUNT_QUEUED
                ),
            ),
            (
                "gate_tallies",
                format!(
                    "DELETE FROM gate_tally_deltas; {}",
                    crate::shared::tallies::recount_sql()
                ),
            ),
        ];
        for (table, recount) in recounts {
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(table)
                .fetch_one(&mut *self)
                .await?;
            if exists {
                sqlx::raw_sql(&recount).execute(&mut *self).await?;
            }
        }
        // Identity columns: the next id follows the copied ones, and
        // for items every item id ever given.
        let identities: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema()
               AND (is_identity = 'YES' OR column_default LIKE 'nextval%')",
        )
        .fetch_all(&mut *self)
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
            .execute(&mut *self)
            .await?;
        }
        sqlx::raw_sql("COMMIT").execute(&mut *self).await?;
        Ok(())
    }

    async fn item_id_floor(&mut self) -> Result<i64> {
        let in_use: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM items")
            .fetch_one(&mut *self)
            .await?;
        let sequence: Option<String> =
            sqlx::query_scalar("SELECT pg_get_serial_sequence('items', 'id')")
                .fetch_one(&mut *self)
                .await?;
        let Some(sequence) = sequence else {
            return Ok(in_use);
        };
        // `last_value` was handed out only once `is_called`.
        let (last, called): (i64, bool) =
            sqlx::query_as(&format!("SELECT last_value, is_called FROM {sequence}"))
                .fetch_one(&mut *self)
                .await?;
        Ok(in_use.max(if called { last } else { last - 1 }))
    }

    async fn tables(&mut self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            // The counts per state and the gate tallies are derived
            // from `items` and `jobs`: rebuilt, not copied.
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()
               AND tablename NOT IN ('item_counts', 'item_count_deltas', 'queued_counts', 'queued_count_deltas', 'gate_tallies', 'gate_tally_deltas')
             ORDER BY 1",
        )
        .fetch_all(&mut *self)
        .await?)
    }

    async fn columns(&mut self, table: &str) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&mut *self)
        .await?)
    }

    fn values<'a>(&'a mut self, sql: &'a str) -> BoxStream<'a, Result<Vec<Value>>> {
        sqlx::query(sql)
            .fetch(self)
            .map(|row| pg_values(&row?))
            .boxed()
    }

    async fn insert(
        &mut self,
        table: &str,
        columns: &[&str],
        types: &[&str],
        rows: &[Vec<Value>],
    ) -> Result<u64> {
        let head = format!("INSERT INTO \"{table}\" ({}) ", columns.join(", "));
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
        Ok(q.build().execute(&mut *self).await?.rows_affected())
    }

    async fn close(self: Box<Self>) {
        let _ = Connection::close(*self).await;
    }
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
