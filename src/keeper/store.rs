//! The keeper's SQL side: schema migrations, batched inserts and the resume point, for
//! PostgreSQL and SQLite. Every batch of rows is written in one transaction together with the
//! sequence number it ends at, so a restarted keeper resumes exactly after what it committed.

use std::time::SystemTime;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, QueryBuilder, Row as _, SqlitePool};

use super::{Row, SiteRow};

/// Why the database refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported database.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    Url(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Versioned schema changes; each runs once, in order, recorded in `schema_migrations`.
const PG_MIGRATIONS: &[&str] = &[
    // 1: the tables and the indexes for "one site over time" and "all failures over time".
    "CREATE TABLE sites (
        tenant TEXT NOT NULL,
        site_id TEXT NOT NULL,
        url TEXT NOT NULL,
        regex TEXT,
        labels JSONB NOT NULL DEFAULT '{}',
        first_seen TIMESTAMPTZ NOT NULL,
        last_seen TIMESTAMPTZ NOT NULL,
        removed_at TIMESTAMPTZ,
        PRIMARY KEY (tenant, site_id)
    );
    CREATE TABLE stats (
        tenant TEXT NOT NULL,
        site_id TEXT NOT NULL,
        probe_time TIMESTAMPTZ NOT NULL,
        duration_seconds DOUBLE PRECISION NOT NULL,
        resolve_seconds DOUBLE PRECISION NOT NULL,
        connect_seconds DOUBLE PRECISION NOT NULL,
        tls_seconds DOUBLE PRECISION NOT NULL,
        processing_seconds DOUBLE PRECISION NOT NULL,
        transfer_seconds DOUBLE PRECISION NOT NULL,
        status_code INTEGER NOT NULL,
        regex_ok BOOLEAN,
        result TEXT NOT NULL,
        error TEXT,
        location TEXT,
        instance TEXT NOT NULL,
        seq BIGINT NOT NULL
    );
    CREATE INDEX stats_site_time ON stats (tenant, site_id, probe_time);
    CREATE INDEX stats_failures_time ON stats (probe_time) WHERE result <> 'success';
    CREATE TABLE keeper_state (
        source TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        last_seq BIGINT NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL
    );",
];

const SQLITE_MIGRATIONS: &[&str] = &[
    // 1: as for PostgreSQL; times are unix seconds (REAL), labels JSON text.
    "CREATE TABLE sites (
        tenant TEXT NOT NULL,
        site_id TEXT NOT NULL,
        url TEXT NOT NULL,
        regex TEXT,
        labels TEXT NOT NULL DEFAULT '{}',
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        removed_at REAL,
        PRIMARY KEY (tenant, site_id)
    );
    CREATE TABLE stats (
        tenant TEXT NOT NULL,
        site_id TEXT NOT NULL,
        probe_time REAL NOT NULL,
        duration_seconds REAL NOT NULL,
        resolve_seconds REAL NOT NULL,
        connect_seconds REAL NOT NULL,
        tls_seconds REAL NOT NULL,
        processing_seconds REAL NOT NULL,
        transfer_seconds REAL NOT NULL,
        status_code INTEGER NOT NULL,
        regex_ok INTEGER,
        result TEXT NOT NULL,
        error TEXT,
        location TEXT,
        instance TEXT NOT NULL,
        seq INTEGER NOT NULL
    );
    CREATE INDEX stats_site_time ON stats (tenant, site_id, probe_time);
    CREATE INDEX stats_failures_time ON stats (probe_time) WHERE result <> 'success';
    CREATE TABLE keeper_state (
        source TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        last_seq INTEGER NOT NULL,
        updated_at REAL NOT NULL
    );",
];

/// Rows per INSERT statement: 16 parameters a row stays under PostgreSQL's 65,535.
const ROWS_PER_STATEMENT: usize = 2_000;

/// A connected database.
#[derive(Debug, Clone)]
pub enum Store {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite (a file).
    Sqlite(SqlitePool),
}

fn now() -> f64 {
    crate::probe::unix_seconds(SystemTime::now())
}

