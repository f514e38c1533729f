//! The store methods written once for both databases. Their SQL is the same
//! on SQLite and PostgreSQL: placeholders are `$n` everywhere (sqlx binds
//! SQLite's `$n` by its number), booleans are `true`/`false`, counts are
//! `COUNT(*) FILTER (WHERE …)` and sums are `CAST` to the type decoded. What
//! truly differs is a [`Backend`]: how a write transaction begins (SQLite's
//! `BEGIN IMMEDIATE`), how a read sees one snapshot, when a wake-up is sent
//! (PostgreSQL's `NOTIFY` inside the transaction), which clock judges leases,
//! the few statements that use it, and the hot paths (claim, finish,
//! heartbeat, release, context, queue depth), kept per backend where each
//! database has its fastest form.
//!
//! Every [`Store`] method is one of these functions or a hot path, so each is
//! still one transaction: the functions take the write transaction first
//! ([`Backend::write_tx`]) and end with [`Backend::commit`].

mod admin;
mod budget;
mod items;
mod jobs;
mod reads;
pub(crate) mod tallies;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use ideamill_core::machine::NextJob;
use ideamill_core::{FailureClass, ItemId, JobId, Millis};
use sqlx::pool::PoolConnection;
use sqlx::{Database, Encode, Executor, IntoArguments, Type};

use crate::common::{AttemptRecord, RowExt};
use crate::handoff::{Claim, ClaimerSlot, NewItems};
use crate::wake::WorkSignal;
use crate::*;

/// A write or read transaction of a backend's database.
pub(crate) type Tx<D> = sqlx::Transaction<'static, D>;

/// Ids the store read, written into a statement as `IN (…)`'s list: they
/// are numbers, so one text serves both databases whatever their array
/// types.
pub(crate) fn id_list(ids: &[ItemId]) -> String {
    ids.iter()
        .map(ItemId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value bound to a statement: the few kinds the store's columns hold.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
    Flag(bool),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

impl From<u32> for Arg<'_> {
    fn from(v: u32) -> Self {
        Arg::Int(Some(v.into()))
    }
}

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Flag(v)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Some(v))
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(Some(v))
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(v: &'a Option<String>) -> Self {
        Arg::Text(v.as_deref())
    }
}

/// Rows a statement changed, whatever the database.
pub(crate) trait Affected {
    fn affected(&self) -> u64;
}

impl Affected for sqlx::sqlite::SqliteQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl Affected for sqlx::postgres::PgQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// Statements run on a connection of either database, with [`Arg`]s bound
/// in order. The bounds sqlx needs are stated once, on the implementation.
pub(crate) trait Sql: Database<Row: RowExt> {
    fn rows<'e>(
        conn: &'e mut Self::Connection,
        sql: &'e str,
        args: &'e [Arg<'e>],
    ) -> BoxFuture<'e, Result<Vec<Self::Row>>>;

    fn row<'e>(
        conn: &'e mut Self::Connection,
        sql: &'e str,
        args: &'e [Arg<'e>],
    ) -> BoxFuture<'e, Result<Option<Self::Row>>>;

    /// Run a statement; the rows it changed.
    fn execute<'e>(
        conn: &'e mut Self::Connection,
        sql: &'e str,
        args: &'e [Arg<'e>],
    ) -> BoxFuture<'e, Result<u64>>;
}

impl<D> Sql for D
where
    D: Database<Row: RowExt, QueryResult: Affected>,
    for<'e> &'e mut D::Connection: Executor<'e, Database = D>,
    for<'q> D::Arguments<'q>: IntoArguments<'q, D>,
    for<'q> Option<i64>: Encode<'q, D> + Type<D>,
    for<'q> Option<&'q str>: Encode<'q, D> + Type<D>,
    for<'q> bool: Encode<'q, D> + Type<D>,
{
    fn rows<'e>(
        conn: &'e mut D::Connection,
        sql: &'e str,
        args: &'e [Arg<'e>],
    ) -> BoxFuture<'e, Result<Vec<D::Row>>> {
        let rows = conn.fetch_all(bound::<D>(sql, args));
        Box::pin(async move { Ok(rows.await?) })
    }

    fn row<'e>(
        conn: &'e mut D::Connection,
        sql: &'e str,
        args: &'e [Arg<'e>],
    ) -> BoxFuture<'e, Result<Option<D::Row>>> {
        let row = conn.fetch_optional(bound::<D>(sql, args));
        Box::pin(async move { Ok(row.await?) })
    }

    fn execute<'e>(
        conn: &'e mut D::Connection,
        sql: &'e str,
        args: &'e [Arg<'e>],
    ) -> BoxFuture<'e, Result<u64>> {
        let done = conn.execute(bound::<D>(sql, args));
        Box::pin(async move { Ok(done.await?.affected()) })
    }
}

