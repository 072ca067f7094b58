//! What the services' tests share: HS256 bearer tokens, SQLite databases in temporary
//! directories and waiting on a condition. Compiled only with the `testing` feature, which the services enable for their
//! tests alone (`[dev-dependencies]`), so no production build contains it.

#![allow(clippy::expect_used)]

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::auth::Claims;

/// An HS256 JWT signed with `secret` for `sub` with `scope` (space-separated), expiring
/// `expires_in` seconds from now (negative: expired that long ago).
pub fn hs256_token(secret: &[u8], sub: &str, scope: &str, expires_in: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64;
    let claims = Claims { sub: sub.into(), exp: (now + expires_in) as u64, scope: scope.into() };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret))
        .expect("encode an HS256 token")
}

/// The `sqlite://` URL of the database file `path`, created if missing (`mode=rwc`).
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// A SQLite database file in a temporary directory of its own; the directory (and anything
/// else a test puts in it) is deleted on drop.
#[derive(Debug)]
pub struct TempSqlite {
    dir: tempfile::TempDir,
    file: PathBuf,
}

impl TempSqlite {
    /// A fresh directory; the database will be the file `name` in it (not created yet).
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let file = dir.path().join(name);
        Self { dir, file }
    }

    /// The database's URL (see [`sqlite_url`]).
    pub fn url(&self) -> String {
        sqlite_url(&self.file)
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Polls `cond` every 10 ms until it holds; panics naming `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    tokio::time::timeout(limit, async {
        while !cond().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_minted_token_carries_its_claims_and_expiry() {
        let token = hs256_token(b"k", "tester", "inventory:read inventory:write", 600);
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"k"),
            &validation,
        )
        .unwrap()
        .claims;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(
            (claims.sub.as_str(), claims.scope.as_str()),
            ("tester", "inventory:read inventory:write")
        );
        assert!((now + 590..=now + 600).contains(&claims.exp), "exp {} now {now}", claims.exp);
    }

    #[test]
    fn a_temporary_database_lives_in_its_own_directory_until_dropped() {
        let db = TempSqlite::new("x.db");
        let dir = db.dir().to_path_buf();
        assert_eq!(db.url(), format!("sqlite://{}?mode=rwc", dir.join("x.db").display()));
        assert!(dir.is_dir());
        drop(db);
        assert!(!dir.exists());
    }
}
