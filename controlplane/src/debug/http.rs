//! The debug API over HTTP/JSON, plus the web UI's pages: a thin adapter
//! from query strings to [`DebugService`] and back. Errors are JSON with a
//! proper status (404 unknown call, 400 bad filter, 401 without the key).
//!
//! Without an admin key the debug routes are open, so they answer loopback clients only
//! (403 to the others); the probes and metrics beside them on the same listener answer
//! everyone, so that a kubelet or Prometheus on another host reaches them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;

use super::auth::AdminKey;
use super::session::{COOKIE, SESSION_TTL, Sessions};
use super::{ActivityFilter, DebugError, DebugService};
use luthien_store::CallFilter;

/// How often the activity stream sends a heartbeat comment, so proxies and
/// browsers keep an idle stream open.
const HEARTBEAT: Duration = Duration::from_secs(15);

#[derive(Clone)]
struct HttpState {
    service: DebugService,
    access: Access,
}

/// Who may use a guarded route: the admin key, or a UI session signed with it.
#[derive(Clone)]
struct Access {
    key: AdminKey,
    /// The UI's login sessions, when there is a key to log in with.
    sessions: Option<Sessions>,
}

impl Access {
    fn new(key: AdminKey) -> Self {
        let sessions = key.secret().map(Sessions::new);
        Self { key, sessions }
    }
}

/// The `/debug` routes: JSON API (behind the admin key) and the UI pages.
pub fn router(service: DebugService, key: AdminKey) -> Router {
    let state = HttpState {
        service,
        access: Access::new(key.clone()),
    };
    let api = Router::new()
        .route("/debug/calls", get(list_calls))
        .route("/debug/calls/{call_id}", get(get_call))
        .route("/debug/calls/{call_id}/diff", get(call_diff))
        .route("/debug/activity/stream", get(activity_stream))
        .route("/debug/policy", get(policy))
        .route("/debug/calls/{call_id}/replay", post(replay_call))
        .route_layer(middleware::from_fn_with_state(
            state.access.clone(),
            require_key,
        ))
        .route("/debug/login", post(login))
        .route("/debug/logout", post(logout))
        .with_state(state);
    let debug = api.merge(luthien_debug_web::router());
    if key.is_set() {
        debug
    } else {
        debug.route_layer(middleware::from_fn(loopback_only))
    }
}

/// Lets through only clients on loopback: the debug routes of a control plane without an admin
/// key. A request without a peer address is not known to be local, so it is refused too.
async fn loopback_only(request: Request, next: Next) -> Response {
    let local = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback());
    if local {
        next.run(request).await
    } else {
        error_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            "without an admin key the debug API answers loopback clients only; set LUTHIEN_ADMIN_KEY to reach it from elsewhere",
        )
    }
}

/// `router` answering only requests with the admin key (or a UI session), like the debug API.
pub fn behind_admin_key(router: Router, key: AdminKey) -> Router {
    router.route_layer(middleware::from_fn_with_state(
        Access::new(key),
        require_key,
    ))
}

impl IntoResponse for DebugError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            DebugError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            DebugError::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            DebugError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            DebugError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        error_response(status, code, &self.to_string())
    }
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
    (status, Json(body)).into_response()
}

async fn require_key(State(access): State<Access>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|value| value.to_str().ok());
    let by_key = || {
        access
            .key
            .accepts(AdminKey::from_bearer(text(header::AUTHORIZATION)))
    };
    let by_session = || {
        let token = Sessions::from_cookie(text(header::COOKIE));
        match (&access.sessions, token) {
            (Some(sessions), Some(token)) => sessions.accepts(token, SystemTime::now()),
            _ => false,
        }
    };
    if by_key() || by_session() {
        next.run(request).await
    } else {
        error_response(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the debug API needs `authorization: Bearer <admin key>` or a login",
        )
    }
}

#[derive(Deserialize)]
struct Login {
    key: String,
}

/// Exchanges the admin key for a signed, expiring session in an `HttpOnly` cookie: the
/// browser never keeps the key, in script-readable storage or in a cookie.
async fn login(
    State(state): State<HttpState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(login) = serde_json::from_slice::<Login>(&body) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "send {\"key\": \"<admin key>\"}",
        );
    };
    let Some(sessions) = &state.access.sessions else {
        return StatusCode::NO_CONTENT.into_response();
    };
    if !state.access.key.accepts(Some(&login.key)) {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "wrong admin key",
        );
    }
    let token = sessions.issue(SystemTime::now());
    let max_age = SESSION_TTL.as_secs();
    session_cookie(&headers, &format!("{token}; Max-Age={max_age}"))
}

/// Ends the browser's session: its cookie is cleared.
async fn logout(headers: axum::http::HeaderMap) -> Response {
    session_cookie(&headers, "; Max-Age=0")
}

