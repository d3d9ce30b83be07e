//! Access control in front of every route: the Host allow-list (DNS rebinding), the
//! same-origin check on websocket upgrades and state-changing requests, the access token
//! (when auth is on), a token bucket on state-changing requests, and the security headers
//! every response carries. Whatever is refused here never reaches a handler.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::Write;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::names::{LocalNames, local_names};
use crate::config::{Config, DEV_BODY_TOKEN, ServerConfig};

/// The file in the data dir that keeps the access token.
pub const TOKEN_FILE: &str = "access-token";
/// Routes anyone may load: the pages carry no secret and take the token from the fragment.
const OPEN_PATHS: [&str; 4] = ["/", "/healthz", "/face", "/inspector"];
const OPEN_PREFIX: &str = "/static/";
/// The websocket subprotocol that carries the token from browsers: `token.<token>`.
const TOKEN_PROTOCOL: &str = "token.";
/// Rate buckets kept at most; idle (full) ones go first, then the least recently used.
const MAX_BUCKETS: usize = 4096;
/// How often, at most, a Host that is not on the list makes us re-read the interfaces
/// (DHCP may have given the machine a new address since the last read).
const NAMES_REFRESH: Duration = Duration::from_secs(10);
/// Most tokens looked at in one request (Authorization plus subprotocols): a request
/// cannot make us compare a thousand guesses.
const MAX_PRESENTED: usize = 4;

/// Whether the access token is asked for: on the LAN, when configured, or whenever the
/// brain listens beyond loopback.
pub fn auth_required(server: &ServerConfig) -> bool {
    server.lan || server.require_token || !server.addr.ip().is_loopback()
}

/// The access token: `configured` if set, else the one kept in `<data_dir>/access-token`,
/// else a new one (32 random bytes from the OS, base64url without padding) written there
/// with mode 0600. Creation is atomic and never overwrites: when two callers race, both get
/// the token that landed in the file.
pub fn load_or_create_token(data_dir: &Path, configured: Option<&str>) -> std::io::Result<String> {
    if let Some(token) = configured {
        let token = token.trim();
        if token.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "[server] token is empty; remove it to have one generated",
            ));
        }
        return Ok(token.to_string());
    }
    let path = data_dir.join(TOKEN_FILE);
    match read_token(&path) {
        Ok(token) => return Ok(token),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(data_dir)?;
    let token = new_token()?;
    // Each creator writes its own temporary file (threads of one process race too).
    let unique = &new_token()?[..12];
    let temp = data_dir.join(format!(".{TOKEN_FILE}.{unique}.tmp"));
    let written = write_private(&temp, &token).and_then(|()| std::fs::hard_link(&temp, &path));
    // The temporary name goes either way; the token lives on under `path` when linked.
    let _ = std::fs::remove_file(&temp);
    match written {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created the access token");
            Ok(token)
        }
        // Someone else created it first: theirs is the token.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token(&path),
        Err(e) => Err(e),
    }
}

/// 32 random bytes from the OS as base64url without padding (43 characters).
fn new_token() -> std::io::Result<String> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn read_token(path: &Path) -> std::io::Result<String> {
    let token = std::fs::read_to_string(path)?.trim().to_string();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is empty; delete it to have a new token made",
                path.display()
            ),
        ));
    }
    tighten_mode(path);
    Ok(token)
}

/// A token file others can read is made private again, with a warning.
#[cfg(unix)]
fn tighten_mode(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "the access token file was readable by others; made it 0600");
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %path.display(), cause = %e, "cannot make the access token file private");
        }
    }
}

#[cfg(not(unix))]
fn tighten_mode(_path: &Path) {}

fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Compare without leaking, through timing, how much of a guess was right.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// The tokens a websocket upgrade presents: `Authorization: Bearer <t>`, and every
/// `token.<t>` in `Sec-WebSocket-Protocol` (browsers cannot set headers there).
pub(super) fn presented_tokens(headers: &HeaderMap) -> Vec<&str> {
    tokens_in(headers, true)
}

/// The bearer token, and with `subprotocols` the `token.<t>` subprotocols, at most
/// `MAX_PRESENTED` in all.
fn tokens_in(headers: &HeaderMap, subprotocols: bool) -> Vec<&str> {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let protocols = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix(TOKEN_PROTOCOL))
        .filter(|_| subprotocols);
    bearer
        .chain(protocols)
        .filter(|t| !t.is_empty())
        .take(MAX_PRESENTED)
        .collect()
}