impl Store {
    /// Connects (creating a SQLite file if needed) without touching the schema.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts: PgConnectOptions = url.parse()?;
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(std::time::Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            Ok(Store::Postgres(pool))
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            let opts = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(std::time::Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await?;
            Ok(Store::Sqlite(pool))
        } else {
            Err(StoreError::Url(url.to_string()))
        }
    }

    /// Applies the migrations not applied yet; returns the schema version.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let create = "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)";
        // (migrations, a statement that serializes concurrent keepers, "now" as text)
        let (migrations, lock, now) = match self {
            Store::Postgres(_) => (
                PG_MIGRATIONS,
                "SELECT pg_advisory_xact_lock(7320191)",
                "now()::text",
            ),
            // SQLite's write transaction already excludes other writers.
            Store::Sqlite(_) => (SQLITE_MIGRATIONS, "SELECT 1", "datetime('now')"),
        };
        let record =
            format!("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, {now})");
        macro_rules! migrate {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                sqlx::query(lock).execute(&mut *tx).await?;
                sqlx::query(create).execute(&mut *tx).await?;
                let done: i64 = sqlx::query("SELECT COUNT(*) FROM schema_migrations")
                    .fetch_one(&mut *tx)
                    .await?
                    .get(0);
                for (i, m) in migrations.iter().enumerate().skip(done as usize) {
                    sqlx::raw_sql(m).execute(&mut *tx).await?;
                    sqlx::query(&record)
                        .bind(i as i32 + 1)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }};
        }
        match self {
            Store::Postgres(pool) => migrate!(pool),
            Store::Sqlite(pool) => migrate!(pool),
        }
        Ok(migrations.len())
    }

    /// The exporter instance and sequence number committed last for `source`.
    pub async fn resume_point(&self, source: &str) -> Result<Option<(String, u64)>, StoreError> {
        let q = "SELECT instance, last_seq FROM keeper_state WHERE source = $1";
        let row = match self {
            Store::Postgres(pool) => sqlx::query(q)
                .bind(source)
                .fetch_optional(pool)
                .await?
                .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1))),
            Store::Sqlite(pool) => sqlx::query(q)
                .bind(source)
                .fetch_optional(pool)
                .await?
                .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1))),
        };
        Ok(row.map(|(i, s)| (i, s.max(0) as u64)))
    }

    /// Appends `rows` and moves the resume point to (`instance`, `last_seq`), in one transaction.
    pub async fn write(
        &self,
        source: &str,
        rows: &[Row],
        instance: &str,
        last_seq: u64,
    ) -> Result<(), StoreError> {
        let state = "INSERT INTO keeper_state (source, instance, last_seq, updated_at) VALUES ($1, $2, $3, ";
        let upsert = " ON CONFLICT (source) DO UPDATE SET instance = EXCLUDED.instance, last_seq = EXCLUDED.last_seq, updated_at = EXCLUDED.updated_at";
        match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    let mut b = QueryBuilder::new(INSERT_STATS);
                    b.push_values(chunk, |mut b, r| {
                        b.push_bind(&r.tenant)
                            .push_bind(&r.site)
                            .push("to_timestamp(")
                            .push_bind_unseparated(r.started_at)
                            .push_unseparated(")");
                        push_common(&mut b, r);
                    });
                    b.build().execute(&mut *tx).await?;
                }
                sqlx::query(&format!("{state}now()){upsert}"))
                    .bind(source)
                    .bind(instance)
                    .bind(last_seq as i64)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                for chunk in rows.chunks(ROWS_PER_STATEMENT / 4) {
                    let mut b = QueryBuilder::new(INSERT_STATS);
                    b.push_values(chunk, |mut b, r| {
                        b.push_bind(&r.tenant)
                            .push_bind(&r.site)
                            .push_bind(r.started_at);
                        push_common(&mut b, r);
                    });
                    b.build().execute(&mut *tx).await?;
                }
                sqlx::query(&format!("{state}$4){upsert}"))
                    .bind(source)
                    .bind(instance)
                    .bind(last_seq as i64)
                    .bind(now())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Makes `sites` match the exporter's current list: upserts every site, and marks sites
    /// that are gone with `removed_at` (their rows stay). With several shards writing to one
    /// database, only sites this `shard` owns can be gone from its list: other shards' sites
    /// are never in it.
    pub async fn sync_sites(
        &self,
        sites: &[SiteRow],
        shard: crate::shard::Shard,
    ) -> Result<(), StoreError> {
        let t = now();
        let (ts, upsert) = match self {
            Store::Postgres(_) => ("to_timestamp($6)", "ON CONFLICT (tenant, site_id) DO UPDATE SET url = EXCLUDED.url, regex = EXCLUDED.regex, labels = EXCLUDED.labels, last_seen = EXCLUDED.last_seen, removed_at = NULL"),
            Store::Sqlite(_) => ("$6", "ON CONFLICT (tenant, site_id) DO UPDATE SET url = excluded.url, regex = excluded.regex, labels = excluded.labels, last_seen = excluded.last_seen, removed_at = NULL"),
        };
        let labels_cast = if matches!(self, Store::Postgres(_)) {
            "$5::jsonb"
        } else {
            "$5"
        };
        let insert = format!(
            "INSERT INTO sites (tenant, site_id, url, regex, labels, first_seen, last_seen) VALUES ($1, $2, $3, $4, {labels_cast}, {ts}, {ts}) {upsert}"
        );
        let (candidates, mark) = match self {
            Store::Postgres(_) => (
                "SELECT tenant, site_id FROM sites WHERE removed_at IS NULL AND last_seen < to_timestamp($1)",
                "UPDATE sites SET removed_at = to_timestamp($1) WHERE tenant = $2 AND site_id = $3",
            ),
            Store::Sqlite(_) => (
                "SELECT tenant, site_id FROM sites WHERE removed_at IS NULL AND last_seen < $1",
                "UPDATE sites SET removed_at = $1 WHERE tenant = $2 AND site_id = $3",
            ),
        };
        macro_rules! sync {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await?;
                for s in sites {
                    sqlx::query(&insert)
                        .bind(&s.tenant)
                        .bind(&s.site)
                        .bind(&s.url)
                        .bind(&s.regex)
                        .bind(&s.labels)
                        .bind(t)
                        .execute(&mut *tx)
                        .await?;
                }
                let gone: Vec<(String, String)> = sqlx::query_as(candidates)
                    .bind(t)
                    .fetch_all(&mut *tx)
                    .await?;
                for (tenant, site) in gone {
                    let key = if tenant.is_empty() {
                        site.clone()
                    } else {
                        format!("{tenant}/{site}")
                    };
                    if !shard.owns(&key) {
                        continue;
                    }
                    sqlx::query(mark)
                        .bind(t)
                        .bind(&tenant)
                        .bind(&site)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }};
        }
        match self {
            Store::Postgres(pool) => sync!(pool),
            Store::Sqlite(pool) => sync!(pool),
        }
        Ok(())
    }
}

const INSERT_STATS: &str = "INSERT INTO stats (tenant, site_id, probe_time, duration_seconds, resolve_seconds, connect_seconds, tls_seconds, processing_seconds, transfer_seconds, status_code, regex_ok, result, error, location, instance, seq) ";

fn push_common<DB: sqlx::Database>(
    b: &mut sqlx::query_builder::Separated<'_, '_, DB, &'static str>,
    r: &Row,
) where
    f64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i32: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<bool>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    b.push_bind(r.duration)
        .push_bind(r.phases[0])
        .push_bind(r.phases[1])
        .push_bind(r.phases[2])
        .push_bind(r.phases[3])
        .push_bind(r.phases[4])
        .push_bind(i32::from(r.status_code))
        .push_bind(r.regex_ok)
        .push_bind(r.result.clone())
        .push_bind(r.error.clone())
        .push_bind(r.location.clone())
        .push_bind(r.instance.clone())
        .push_bind(r.seq as i64);
}
