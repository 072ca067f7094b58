//! The database plumbing both services share: their store settings, the SQLite and PostgreSQL
//! pools with the service's migrations run on them, and which sqlx errors a retry may cure.
//!
//! The migrations stay each service's own: a service embeds its directories with
//! `sqlx::migrate!` (the path is relative to the service's crate) and hands the [`Migrator`] in.

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool, SqlitePool,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

pub use sqlx::{Error as SqlxError, migrate::Migrator};

/// Settings for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite://...` or `postgres://...`.
    pub url: String,
    /// Pool size (PostgreSQL; SQLite readers, at most 8).
    pub max_connections: u32,
    /// How long a call may wait for a connection before answering UNAVAILABLE (on SQLite also
    /// the busy timeout).
    pub acquire_timeout: Duration,
    /// PostgreSQL schema to use (created if missing); `None` = the default search path.
    pub pg_schema: Option<String>,
}

impl StoreOptions {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            pg_schema: None,
        }
    }
}

/// Which backend a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:...`
    Sqlite,
    /// `postgres://...` or `postgresql://...`
    Postgres,
}

impl Backend {
    /// The backend of `url`; `None` for any other scheme.
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else {
            None
        }
    }
}

/// Why opening or using the database failed, before a service names it in its own error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// The database is busy or unreachable; retrying may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug, a broken database or bad settings.
    #[error("internal store error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for DbError {
    fn from(err: sqlx::Error) -> Self {
        if is_transient(&err) { Self::Unavailable(err.to_string()) } else { Self::Internal(err.to_string()) }
    }
}

/// Implements `From<DbError>` and `From<sqlx::Error>` for a service's store error, whose
/// `Unavailable(String)` and `Internal(String)` variants take the two kinds of [`DbError`] (with
/// the message alone), so `?` works on sqlx calls and on this module's functions alike.
#[macro_export]
macro_rules! store_error_from_db {
    ($error:ty) => {
        impl From<$crate::db::DbError> for $error {
            fn from(err: $crate::db::DbError) -> Self {
                match err {
                    $crate::db::DbError::Unavailable(msg) => Self::Unavailable(msg),
                    $crate::db::DbError::Internal(msg) => Self::Internal(msg),
                }
            }
        }

        impl From<$crate::db::SqlxError> for $error {
            fn from(err: $crate::db::SqlxError) -> Self {
                $crate::db::DbError::from(err).into()
            }
        }
    };
}

/// `true` when `err` is an outage or contention that a retry may cure: the pool timed out or
/// closed, I/O or TLS failed, SQLite was busy or locked, or PostgreSQL reported a
/// serialization failure, a deadlock, a lock timeout, a shutdown or too many connections.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            true
        }
        sqlx::Error::Database(db) => {
            // SQLite: 5 BUSY, 6 LOCKED (and extended codes 261, 262, 517, 773...).
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let sqlite_busy = code.parse::<u32>().map(|c| matches!(c & 0xff, 5 | 6)).unwrap_or(false);
            let pg_transient =
                matches!(code.as_str(), "40001" | "40P01" | "55P03" | "57P01" | "57P03" | "53300");
            sqlite_busy || pg_transient
        }
        _ => false,
    }
}

/// A SQLite database's two pools.
///
/// NB: SQLite has one writer at a time. All writes go through a pool of exactly one
/// connection, so writers queue in the application instead of failing with SQLITE_BUSY;
/// reads use a separate read-only pool and never block on writers (WAL).
#[derive(Debug, Clone)]
pub struct SqlitePools {
    /// The one writer connection; the migrations ran on it.
    pub writer: SqlitePool,
    /// Read-only connections (`max_connections`, between 1 and 8).
    pub reader: SqlitePool,
}

/// Opens (creating the file and its directory if needed) the SQLite database of `opts.url` in
/// WAL mode with `synchronous=NORMAL`, foreign keys on and `acquire_timeout` as the busy
/// timeout, and runs `migrations` on the writer.
pub async fn open_sqlite(opts: &StoreOptions, migrations: &Migrator) -> Result<SqlitePools, DbError> {
    let options = SqliteConnectOptions::from_str(&opts.url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(opts.acquire_timeout)
        .foreign_keys(true);
    if let Some(parent) = options.get_filename().parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| DbError::Internal(format!("creating data dir {}: {e}", parent.display())))?;
    }
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(opts.acquire_timeout)
        .connect_with(options.clone())
        .await?;
    run_migrations(migrations, &writer).await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(opts.max_connections.clamp(1, 8))
        .acquire_timeout(opts.acquire_timeout)
        .connect_with(options.read_only(true))
        .await?;
    Ok(SqlitePools { writer, reader })
}

/// Connects to the PostgreSQL database of `opts.url` with a pool of `max_connections` (at
/// least 1), creating `opts.pg_schema` first if one is set (and using it as the search path),
/// and runs `migrations`.
pub async fn open_postgres(opts: &StoreOptions, migrations: &Migrator) -> Result<PgPool, DbError> {
    let mut options = PgConnectOptions::from_str(&opts.url)?;
    if let Some(schema) = &opts.pg_schema {
        check_schema_name(schema)?;
        let admin = PgPoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}")))
            .execute(&admin)
            .await?;
        admin.close().await;
        options = options.options([("search_path", schema.as_str())]);
    }
    let pool = PgPoolOptions::new()
        .max_connections(opts.max_connections.max(1))
        .acquire_timeout(opts.acquire_timeout)
        .connect_with(options)
        .await?;
    run_migrations(migrations, &pool).await?;
    Ok(pool)
}

/// A schema name is spliced into `CREATE SCHEMA`, so only ASCII letters, digits and `_` pass.
fn check_schema_name(schema: &str) -> Result<(), DbError> {
    if schema.is_empty() || !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DbError::Internal(format!("invalid schema name `{schema}`")));
    }
    Ok(())
}

async fn run_migrations<'a, A>(migrations: &Migrator, conn: A) -> Result<(), DbError>
where
    A: sqlx::Acquire<'a>,
    <A::Connection as std::ops::Deref>::Target: sqlx::migrate::Migrate,
{
    migrations.run(conn).await.map_err(|e| DbError::Internal(format!("migrations: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_names_its_backend_by_its_scheme() {
        assert_eq!(Backend::of("sqlite://x.db?mode=rwc"), Some(Backend::Sqlite));
        assert_eq!(Backend::of("sqlite::memory:"), Some(Backend::Sqlite));
        assert_eq!(Backend::of("postgres://u@h/db"), Some(Backend::Postgres));
        assert_eq!(Backend::of("postgresql://u@h/db"), Some(Backend::Postgres));
        assert_eq!(Backend::of("mysql://u@h/db"), None);
    }

    #[test]
    fn pool_outages_are_transient_and_other_errors_are_not() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::PoolClosed));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert_eq!(
            DbError::from(sqlx::Error::PoolTimedOut),
            DbError::Unavailable(sqlx::Error::PoolTimedOut.to_string())
        );
        assert!(matches!(DbError::from(sqlx::Error::RowNotFound), DbError::Internal(_)));
    }

    #[test]
    fn only_plain_schema_names_are_accepted() {
        assert_eq!(check_schema_name("o_1a2b"), Ok(()));
        for bad in ["", "a; DROP", "a-b", "é"] {
            assert_eq!(
                check_schema_name(bad),
                Err(DbError::Internal(format!("invalid schema name `{bad}`")))
            );
        }
    }
}