/// What the guard knows: built once with the app state.
pub(super) struct Guard {
    /// Whether every route but the open ones needs the token.
    auth_on: bool,
    /// The access token; `None` with auth on means nobody gets in (it could not be read).
    token: Option<String>,
    /// `[body] token`: a second key for `/ws/body` only.
    body_token: String,
    hosts: HostAllowList,
    limiter: RateLimiter,
    /// Keys rate buckets by a hash of the token rather than the token itself.
    hasher: std::hash::RandomState,
}

impl Guard {
    pub(super) fn new(config: &Config) -> Self {
        let server = &config.server;
        let auth_on = auth_required(server);
        let token = if auth_on {
            match load_or_create_token(&config.data_dir, server.token.as_deref()) {
                Ok(token) => Some(token),
                Err(e) => {
                    // Fail closed: a brain that cannot read its token lets nobody in.
                    tracing::error!(cause = %e, "cannot load the access token; every route but the open pages will answer 401");
                    None
                }
            }
        } else {
            server.token.clone().filter(|t| !t.trim().is_empty())
        };
        if auth_on && config.body.token == DEV_BODY_TOKEN {
            tracing::info!(
                "/ws/body takes the access token; the development body token is refused"
            );
        }
        Guard {
            auth_on,
            token,
            body_token: config.body.token.clone(),
            hosts: HostAllowList::new(server),
            limiter: RateLimiter::new(server.rate_limit_per_sec, server.rate_limit_burst),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// The access token, when auth is on or one is configured.
    pub(super) fn access_token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub(super) fn auth_on(&self) -> bool {
        self.auth_on
    }

    fn access_ok(&self, presented: &str) -> bool {
        self.token
            .as_deref()
            .is_some_and(|token| same_secret(presented, token))
    }

    /// Whether `presented` opens `/ws/body`: the access token, or `[body] token` unless
    /// that is the development default and auth is on.
    pub(super) fn body_token_ok(&self, presented: &str) -> bool {
        let access = self.access_ok(presented);
        let body_usable = !(self.auth_on && self.body_token == DEV_BODY_TOKEN);
        let body = same_secret(presented, &self.body_token);
        access | (body_usable & body)
    }
}

/// The middleware: Host, Origin, token, rate limit, in that order, then the handler; the
/// security headers go on whatever comes back.
pub(super) async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let guard = &state.inner.guard;
    let authority = request_authority(&req).map(str::to_string);
    let mut resp = match check(guard, &req, authority.as_deref()) {
        Ok(()) => next.run(req).await,
        Err(refusal) => refusal.into_response(),
    };
    security_headers(resp.headers_mut(), authority.as_deref());
    resp
}

/// Why the guard said no: the error, and for the rate limit when to come back.
struct Refusal {
    error: ApiError,
    retry_after_secs: Option<u64>,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Refusal {
            error,
            retry_after_secs: None,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut resp = self.error.into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

fn check(guard: &Guard, req: &Request, authority: Option<&str>) -> Result<(), Refusal> {
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let path = req.uri().path();
    if let Some(authority) = authority
        && !guard.hosts.allows(authority)
    {
        tracing::debug!(host = ?authority, path, remote = ?remote, "refused a foreign Host");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            "this Host is not one of the brain's names; add it to [server] allowed_hosts",
        )
        .into());
    }
    let upgrade = is_websocket_upgrade(req);
    let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if (upgrade || changes_state)
        && let Some(origin) = req.headers().get(header::ORIGIN)
        && !same_origin(origin, authority)
    {
        tracing::debug!(origin = ?origin, path, remote = ?remote, "refused a foreign Origin");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "requests from another site's pages are refused",
        )
        .into());
    }
    // The subprotocol carries a token on websocket upgrades only.
    let presented = tokens_in(req.headers(), upgrade);
    let open = OPEN_PATHS.contains(&path) || path.starts_with(OPEN_PREFIX);
    let mut authenticated: Option<&str> = None;
    if guard.auth_on && !open {
        let opens: fn(&Guard, &str) -> bool = if path == "/ws/body" {
            Guard::body_token_ok
        } else {
            Guard::access_ok
        };
        authenticated = presented.iter().copied().find(|t| opens(guard, t));
        if authenticated.is_none() {
            tracing::debug!(path, remote = ?remote, presented = presented.len(), "refused a request without the token");
            let detail = if presented.is_empty() {
                "send the access token: `Authorization: Bearer <token>` (`creature pair` prints the phone link)"
            } else {
                "wrong token"
            };
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into());
        }
    }
    if changes_state {
        let key = RateKey {
            token: authenticated.map(|t| guard.hasher.hash_one(t)),
            remote: remote.map(rate_prefix),
        };
        if let Err(wait) = guard.limiter.take(key, Instant::now()) {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            tracing::debug!(path, remote = ?remote, retry_after = secs, "rate limited");
            return Err(Refusal {
                error: ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many requests; try again in {secs} s"),
                ),
                retry_after_secs: Some(secs),
            });
        }
    }
    Ok(())
}

