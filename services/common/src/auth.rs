//! JWT bearer authentication with per-method scopes, as a tower layer in front of the gRPC routes.
//!
//! The decision ([`Authenticator::authorize`]) is a plain function of the path, the
//! `authorization` header and the clock. [`AuthLayer`] only does the I/O: it reads the
//! current [`Authenticator`] (swappable at runtime, so keys reload without a restart), and
//! answers `UNAUTHENTICATED` / `PERMISSION_DENIED` itself without calling the service.
//! Health and reflection stay open.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::Path,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};

use futures::future::{Either, Ready, ready};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use tower::{Layer, Service};

/// Path prefixes that never need a token.
const OPEN_PREFIXES: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection."];

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` header.
    #[error("missing bearer token")]
    MissingToken,
    /// The header is not `Bearer <jwt>`, or the JWT cannot be parsed.
    #[error("malformed bearer token")]
    MalformedToken,
    /// The token's `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` is in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// Signature, algorithm, issuer or audience do not match.
    #[error("token rejected: {0}")]
    Invalid(String),
    /// A valid token without the scope this method needs.
    #[error("token lacks scope `{0}`")]
    MissingScope(String),
    /// The method is not in the scope table: this server does not serve it (a method it serves
    /// but forgot to list is refused the same way, never let through).
    #[error("method {0} is not served here")]
    UnknownMethod(String),
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::MissingScope(_) => tonic::Status::permission_denied(err.to_string()),
            AuthError::UnknownMethod(_) => tonic::Status::unimplemented(err.to_string()),
            _ => tonic::Status::unauthenticated(err.to_string()),
        }
    }
}

/// Errors loading key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("reading key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key is not valid for the algorithm.
    #[error("parsing {alg:?} key: {source}")]
    Parse {
        /// The algorithm.
        alg: Algorithm,
        /// Why.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// Only HS256, RS256 and ES256 are supported.
    #[error("unsupported JWT algorithm {0:?}; use HS256, RS256 or ES256")]
    UnsupportedAlgorithm(String),
    /// An HS256 secret must not be empty.
    #[error("the HS256 secret is empty")]
    EmptySecret,
}

/// The claims Ferry reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The caller.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Space-separated scopes (OAuth 2 style), e.g. `inventory:read inventory:write`.
    #[serde(default)]
    pub scope: String,
}

impl Claims {
    /// `true` if `scope` is among the token's scopes.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split_ascii_whitespace().any(|s| s == scope)
    }
}

/// Parses `HS256` / `RS256` / `ES256`.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    match name.to_ascii_uppercase().as_str() {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        _ => Err(KeyError::UnsupportedAlgorithm(name.to_string())),
    }
}

/// Which scope each full gRPC method path needs.
#[derive(Debug, Clone, Default)]
pub struct ScopeTable {
    entries: Vec<(String, String)>,
}

impl ScopeTable {
    /// Builds a table from `(method path, scope)` pairs, e.g.
    /// `("/ferry.inventory.v1.InventoryService/GetStock", "inventory:read")`.
    pub fn new<I, A, B>(entries: I) -> Self
    where
        I: IntoIterator<Item = (A, B)>,
        A: Into<String>,
        B: Into<String>,
    {
        Self { entries: entries.into_iter().map(|(a, b)| (a.into(), b.into())).collect() }
    }

    /// `true` when `path` is one of the table's methods.
    pub fn contains(&self, path: &str) -> bool {
        self.required(path).is_some()
    }

    /// The method paths in the table.
    pub fn methods(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(p, _)| p.as_str())
    }

    fn required(&self, path: &str) -> Option<&str> {
        self.entries.iter().find(|(p, _)| p == path).map(|(_, s)| s.as_str())
    }
}

/// Clock skew allowed between a token's issuer and this server, in seconds: a token is
/// accepted until `exp + 30 s`, and from `nbf - 30 s` when it carries an `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;

/// Verified tokens an [`Authenticator`] remembers (most distinct tokens in its cache).
pub const VERIFIED_CACHE_CAPACITY: usize = 4096;