fn bound<'q, D>(sql: &'q str, args: &'q [Arg<'q>]) -> sqlx::query::Query<'q, D, D::Arguments<'q>>
where
    D: Database,
    Option<i64>: Encode<'q, D> + Type<D>,
    Option<&'q str>: Encode<'q, D> + Type<D>,
    bool: Encode<'q, D> + Type<D>,
{
    args.iter().fold(sqlx::query(sql), |query, arg| match *arg {
        Arg::Int(v) => query.bind(v),
        Arg::Text(v) => query.bind(v),
        Arg::Flag(v) => query.bind(v),
    })
}

/// The one row a statement returns.
pub(crate) async fn one<D: Sql>(
    conn: &mut D::Connection,
    sql: &str,
    args: &[Arg<'_>],
) -> Result<D::Row> {
    D::row(conn, sql, args)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("no row from {sql}")))
}

/// What a database does its own way: how transactions begin and commit,
/// when wake-ups go out, the few statements that differ, and what only one
/// of them has. Implemented in `sqlite/mod.rs` and `postgres/mod.rs`; every
/// `Store` method is written once over this and [`Rows`], or is a hot path
/// ([`Leases`], [`Stages`]).
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    type Db: Sql;

    /// `state, n` per item state, however the database keeps them.
    const ITEM_COUNTS: &'static str;
    /// `stage, n`: the queued jobs per stage, however the database keeps
    /// them (one row per stage).
    const QUEUED_COUNTS: &'static str;
    /// The gate tallies' rows (`stage, round, model, outcome, n`, several
    /// rows per key allowed), however the database keeps them.
    const TALLIES: &'static str;
    /// Where a write adds to the gate tallies, and what follows its insert
    /// (`tallies::count`).
    const TALLIES_INTO: &'static str;
    const TALLIES_MERGE: &'static str;
    /// Appended to `retry_item`'s read of the item: its row lock, where
    /// rows are locked one by one.
    const LOCK_ITEM: &'static str;
    /// The id of an item inserted one at a time, as an SQL expression.
    const NEW_ITEM_ID: &'static str;
    /// The lease statements, judged by the clock the backend judges leases
    /// by. `$1` is the caller's `now`, `$2` [`Backend::store_clock`].
    /// A row (`id`) when any running job's lease has expired.
    const ANY_EXPIRED: &'static str;
    /// The expired jobs the reaper takes: the columns of
    /// [`common::claimed_job`] with `lease_owner` and `cancel_requested`.
    const EXPIRED_JOBS: &'static str;
    /// `n`, the running jobs whose lease expired.
    const EXPIRED_COUNT: &'static str;
    /// Expire the leases of process `$3` at once.
    const EXPIRE_LEASES: &'static str;
    /// Run first in [`Store::reserve`]'s transaction: what makes concurrent
    /// reservations wait for each other, if taking the write transaction
    /// does not already (PostgreSQL's advisory lock; SQLite's
    /// `BEGIN IMMEDIATE` already does).
    const LOCK_BUDGET: Option<&'static str> = None;

    /// Whether leases are judged by the database's clock (bound as `$2` of
    /// the lease statements).
    fn store_clock(&self) -> bool;

    /// A connection for one read.
    async fn read(&self) -> Result<PoolConnection<Self::Db>>;
    /// A read transaction that sees one snapshot.
    async fn read_tx(&self) -> Result<Tx<Self::Db>>;
    /// A write transaction that a concurrent writer cannot invalidate.
    async fn write_tx(&self) -> Result<Tx<Self::Db>>;
    /// Commit; with `wake`, every engine is woken once the work is visible.
    async fn commit(&self, tx: Tx<Self::Db>, wake: bool) -> Result<()>;

    /// The text index's FROM clause and condition (the query bound as `$4`),
    /// the id column pages follow, and the query for `terms`.
    fn search(terms: &[String]) -> (&'static str, &'static str, String);

    async fn quick_check(&self) -> Result<Vec<String>>;
    fn subscribe(&self) -> Result<Box<dyn WorkSignal>>;
    fn notify(&self);
    /// The engine of this process that new jobs are handed to, if any.
    fn claimer(&self) -> &ClaimerSlot;
    async fn close(&self);
    fn is_remote(&self) -> bool;
    async fn clock_millis(&self) -> Result<Option<Millis>>;
}

