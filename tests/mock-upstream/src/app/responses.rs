//! The routes of the OpenAI Responses API: `POST /v1/responses` and the endpoints around it.
//!
//! The mock stores nothing. Every `resp_…` id "exists" (any other id is a `404`), and a
//! retrieved response is rendered afresh: the answer to a request without fields, under the
//! `x-mock-*` headers of the retrieving request, with the id of the path. So a test that
//! retrieves with the headers it created with gets the same output back.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};

use super::{Api, Shared, event_stream, json_response, prelude};
use crate::reply::Reply;
use crate::responses::{self, RESPONSE_ID, Request};
use crate::scenario::Controls;

/// Errors on these routes use OpenAI's format.
const API: Api = Api::OpenAi;

/// `POST /v1/responses`: the answer, as a response object or as an event stream.
pub async fn create(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let controls = match prelude(
        API,
        &shared,
        &[Method::POST],
        &method,
        &uri,
        &headers,
        &body,
    )
    .await
    {
        Ok(controls) => controls,
        Err(response) => return response,
    };
    match Request::parse(&body) {
        Ok(request) => {
            let stream = request.body.stream;
            answer(&shared, &controls, &request, RESPONSE_ID, stream, None)
        }
        Err(message) => bad_request(&message),
    }
}

/// `GET /v1/responses/{id}` (the response, or with `?stream=true` a replay of its events,
/// from after `starting_after` when given) and `DELETE /v1/responses/{id}`.
pub async fn by_id(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let allowed = [Method::GET, Method::DELETE];
    let controls = match prelude(API, &shared, &allowed, &method, &uri, &headers, &body).await {
        Ok(controls) => controls,
        Err(response) => return response,
    };
    let id = response_id(&uri, "");
    if !responses::is_known_id(id) {
        return json_response(StatusCode::NOT_FOUND, responses::not_found_body(id));
    }
    if method == Method::DELETE {
        return json_response(StatusCode::OK, responses::deleted_body(id));
    }
    let query = match query(&uri) {
        Ok(query) => query,
        Err(message) => return bad_request(&message),
    };
    let stream = match query.get("stream").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return bad_request(&format!("stream: expected true or false, got {other:?}"));
        }
    };
    let starting_after = match query.get("starting_after").map(|text| text.parse::<u64>()) {
        None => None,
        Some(Ok(number)) => Some(number),
        Some(Err(_)) => return bad_request("starting_after: must be a non-negative integer"),
    };
    answer(
        &shared,
        &controls,
        &Request::empty(),
        id,
        stream,
        starting_after,
    )
}

/// `POST /v1/responses/{id}/cancel`: the response, in status `cancelled`.
pub async fn cancel(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let controls = match prelude(
        API,
        &shared,
        &[Method::POST],
        &method,
        &uri,
        &headers,
        &body,
    )
    .await
    {
        Ok(controls) => controls,
        Err(response) => return response,
    };
    let id = response_id(&uri, "/cancel");
    if !responses::is_known_id(id) {
        return json_response(StatusCode::NOT_FOUND, responses::not_found_body(id));
    }
    let request = Request::empty();
    let reply = Reply::new(&controls, &request.body, true);
    json_response(
        StatusCode::OK,
        responses::cancelled_body(id, &reply, &request),
    )
}

/// `GET /v1/responses/{id}/input_items`: a page of the fixed input items.
pub async fn input_items(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) =
        prelude(API, &shared, &[Method::GET], &method, &uri, &headers, &body).await
    {
        return response;
    }
    let id = response_id(&uri, "/input_items");
    if !responses::is_known_id(id) {
        return json_response(StatusCode::NOT_FOUND, responses::not_found_body(id));
    }
    let query = match query(&uri) {
        Ok(query) => query,
        Err(message) => return bad_request(&message),
    };
    let param = |name: &str| query.get(name).map(String::as_str);
    match responses::input_items_body(param("limit"), param("order"), param("after")) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(message) => bad_request(&message),
    }
}

/// `POST /v1/responses/input_tokens`: the input tokens of a would-be request.
pub async fn input_tokens(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = prelude(
        API,
        &shared,
        &[Method::POST],
        &method,
        &uri,
        &headers,
        &body,
    )
    .await
    {
        return response;
    }
    match Request::parse(&body) {
        Ok(request) => json_response(StatusCode::OK, responses::input_tokens_body(&request)),
        Err(message) => bad_request(&message),
    }
}

/// `POST /v1/responses/compact`: the request's user messages and one compaction item.
pub async fn compact(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = prelude(
        API,
        &shared,
        &[Method::POST],
        &method,
        &uri,
        &headers,
        &body,
    )
    .await
    {
        return response;
    }
    match Request::parse(&body) {
        Ok(request) => json_response(StatusCode::OK, responses::compacted_body(&request)),
        Err(message) => bad_request(&message),
    }
}

/// Renders the answer to `request` as response `id`: JSON, or an event stream from after
/// `starting_after`. A non-streamed `stream_error` answer is an "overloaded" error, as on the
/// other APIs; `failed` and `incomplete` are `200` response objects in those statuses.
fn answer(
    shared: &Shared,
    controls: &Controls,
    request: &Request,
    id: &str,
    stream: bool,
    starting_after: Option<u64>,
) -> Response {
    let reply = Reply::new(controls, &request.body, true);
    if stream {
        let events = responses::stream_events(id, &reply, request, starting_after);
        return event_stream(shared, events, controls.delay);
    }
    if reply.fails_mid_stream {
        return API.error(API.overloaded_status(), "Overloaded");
    }
    json_response(
        StatusCode::OK,
        responses::response_body(id, &reply, request),
    )
}

/// The `{id}` of `/v1/responses/{id}{suffix}`, as sent.
fn response_id<'u>(uri: &'u Uri, suffix: &str) -> &'u str {
    let path = uri.path();
    let rest = path.strip_prefix("/v1/responses/").unwrap_or(path);
    rest.strip_suffix(suffix).unwrap_or(rest)
}

/// The query parameters; the error is a message for a `400`.
fn query(uri: &Uri) -> Result<HashMap<String, String>, String> {
    Query::try_from_uri(uri)
        .map(|Query(query)| query)
        .map_err(|err| err.body_text())
}

fn bad_request(message: &str) -> Response {
    API.error(
        StatusCode::BAD_REQUEST,
        &format!("mock upstream: {message}"),
    )
}