/// The Host the client asked for: the `Host` header, or the URI's authority (HTTP/2).
fn request_authority(req: &Request) -> Option<&str> {
    match req.headers().get(header::HOST) {
        // A Host that is not even text is on no list.
        Some(host) => Some(host.to_str().unwrap_or("\u{fffd}")),
        None => req.uri().authority().map(|a| a.as_str()),
    }
}

fn is_websocket_upgrade(req: &Request) -> bool {
    *req.method() == Method::CONNECT
        || req
            .headers()
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
            })
}

/// `Origin` names the same host and port as the request (the scheme is not compared:
/// behind TLS termination it differs). `null` is never the same origin.
fn same_origin(origin: &HeaderValue, authority: Option<&str>) -> bool {
    let (Ok(origin), Some(authority)) = (origin.to_str(), authority) else {
        return false;
    };
    let Some((scheme, rest)) = origin.trim().split_once("://") else {
        return false;
    };
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => "",
    };
    let normal = |a: &str| {
        let a = a.trim().to_ascii_lowercase();
        match a.strip_suffix(default_port) {
            Some(stripped) if !default_port.is_empty() => stripped.to_string(),
            _ => a,
        }
    };
    !rest.contains('/') && normal(rest) == normal(authority)
}

/// The host part of an authority (`name:port`, `[v6]:port`, `v4`), lower case, without
/// the port, brackets or a trailing dot.
fn host_part(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(inside, _)| inside)
    } else if a.matches(':').count() == 1 {
        a.split_once(':').map_or(a.as_str(), |(host, _)| host)
    } else {
        a.as_str()
    };
    host.trim_end_matches('.').to_string()
}

/// The names and addresses a Host header may carry.
struct HostAllowList {
    /// `localhost` and `[server] allowed_hosts`, lower case, without ports.
    names: Vec<String>,
    /// The bound address and configured addresses (loopback is always allowed).
    addrs: Vec<IpAddr>,
    /// This machine's hostname and interface addresses, re-read when a Host misses.
    local: RwLock<(Instant, LocalNames)>,
}

impl HostAllowList {
    fn new(server: &ServerConfig) -> Self {
        let mut names = vec!["localhost".to_string()];
        let mut addrs = Vec::new();
        // An unspecified bind (0.0.0.0) is not a name to browse to ("0.0.0.0 day").
        if !server.addr.ip().is_unspecified() {
            addrs.push(server.addr.ip());
        }
        for host in &server.allowed_hosts {
            let host = host_part(host);
            match host.parse::<IpAddr>() {
                Ok(ip) => addrs.push(ip),
                Err(_) if !host.is_empty() => names.push(host),
                Err(_) => {}
            }
        }
        HostAllowList {
            names,
            addrs,
            local: RwLock::new((Instant::now(), local_names())),
        }
    }

    fn allows(&self, authority: &str) -> bool {
        let host = host_part(authority);
        let ip = host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
        if let Some(ip) = ip {
            if ip.is_loopback() || self.addrs.iter().any(|a| a.to_canonical() == ip) {
                return true;
            }
        } else if self.names.contains(&host) {
            return true;
        }
        let local_has = |names: &LocalNames| match ip {
            Some(ip) => names.addrs.iter().any(|a| a.to_canonical() == ip),
            None => names.dns_names().contains(&host),
        };
        {
            let local = self.local.read().unwrap_or_else(PoisonError::into_inner);
            if local_has(&local.1) || local.0.elapsed() < NAMES_REFRESH {
                return local_has(&local.1);
            }
        }
        let fresh = local_names();
        let allowed = local_has(&fresh);
        *self.local.write().unwrap_or_else(PoisonError::into_inner) = (Instant::now(), fresh);
        allowed
    }
}

/// Who a rate bucket belongs to: the token it was authenticated with (hashed) and the
/// remote address (an IPv6 client is one /64: it usually owns the whole prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RateKey {
    token: Option<u64>,
    remote: Option<IpAddr>,
}