/// Verifies bearer tokens against one key.
///
/// A token that verified (signature, algorithm, required claims, not expired) is remembered,
/// keyed by the exact token string, so a client that sends the same token on every call pays
/// for the signature check and the JSON decode once. Every later call still checks the
/// token's expiry against the clock (with the same leeway) and the method's scope. Only
/// tokens that verified are remembered; the cache belongs to this authenticator, so loading
/// new keys (a new [`Authenticator`] in [`AuthState`]) starts with an empty cache and every
/// token is verified against the new key. The cache holds at most
/// [`VERIFIED_CACHE_CAPACITY`] tokens: when full, expired entries are dropped, and if that
/// frees nothing the cache starts over.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
    scopes: ScopeTable,
    verified: RwLock<HashMap<Box<str>, Arc<Claims>>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// From key bytes: the HS256 secret, or a PEM public key for RS256/ES256.
    pub fn from_key_bytes(alg: Algorithm, key: &[u8], scopes: ScopeTable) -> Result<Self, KeyError> {
        let key = match alg {
            Algorithm::HS256 => {
                let secret = trim_ascii(key);
                if secret.is_empty() {
                    return Err(KeyError::EmptySecret);
                }
                DecodingKey::from_secret(secret)
            }
            Algorithm::RS256 => {
                DecodingKey::from_rsa_pem(key).map_err(|source| KeyError::Parse { alg, source })?
            }
            Algorithm::ES256 => {
                DecodingKey::from_ec_pem(key).map_err(|source| KeyError::Parse { alg, source })?
            }
            other => return Err(KeyError::UnsupportedAlgorithm(format!("{other:?}"))),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::from(["exp".to_string(), "sub".to_string()]);
        Ok(Self { key, validation, scopes, verified: RwLock::new(HashMap::new()) })
    }

    /// From a key file (HS256: the file holds the secret; RS256/ES256: a PEM public key).
    pub fn from_key_file(alg: Algorithm, path: &Path, scopes: ScopeTable) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path)
            .map_err(|source| KeyError::Read { path: path.display().to_string(), source })?;
        Self::from_key_bytes(alg, &bytes, scopes)
    }

    /// Decides whether a call to `path` with this `authorization` header may proceed.
    /// The claims come shared from the verified-token cache: a call copies no strings.
    pub fn authorize(
        &self,
        path: &str,
        authorization: Option<&[u8]>,
    ) -> Result<Option<Arc<Claims>>, AuthError> {
        self.authorize_at(path, authorization, unix_now())
    }

    /// [`Authenticator::authorize`] with the clock (Unix seconds) as an argument.
    pub fn authorize_at(
        &self,
        path: &str,
        authorization: Option<&[u8]>,
        now: u64,
    ) -> Result<Option<Arc<Claims>>, AuthError> {
        if is_open_path(path) {
            return Ok(None);
        }
        // An unknown method is UNIMPLEMENTED whatever the token, as the router would answer.
        let required =
            self.scopes.required(path).ok_or_else(|| AuthError::UnknownMethod(path.to_string()))?;
        let header = authorization.ok_or(AuthError::MissingToken)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthError::MalformedToken)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MalformedToken)?;
        let claims = self.verify(token, now)?;
        if !claims.has_scope(required) {
            return Err(AuthError::MissingScope(required.to_string()));
        }
        Ok(Some(claims))
    }

    /// The token's claims if it verifies now: from the cache when this exact token verified
    /// before (its expiry checked again), else by full verification.
    fn verify(&self, token: &str, now: u64) -> Result<Arc<Claims>, AuthError> {
        let cached = self.verified.read().unwrap_or_else(|p| p.into_inner()).get(token).cloned();
        if let Some(claims) = cached {
            if self.expired(&claims, now) {
                self.verified.write().unwrap_or_else(|p| p.into_inner()).remove(token);
                return Err(AuthError::Expired);
            }
            return Ok(claims);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
                    AuthError::MalformedToken
                }
                _ => AuthError::Invalid(e.to_string()),
            })?
            .claims;
        // jsonwebtoken read its own clock; hold the token to the caller's too.
        if self.expired(&claims, now) {
            return Err(AuthError::Expired);
        }
        let claims = Arc::new(claims);
        let mut cache = self.verified.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_CACHE_CAPACITY {
            cache.retain(|_, c| !self.expired(c, now));
            if cache.len() >= VERIFIED_CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(token.into(), claims.clone());
        Ok(claims)
    }

    /// jsonwebtoken's rule: expired when `exp < now - leeway`.
    fn expired(&self, claims: &Claims, now: u64) -> bool {
        claims.exp < now.saturating_sub(self.validation.leeway)
    }

    /// Tokens remembered as verified (for tests and metrics).
    pub fn cached_tokens(&self) -> usize {
        self.verified.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// `true` for health and reflection, which stay open.
pub fn is_open_path(path: &str) -> bool {
    OPEN_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// The authenticator in force; `None` means auth is disabled. Swapped on config reload.
#[derive(Debug, Clone, Default)]
pub struct AuthState {
    inner: Arc<RwLock<Option<Arc<Authenticator>>>>,
}

impl AuthState {
    /// A state holding `auth` (`None` = disabled).
    pub fn new(auth: Option<Authenticator>) -> Self {
        Self { inner: Arc::new(RwLock::new(auth.map(Arc::new))) }
    }

    /// Replaces the authenticator.
    pub fn replace(&self, auth: Option<Authenticator>) {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        *guard = auth.map(Arc::new);
    }

    /// Runs `f` with the current authenticator, under the read lock rather than with a clone
    /// of it: every call passes here, and a clone is a shared reference count both cores
    /// write to.
    pub fn with_current<T>(&self, f: impl FnOnce(Option<&Authenticator>) -> T) -> T {
        f(self.inner.read().unwrap_or_else(|p| p.into_inner()).as_deref())
    }
}

/// Tower layer enforcing [`AuthState`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    state: &'static AuthState,
}

impl AuthLayer {
    /// Enforces whatever `state` holds at call time.
    pub fn new(state: &'static AuthState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, state: self.state }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    state: &'static AuthState,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    /// A refusal is ready at once; anything else is the inner call's own future, unboxed.
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let decision = self.state.with_current(|auth| {
            let header = req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
            auth.map_or(Ok(None), |auth| auth.authorize(req.uri().path(), header))
        });
        match decision {
            Ok(Some(claims)) => {
                req.extensions_mut().insert(claims);
            }
            Ok(None) => {}
            Err(err) => {
                tracing::debug!(path = req.uri().path(), error = %err, "request refused");
                let status: tonic::Status = err.into();
                return Either::Left(ready(Ok(status.into_http())));
            }
        }
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use jsonwebtoken::{EncodingKey, Header, encode};

    use super::*;

    const PATH: &str = "/ferry.inventory.v1.InventoryService/DeductStock";

    fn auth() -> Authenticator {
        Authenticator::from_key_bytes(
            Algorithm::HS256,
            b"sekrit",
            ScopeTable::new([(PATH, "inventory:write")]),
        )
        .unwrap()
    }

    fn token(secret: &[u8], scope: &str, exp_offset: i64) -> String {
        crate::testing::hs256_token(secret, "t", scope, exp_offset)
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn valid_token_with_scope_is_allowed() {
        let t = token(b"sekrit", "inventory:read inventory:write", 60);
        assert!(auth().authorize(PATH, Some(&bearer(&t))).unwrap().is_some());
    }

    #[test]
    fn missing_token_is_unauthenticated() {
        let err = auth().authorize(PATH, None).unwrap_err();
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn malformed_token_is_unauthenticated() {
        for header in [&b"Basic abc"[..], b"Bearer ", b"Bearer not.a.jwt", b"\xff\xfe"] {
            let err = auth().authorize(PATH, Some(header)).unwrap_err();
            assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unauthenticated, "{header:?}");
        }
    }

    #[test]
    fn expired_token_is_unauthenticated() {
        let t = token(b"sekrit", "inventory:write", -3600);
        assert_eq!(auth().authorize(PATH, Some(&bearer(&t))).unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn badly_signed_token_is_unauthenticated() {
        let t = token(b"other", "inventory:write", 60);
        let err = auth().authorize(PATH, Some(&bearer(&t))).unwrap_err();
        assert!(matches!(err, AuthError::Invalid(_)), "{err:?}");
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn token_without_scope_is_permission_denied() {
        let t = token(b"sekrit", "inventory:read", 60);
        let err = auth().authorize(PATH, Some(&bearer(&t))).unwrap_err();
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn health_and_reflection_stay_open() {
        assert_eq!(auth().authorize("/grpc.health.v1.Health/Check", None), Ok(None));
        assert_eq!(
            auth().authorize("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", None),
            Ok(None)
        );
    }

    #[test]
    fn a_method_not_served_here_is_unimplemented_with_or_without_a_token() {
        let t = token(b"sekrit", "inventory:write", 60);
        for header in [Some(bearer(&t)), None] {
            let err = auth().authorize("/x.Y/Z", header.as_deref()).unwrap_err();
            assert_eq!(tonic::Status::from(err).code(), tonic::Code::Unimplemented);
        }
    }

    #[test]
    fn a_token_is_refused_before_its_nbf_and_accepted_within_the_leeway() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let with_nbf = |nbf: u64| {
            let claims =
                serde_json::json!({"sub": "t", "exp": now + 3600, "nbf": nbf, "scope": "inventory:write"});
            encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"sekrit")).unwrap()
        };
        let early = with_nbf(now + 600);
        assert_eq!(auth().authorize(PATH, Some(&bearer(&early))), Err(AuthError::NotYetValid));
        assert_eq!(tonic::Status::from(AuthError::NotYetValid).code(), tonic::Code::Unauthenticated);
        let within_leeway = with_nbf(now + LEEWAY_SECONDS / 2);
        assert!(auth().authorize(PATH, Some(&bearer(&within_leeway))).unwrap().is_some());
    }

    #[test]
    fn a_cached_token_is_refused_once_it_expires() {
        let a = auth();
        let t = token(b"sekrit", "inventory:write", 60);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(a.authorize_at(PATH, Some(&bearer(&t)), now).unwrap().is_some());
        assert_eq!(a.cached_tokens(), 1);
        // Within the 30 s leeway after `exp` it still passes; beyond it, it is expired.
        assert!(a.authorize_at(PATH, Some(&bearer(&t)), now + 60 + 30).unwrap().is_some());
        assert_eq!(a.authorize_at(PATH, Some(&bearer(&t)), now + 60 + 31), Err(AuthError::Expired));
        assert_eq!(a.cached_tokens(), 0, "an expired token leaves the cache");
    }

    #[test]
    fn a_cached_token_still_needs_the_scope_of_each_method() {
        let a = Authenticator::from_key_bytes(
            Algorithm::HS256,
            b"sekrit",
            ScopeTable::new([(PATH, "inventory:write"), ("/x.Y/Read", "inventory:read")]),
        )
        .unwrap();
        let t = token(b"sekrit", "inventory:read", 60);
        assert!(a.authorize("/x.Y/Read", Some(&bearer(&t))).unwrap().is_some());
        let err = a.authorize(PATH, Some(&bearer(&t))).unwrap_err();
        assert_eq!(err, AuthError::MissingScope("inventory:write".into()));
    }

    #[test]
    fn failed_tokens_are_not_cached_and_stay_refused() {
        let a = auth();
        let bad = token(b"other", "inventory:write", 60);
        for _ in 0..3 {
            assert!(matches!(a.authorize(PATH, Some(&bearer(&bad))), Err(AuthError::Invalid(_))));
        }
        let expired = token(b"sekrit", "inventory:write", -3600);
        assert_eq!(a.authorize(PATH, Some(&bearer(&expired))), Err(AuthError::Expired));
        assert_eq!(a.cached_tokens(), 0);
    }

    #[test]
    fn a_token_verified_under_the_old_key_is_verified_again_after_a_key_reload() {
        let state = AuthState::new(Some(auth()));
        let t = token(b"sekrit", "inventory:write", 60);
        assert!(state.with_current(|a| a.unwrap().authorize(PATH, Some(&bearer(&t)))).is_ok());
        let rotated = Authenticator::from_key_bytes(
            Algorithm::HS256,
            b"rotated",
            ScopeTable::new([(PATH, "inventory:write")]),
        )
        .unwrap();
        state.replace(Some(rotated));
        let err = state.with_current(|a| a.unwrap().authorize(PATH, Some(&bearer(&t)))).unwrap_err();
        assert!(matches!(err, AuthError::Invalid(_)), "{err:?}");
    }

    #[test]
    fn the_cache_stays_bounded() {
        let a = auth();
        for i in 0..(VERIFIED_CACHE_CAPACITY + 10) {
            let t = token(b"sekrit", &format!("inventory:write s{i}"), 60);
            assert!(a.authorize(PATH, Some(&bearer(&t))).is_ok());
        }
        assert!(a.cached_tokens() <= VERIFIED_CACHE_CAPACITY);
    }

    #[test]
    fn empty_secret_is_refused() {
        let err = Authenticator::from_key_bytes(Algorithm::HS256, b" \n", ScopeTable::default()).unwrap_err();
        assert!(matches!(err, KeyError::EmptySecret));
    }
}