/// The rows written many at a time, each database in its fastest form
/// (`write.rs`): the once-written paths and the hot paths share them.
#[async_trait]
pub(crate) trait Rows: Backend {
    async fn insert_events(tx: &mut Tx<Self::Db>, events: &[NewEvent]) -> Result<()>;
    /// Enqueue jobs (the trigger keeps each item's current job).
    async fn insert_jobs(tx: &mut Tx<Self::Db>, jobs: &[(ItemId, &NextJob, Millis)]) -> Result<()>;
    async fn insert_attempts(tx: &mut Tx<Self::Db>, rows: &[AttemptRecord<'_>]) -> Result<()>;
    /// Fail active items, each with its reason.
    async fn fail_items(
        tx: &mut Tx<Self::Db>,
        rows: &[(ItemId, &str, FailureClass, Millis)],
    ) -> Result<()>;
    /// New active items, each with its first job; ids in input order.
    /// With `claim`, up to its slots of those jobs are inserted running
    /// under its owner's lease (as [`Leases::claim`] leaves them), unless an
    /// older job of their stage is runnable (`handoff.rs`).
    async fn insert_new_items(
        tx: &mut Tx<Self::Db>,
        items: &[NewItem],
        first: &NextJob,
        now: Millis,
        claim: Option<Claim<'_>>,
        clock: bool,
    ) -> Result<NewItems>;
    /// [`Rows::insert_new_items`] committed, the other engines woken if a
    /// job was left queued: all of [`Store::add_items`] but the hand-off. A
    /// database server does it in one statement, since an idea's pickup
    /// waits on every round trip here.
    async fn add_new_items(
        &self,
        items: &[NewItem],
        first: &NextJob,
        now: Millis,
        claim: Option<Claim<'_>>,
    ) -> Result<NewItems> {
        let mut tx = self.write_tx().await?;
        let added =
            Self::insert_new_items(&mut tx, items, first, now, claim, self.store_clock()).await?;
        self.commit(tx, added.any_queued()).await?;
        Ok(added)
    }
}

/// The hot paths of leases, per database (`leases.rs`): what [`Store`]
/// says of each.
#[async_trait]
pub(crate) trait Leases: Backend {
    async fn claim(
        &self,
        stage: &str,
        limit: u32,
        owner: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<ClaimedJob>>;
    async fn claim_with_contexts(
        &self,
        stage: &str,
        limit: u32,
        owner: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<(ClaimedJob, Option<ItemContext>)>>;
    async fn heartbeat(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        running: &[JobId],
    ) -> Result<Vec<JobId>>;
    async fn idle_beat(&self, owner: &str, now: Millis, silent_since: Millis) -> Result<IdleBeat>;
    async fn release(&self, owner: &str, now: Millis) -> Result<u64>;
}

/// The hot paths of a running stage, per database (`finish.rs`): what
/// [`Store`] says of each.
#[async_trait]
pub(crate) trait Stages: Backend {
    async fn context(&self, item: ItemId) -> Result<ItemContext>;
    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<Result<FinishEffect>>>;
}

#[async_trait]
impl<B: Backend + Rows + Leases + Stages> Store for B {
    async fn add_items(
        &self,
        items: &[NewItem],
        first: &NextJob,
        now: Millis,
    ) -> Result<Vec<ItemId>> {
        items::add_items(self, items, first, now).await
    }

    fn set_claimer(&self, claimer: std::sync::Arc<dyn Claimer>) {
        Backend::claimer(self).set(claimer);
    }

    fn unset_claimer(&self, claimer: &std::sync::Arc<dyn Claimer>) {
        Backend::claimer(self).unset(claimer);
    }

    async fn claim(
        &self,
        stage: &str,
        limit: u32,
        owner: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<ClaimedJob>> {
        Leases::claim(self, stage, limit, owner, now, lease_until).await
    }

    async fn claim_with_contexts(
        &self,
        stage: &str,
        limit: u32,
        owner: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<(ClaimedJob, Option<ItemContext>)>> {
        Leases::claim_with_contexts(self, stage, limit, owner, now, lease_until).await
    }

    async fn context(&self, item: ItemId) -> Result<ItemContext> {
        Stages::context(self, item).await
    }

    async fn finish(&self, finishes: &[Finish]) -> Result<Vec<Result<FinishEffect>>> {
        Stages::finish(self, finishes).await
    }

    async fn heartbeat(
        &self,
        owner: &str,
        now: Millis,
        lease_until: Millis,
        running: &[JobId],
    ) -> Result<Vec<JobId>> {
        Leases::heartbeat(self, owner, now, lease_until, running).await
    }

    async fn idle_beat(&self, owner: &str, now: Millis, silent_since: Millis) -> Result<IdleBeat> {
        Leases::idle_beat(self, owner, now, silent_since).await
    }

    async fn reap_expired(&self, now: Millis) -> Result<Vec<ReapedJob>> {
        jobs::reap_expired(self, now).await
    }

    async fn expire_process(&self, process: &str, now: Millis) -> Result<u64> {
        jobs::expire_process(self, process, now).await
    }

    async fn cancel_requests(&self, owner: &str) -> Result<Vec<JobId>> {
        jobs::cancel_requests(self, owner).await
    }

    async fn release(&self, owner: &str, now: Millis) -> Result<u64> {
        Leases::release(self, owner, now).await
    }

    async fn next_run_at(&self, stages: &[String]) -> Result<Option<Millis>> {
        reads::next_run_at(self, stages).await
    }

    async fn pending(&self, horizon: Millis) -> Result<Pending> {
        jobs::pending(self, horizon).await
    }

    async fn register_process(&self, process: &ProcessInfo) -> Result<()> {
        admin::register_process(self, process).await
    }

    async fn stop_process(&self, id: &str, now: Millis) -> Result<()> {
        admin::stop_process(self, id, now).await
    }

    async fn processes(&self) -> Result<Vec<ProcessInfo>> {
        admin::processes(self).await
    }

    async fn retry_item(&self, id: ItemId, next: &NextJob, now: Millis) -> Result<RetryEffect> {
        items::retry_item(self, id, next, now).await
    }

    async fn cancel_item(&self, id: ItemId, now: Millis) -> Result<CancelEffect> {
        items::cancel_item(self, id, now).await
    }

    async fn item(&self, id: ItemId) -> Result<ItemDetail> {
        items::item(self, id).await
    }

    async fn list_items(&self, filter: &ItemFilter) -> Result<Vec<ItemSummary>> {
        items::list_items(self, filter).await
    }

    async fn status(&self, now: Millis) -> Result<StatusSnapshot> {
        reads::status(self, now).await
    }

    async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        reads::events(self, filter).await
    }

    async fn record_event(&self, event: &NewEvent) -> Result<()> {
        admin::record_event(self, event).await
    }

    async fn spend(&self, item: ItemId, day_start: Millis) -> Result<Spend> {
        reads::spend(self, item, day_start).await
    }

    async fn reserve(&self, r: &Reservation, caps: &dyn Caps) -> Result<(bool, Spend)> {
        budget::reserve(self, r, caps).await
    }

    async fn paused_jobs(&self) -> Result<Vec<PausedJob>> {
        jobs::paused_jobs(self).await
    }

    async fn resume_jobs(&self, jobs: &[JobId], now: Millis) -> Result<u64> {
        jobs::resume_jobs(self, jobs, now).await
    }

    async fn prune(&self, before: Millis) -> Result<PruneCounts> {
        admin::prune(self, before).await
    }

    fn subscribe(&self) -> Result<Box<dyn WorkSignal>> {
        Backend::subscribe(self)
    }

    fn notify(&self) {
        Backend::notify(self)
    }

    async fn close(&self) {
        Backend::close(self).await
    }

    async fn quick_check(&self) -> Result<Vec<String>> {
        Backend::quick_check(self).await
    }

    async fn attempt_stats(&self, since: Millis) -> Result<Vec<StageAttempts>> {
        reads::attempt_stats(self, since).await
    }

    async fn queue_depth(&self, now: Millis) -> Result<Vec<StageCounts>> {
        let mut conn = self.read().await?;
        reads::stage_counts::<B>(&mut conn, now).await
    }

    async fn add_items_once(
        &self,
        source: &IntakeSource,
        items: &[NewItem],
        first: &NextJob,
        now: Millis,
    ) -> Result<AddOutcome> {
        items::add_items_once(self, source, items, first, now).await
    }

    async fn import_items(
        &self,
        items: &[ImportedItem],
        now: Millis,
    ) -> Result<Vec<ImportOutcome>> {
        items::import_items(self, items, now).await
    }

    async fn search_items(&self, filter: &ItemFilter, text: &str) -> Result<Vec<ItemSummary>> {
        items::search_items(self, filter, text).await
    }

    async fn activity(
        &self,
        since: Millis,
        bucket: Millis,
        now: Millis,
    ) -> Result<Vec<ActivityBucket>> {
        reads::activity(self, since, bucket, now).await
    }

    async fn gate_tallies(&self, gates: &[String]) -> Result<Vec<GateTally>> {
        tallies::gate_tallies(self, gates).await
    }

    async fn gate_tallies_scanned(&self, gates: &[String]) -> Result<Vec<GateTally>> {
        reads::gate_tallies_scanned(self, gates).await
    }

    async fn change_marker(&self) -> Result<ChangeMarker> {
        reads::change_marker(self).await
    }

    fn is_remote(&self) -> bool {
        Backend::is_remote(self)
    }

    async fn clock_millis(&self) -> Result<Option<Millis>> {
        Backend::clock_millis(self).await
    }
}
