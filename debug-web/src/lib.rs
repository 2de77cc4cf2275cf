//! The debug web UI: the diff viewer (`/debug/diff`) and the live activity
//! monitor (`/debug/activity`).
//!
//! Plain HTML, CSS and vanilla JavaScript modules, embedded in the binary:
//! no build step, no framework, nothing fetched from the network. The pages
//! call the control plane's debug API on the same origin (`/debug/calls`,
//! `/debug/calls/{id}`, `/debug/calls/{id}/diff`, `/debug/policy`,
//! `POST /debug/calls/{id}/replay`, `/debug/activity/stream`,
//! `/debug/login`) through relative URLs, so they also work behind a proxy
//! that mounts everything under a prefix. The pages themselves need no
//! credentials; when the API answers 401 they ask for the admin key.
//!
//! Caching: every response carries an `etag` (a hash of the embedded file)
//! and `cache-control: no-cache`, so browsers revalidate cheaply (304) and
//! never run stale JavaScript after an upgrade.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Path of the diff viewer page.
pub const DIFF_PAGE_PATH: &str = "/debug/diff";
/// Path of the live activity page.
pub const ACTIVITY_PAGE_PATH: &str = "/debug/activity";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Scripts and styles come from this origin only; no inline script, so page
/// text can never run as code even if some escaping were missed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    /// FNV-1a of the body, computed at compile time.
    hash: u64,
}

impl Asset {
    const fn new(body: &'static [u8], content_type: &'static str) -> Asset {
        Asset {
            body,
            content_type,
            hash: fnv1a(body),
        }
    }
}

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

static DIFF_PAGE: Asset = Asset::new(include_bytes!("../assets/diff.html"), HTML);
static ACTIVITY_PAGE: Asset = Asset::new(include_bytes!("../assets/activity.html"), HTML);

/// The files under `/debug/assets/`.
static ASSETS: &[(&str, Asset)] = &[
    (
        "style.css",
        Asset::new(include_bytes!("../assets/style.css"), CSS),
    ),
    (
        "common.js",
        Asset::new(include_bytes!("../assets/common.js"), JS),
    ),
    (
        "diff.js",
        Asset::new(include_bytes!("../assets/diff.js"), JS),
    ),
    (
        "activity.js",
        Asset::new(include_bytes!("../assets/activity.js"), JS),
    ),
];

/// The UI's routes, for merging into an app with any state:
/// `GET /debug` (redirect to the diff viewer), `GET /debug/diff`,
/// `GET /debug/activity` and `GET /debug/assets/{file}`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/debug", get(redirect_to_diff))
        .route("/debug/", get(redirect_to_diff))
        .route(
            DIFF_PAGE_PATH,
            get(|headers: HeaderMap| async move { serve(&DIFF_PAGE, &headers, true) }),
        )
        .route(
            ACTIVITY_PAGE_PATH,
            get(|headers: HeaderMap| async move { serve(&ACTIVITY_PAGE, &headers, true) }),
        )
        .route("/debug/assets/{file}", get(asset))
}

/// `/debug` → `/debug/diff`, keeping the query (so `/debug?call_id=…` works).
async fn redirect_to_diff(RawQuery(query): RawQuery) -> Redirect {
    match query {
        Some(query) if !query.is_empty() => {
            Redirect::temporary(&format!("{DIFF_PAGE_PATH}?{query}"))
        }
        _ => Redirect::temporary(DIFF_PAGE_PATH),
    }
}

async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|(name, _)| *name == file) {
        Some((_, asset)) => serve(asset, &headers, false),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such asset\n",
        )
            .into_response(),
    }
}

fn serve(asset: &Asset, request: &HeaderMap, page: bool) -> Response {
    let etag = format!("\"{:016x}\"", asset.hash);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Response::new(Body::from(asset.body))
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if page {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn send(path: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = Request::get(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        router::<()>()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn body(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn header<'a>(response: &'a Response, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    #[tokio::test]
    async fn pages_are_html_with_a_strict_policy() {
        for (path, title) in [
            ("/debug/diff", "Diff viewer"),
            ("/debug/activity", "Live activity"),
        ] {
            let response = send(path, &[]).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&response, "content-type"), HTML);
            assert_eq!(header(&response, "cache-control"), "no-cache");
            assert_eq!(header(&response, "x-content-type-options"), "nosniff");
            assert!(header(&response, "content-security-policy").contains("script-src 'self'"));
            let html = body(response).await;
            assert!(html.starts_with("<!doctype html>"), "{path}");
            assert!(html.contains(title), "{path}");
            assert!(!html.contains("http://") && !html.contains("https://"));
        }
    }

    #[tokio::test]
    async fn every_asset_is_served_with_its_content_type() {
        for (name, content_type) in [
            ("style.css", CSS),
            ("common.js", JS),
            ("diff.js", JS),
            ("activity.js", JS),
        ] {
            let response = send(&format!("/debug/assets/{name}"), &[]).await;
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert_eq!(header(&response, "content-type"), content_type, "{name}");
            assert_eq!(header(&response, "cache-control"), "no-cache", "{name}");
            assert!(header(&response, "etag").starts_with('"'));
            assert!(!body(response).await.is_empty(), "{name}");
        }
    }

    #[tokio::test]
    async fn pages_reference_only_assets_that_exist() {
        for page in [&DIFF_PAGE, &ACTIVITY_PAGE] {
            let html = std::str::from_utf8(page.body).unwrap();
            for reference in html.split("assets/").skip(1) {
                let name = reference.split('"').next().unwrap();
                assert!(
                    ASSETS.iter().any(|(asset, _)| *asset == name),
                    "page references missing asset {name}"
                );
            }
        }
        for (name, asset) in ASSETS {
            let text = std::str::from_utf8(asset.body).unwrap();
            for import in text.split("from './").skip(1) {
                let module = import.split('\'').next().unwrap();
                assert!(
                    ASSETS.iter().any(|(asset, _)| *asset == module),
                    "{name} imports missing module {module}"
                );
            }
            assert!(
                !text.contains("innerHTML"),
                "{name} must build DOM from text"
            );
        }
    }

    #[tokio::test]
    async fn a_matching_etag_answers_not_modified() {
        let first = send("/debug/assets/diff.js", &[]).await;
        let etag = header(&first, "etag").to_owned();
        let again = send("/debug/assets/diff.js", &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(body(again).await.is_empty());
        let changed = send("/debug/assets/diff.js", &[("if-none-match", "\"0\"")]).await;
        assert_eq!(changed.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn unknown_assets_are_not_found() {
        for path in ["/debug/assets/nope.js", "/debug/assets/..%2Fsrc%2Flib.rs"] {
            assert_eq!(send(path, &[]).await.status(), StatusCode::NOT_FOUND);
        }
    }

    #[tokio::test]
    async fn debug_redirects_to_the_diff_viewer_keeping_the_query() {
        let response = send("/debug", &[]).await;
        assert!(response.status().is_redirection());
        assert_eq!(header(&response, "location"), "/debug/diff");
        let response = send("/debug?call_id=abc", &[]).await;
        assert_eq!(header(&response, "location"), "/debug/diff?call_id=abc");
    }

    #[test]
    fn the_router_composes_with_an_app_that_has_its_own_state() {
        #[derive(Clone)]
        struct AppState;
        let _app: Router = Router::new()
            .route("/other", get(|| async { "ok" }))
            .merge(router::<AppState>())
            .with_state(AppState);
    }
}