fn rate_prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets over state-changing requests: `rate` a second, up to `burst` at once.
struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<RateKey, Bucket>>,
}

impl RateLimiter {
    fn new(rate: f64, burst: u32) -> Self {
        RateLimiter {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Spend one token of `key`'s bucket, or say how long until one is due.
    fn take(&self, key: RateKey, now: Instant) -> Result<(), Duration> {
        // A rate of zero (or nonsense) turns the limit off.
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(&key) && buckets.len() >= MAX_BUCKETS {
            self.evict(&mut buckets, now);
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    /// Make room: drop the buckets that have refilled (forgetting them changes nothing),
    /// and if none has, the least recently used.
    fn evict(&self, buckets: &mut HashMap<RateKey, Bucket>, now: Instant) {
        let refill = Duration::from_secs_f64(self.burst / self.rate);
        buckets.retain(|_, b| now.saturating_duration_since(b.last) < refill);
        if buckets.len() >= MAX_BUCKETS
            && let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.last).map(|(k, _)| *k)
        {
            buckets.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Inline scripts and styles are the pages' own (they are single files); `blob:`/`data:`
/// serve camera frames and audio; `'wasm-unsafe-eval'` and `blob:` workers serve the face
/// detector; nothing is loaded from anywhere else, and no one may frame the pages.
const CSP_BASE: &str = "default-src 'self'; script-src 'self' 'unsafe-inline' 'wasm-unsafe-eval'; \
style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' data: blob:; \
font-src 'self' data:; worker-src 'self' blob:; manifest-src 'self'; object-src 'none'; \
base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn security_headers(headers: &mut HeaderMap, authority: Option<&str>) {
    // `'self'` covers same-host websockets in current browsers; older Safari needs them
    // named. The authority has passed the allow-list, but its port part was not checked.
    let connect = match authority {
        Some(a)
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) =>
        {
            format!("connect-src 'self' ws://{a} wss://{a}")
        }
        _ => "connect-src 'self'".to_string(),
    };
    if let Ok(csp) = HeaderValue::from_str(&format!("{CSP_BASE}; {connect}")) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_secret_compares_whole_strings() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn token_is_created_private_once_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load_or_create_token(&data, None).unwrap();
        assert_eq!(first.len(), 43, "{first}");
        assert!(
            first
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(load_or_create_token(&data, None).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.join(TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&data).unwrap().count(), 1);
        // A configured token wins and touches nothing.
        assert_eq!(load_or_create_token(&data, Some(" mine ")).unwrap(), "mine");
        assert!(load_or_create_token(&data, Some("  ")).is_err());
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create_token(other.path(), None).unwrap(), first);
    }

    #[test]
    fn racing_creators_agree_on_one_token() {
        let dir = tempfile::tempdir().unwrap();
        let tokens: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_create_token(dir.path(), None).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(tokens.iter().all(|t| *t == tokens[0]), "{tokens:?}");
    }

    #[test]
    fn auth_is_on_for_lan_token_or_beyond_loopback() {
        let mut server = ServerConfig::default();
        assert!(!auth_required(&server));
        server.require_token = true;
        assert!(auth_required(&server));
        server.require_token = false;
        server.lan = true;
        assert!(auth_required(&server));
        server.lan = false;
        server.addr = "0.0.0.0:8080".parse().unwrap();
        assert!(auth_required(&server));
        server.addr = "[::1]:8080".parse().unwrap();
        assert!(!auth_required(&server));
    }

    #[test]
    fn host_part_drops_port_brackets_and_case() {
        assert_eq!(host_part("LocalHost:8080"), "localhost");
        assert_eq!(host_part("[::1]:8080"), "::1");
        assert_eq!(host_part("[::1]"), "::1");
        assert_eq!(host_part("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_part("robot.local.:443"), "robot.local");
        assert_eq!(host_part("fe80::1"), "fe80::1");
    }

    #[test]
    fn host_allow_list() {
        let server = ServerConfig {
            allowed_hosts: vec!["Proxy.Example:443".into(), "10.9.8.7".into()],
            ..ServerConfig::default()
        };
        let list = HostAllowList::new(&server);
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1:1",
            "[::1]:8080",
            "proxy.example",
            "10.9.8.7:80",
        ] {
            assert!(list.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "0.0.0.0:8080",
            "8.8.8.8",
            "",
        ] {
            assert!(!list.allows(bad), "{bad}");
        }
        let names = local_names();
        for ip in &names.addrs {
            let host = match ip {
                IpAddr::V4(v4) => format!("{v4}:8080"),
                IpAddr::V6(v6) => format!("[{v6}]:8080"),
            };
            assert!(list.allows(&host), "{host}");
        }
        for name in names.dns_names() {
            assert!(list.allows(&name), "{name}");
        }
    }

    #[test]
    fn origins_must_name_the_requested_host() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(same_origin(
            &v("http://127.0.0.1:8080"),
            Some("127.0.0.1:8080")
        ));
        assert!(same_origin(
            &v("https://Robot.local"),
            Some("robot.local:443")
        ));
        assert!(same_origin(
            &v("https://robot.local:8443"),
            Some("robot.local:8443")
        ));
        assert!(!same_origin(
            &v("http://127.0.0.1:9999"),
            Some("127.0.0.1:8080")
        ));
        assert!(!same_origin(
            &v("http://evil.example"),
            Some("127.0.0.1:8080")
        ));
        assert!(!same_origin(&v("null"), Some("127.0.0.1:8080")));
        assert!(!same_origin(&v("http://127.0.0.1:8080"), None));
    }

    #[test]
    fn tokens_come_from_bearer_and_subprotocols() {
        let mut headers = HeaderMap::new();
        assert!(presented_tokens(&headers).is_empty());
        headers.insert(header::AUTHORIZATION, v("bearer abc"));
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v("creature, token.def"));
        assert_eq!(presented_tokens(&headers), vec!["abc", "def"]);
        assert_eq!(tokens_in(&headers, false), vec!["abc"]);
        headers.insert(header::AUTHORIZATION, v("Basic abc"));
        assert_eq!(presented_tokens(&headers), vec!["def"]);

        fn v(s: &'static str) -> HeaderValue {
            HeaderValue::from_static(s)
        }
    }

    #[test]
    fn body_token_rule() {
        let mut config = Config::default();
        let dir = tempfile::tempdir().unwrap();
        config.data_dir = dir.path().to_path_buf();
        // Auth off: the body token (even the development one) opens /ws/body.
        let guard = Guard::new(&config);
        assert!(guard.body_token_ok(DEV_BODY_TOKEN));
        assert!(!guard.body_token_ok("guess"));
        // Auth on: the access token does, the development token does not.
        config.server.require_token = true;
        config.server.token = Some("access".into());
        let guard = Guard::new(&config);
        assert!(guard.body_token_ok("access"));
        assert!(!guard.body_token_ok(DEV_BODY_TOKEN));
        // A real body token still does.
        config.body.token = "body-secret".into();
        let guard = Guard::new(&config);
        assert!(guard.body_token_ok("body-secret"));
        assert!(guard.body_token_ok("access"));
        assert!(!guard.access_ok("body-secret"));
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let limiter = RateLimiter::new(2.0, 3);
        let key = RateKey {
            token: None,
            remote: None,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take(key, t0).is_ok());
        }
        let wait = limiter.take(key, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Another address has its own bucket.
        let other = RateKey {
            token: None,
            remote: Some("10.0.0.1".parse().unwrap()),
        };
        assert!(limiter.take(other, t0).is_ok());
        assert!(limiter.take(key, t0 + Duration::from_millis(500)).is_ok());
        assert!(limiter.take(key, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn buckets_stay_bounded() {
        let limiter = RateLimiter::new(1.0, 2);
        let t0 = Instant::now();
        for i in 0..(MAX_BUCKETS as u32 * 2) {
            let key = RateKey {
                token: None,
                remote: Some(IpAddr::from(i.to_be_bytes())),
            };
            assert!(limiter.take(key, t0).is_ok());
        }
        assert!(limiter.len() <= MAX_BUCKETS);
        // Once they have refilled, a newcomer clears them out.
        let later = t0 + Duration::from_secs(3);
        let key = RateKey {
            token: Some(1),
            remote: None,
        };
        assert!(limiter.take(key, later).is_ok());
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn ipv6_clients_share_their_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(rate_prefix(a), rate_prefix(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(rate_prefix(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn headers_name_no_outside_source() {
        let mut headers = HeaderMap::new();
        security_headers(&mut headers, Some("127.0.0.1:8080"));
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(csp.contains("ws://127.0.0.1:8080"));
        assert!(!csp.contains('*'), "{csp}");
        assert!(!csp.contains("https:"), "{csp}");
        // A port part that could inject directives is left out.
        let mut headers = HeaderMap::new();
        security_headers(&mut headers, Some("localhost:1; script-src *"));
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(!csp.contains('*'), "{csp}");
    }
}