/// A 204 setting the session cookie to `value` (with its attributes). `Secure` when the UI
/// was reached over TLS (a proxy in front says so in `x-forwarded-proto`).
fn session_cookie(request: &axum::http::HeaderMap, value: &str) -> Response {
    let over_tls = request
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
    let secure = if over_tls { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/debug{secure}");
    let mut response = StatusCode::NO_CONTENT.into_response();
    match HeaderValue::from_str(&cookie) {
        Ok(value) => {
            response.headers_mut().insert(header::SET_COOKIE, value);
            response
        }
        Err(_) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "could not build the session cookie",
        ),
    }
}

/// Query string of `GET /debug/calls`; parsed by hand so a bad value is a
/// JSON 400 naming the parameter.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ListQuery {
    since: Option<String>,
    until: Option<String>,
    model: Option<String>,
    api: Option<String>,
    status: Option<String>,
    session_id: Option<String>,
    event_type: Option<String>,
    q: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn query<T: for<'de> Deserialize<'de> + Default>(
    request_query: Option<&str>,
) -> Result<T, DebugError> {
    match request_query {
        None | Some("") => Ok(T::default()),
        Some(text) => serde_urlencoded::from_str(text)
            .map_err(|error| DebugError::InvalidArgument(format!("bad query string: {error}"))),
    }
}

fn number<T: std::str::FromStr>(
    name: &str,
    value: Option<String>,
) -> Result<Option<T>, DebugError> {
    value
        .filter(|value| !value.is_empty())
        .map(|value| {
            value.parse().map_err(|_| {
                DebugError::InvalidArgument(format!("`{name}` must be a number, got `{value}`"))
            })
        })
        .transpose()
}

/// A point in time as `since`/`until` take it: unix microseconds, or how long ago (`2h`,
/// `30m`, `7d`).
fn instant(name: &str, value: Option<String>) -> Result<Option<i64>, DebugError> {
    let Some(value) = value.filter(|value| !value.is_empty()) else {
        return Ok(None);
    };
    if let Ok(micros) = value.parse::<i64>() {
        return Ok(Some(micros));
    }
    let ago = humantime::parse_duration(&value).map_err(|_| {
        DebugError::InvalidArgument(format!(
            "`{name}` must be unix microseconds or a duration ago such as `2h`, got `{value}`"
        ))
    })?;
    let ago = i64::try_from(ago.as_micros()).unwrap_or(i64::MAX);
    Ok(Some(luthien_api::time::unix_micros().saturating_sub(ago)))
}

async fn list_calls(
    State(state): State<HttpState>,
    uri: axum::http::Uri,
) -> Result<Response, DebugError> {
    let query: ListQuery = query(uri.query())?;
    let text = |value: Option<String>| value.filter(|value| !value.is_empty());
    let status = match text(query.status) {
        Some(status) => Some(DebugService::parse_status(&status)?),
        None => None,
    };
    let filter = CallFilter {
        since_micros: instant("since", query.since)?,
        until_micros: instant("until", query.until)?,
        model: text(query.model),
        api: text(query.api)
            .map(|api| DebugService::parse_api(&api))
            .transpose()?,
        status,
        session_id: text(query.session_id),
        event_type: text(query.event_type),
        call_id_contains: text(query.q),
        limit: number("limit", query.limit)?,
        cursor: text(query.cursor),
    };
    let page = state.service.list_calls(filter).await?;
    Ok(Json(json!({"calls": page.calls, "next_cursor": page.next_cursor})).into_response())
}

async fn get_call(
    State(state): State<HttpState>,
    Path(call_id): Path<String>,
) -> Result<Response, DebugError> {
    Ok(Json(state.service.get_call(&call_id).await?).into_response())
}

async fn call_diff(
    State(state): State<HttpState>,
    Path(call_id): Path<String>,
) -> Result<Response, DebugError> {
    Ok(Json(state.service.call_diff(&call_id).await?).into_response())
}

async fn policy(State(state): State<HttpState>) -> Response {
    Json(state.service.policy()).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReplayBody {
    /// A policy file's text; absent replays through the active chain.
    policy_yaml: Option<String>,
}

async fn replay_call(
    State(state): State<HttpState>,
    Path(call_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, DebugError> {
    let body: ReplayBody = if body.is_empty() {
        ReplayBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            DebugError::InvalidArgument(format!(
                "send {{\"policy_yaml\": \"...\"}} or nothing: {error}"
            ))
        })?
    };
    let outcome = state
        .service
        .replay_call(&call_id, body.policy_yaml.as_deref())
        .await?;
    Ok(Json(outcome).into_response())
}

async fn activity_stream(
    State(state): State<HttpState>,
    uri: axum::http::Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, DebugError> {
    let filter: ActivityFilter = query(uri.query())?;
    let events = state.service.activity(filter).map(|message| {
        let event = Event::default().event("activity");
        Ok(event
            .json_data(&message)
            .unwrap_or_else(|_| Event::default().comment("unencodable activity message")))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat")))
}
