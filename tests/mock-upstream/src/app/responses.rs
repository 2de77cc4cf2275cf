//! The routes of the OpenAI Responses API: `POST /v1/responses` and the endpoints around it.
//!
//! The mock stores nothing. Every `resp_…` id "exists" (any other id is a `404`), and a
//! retrieved response is rendered afresh: the answer to a request without fields, under the
//! `x-mock-*` headers of the retrieving request, with the id of the path. So a test that
//! retrieves with the headers it created with gets the same output back.

use axum::response::Response;
use http::{Method, StatusCode};

use super::{Answer, Api, Call, json_response};
use crate::reply::Reply;
use crate::responses::{self, RESPONSE_ID, Request};
use crate::scenario::Controls;

/// Errors on these routes use OpenAI's format.
const API: Api = Api::OpenAi;

/// `POST /v1/responses`: the answer, as a response object or as an event stream.
pub async fn create(call: Call) -> Answer {
    let controls = call.prelude(API, &[Method::POST]).await?;
    let request = call.parse(API, Request::parse)?;
    let stream = request.body.stream;
    Ok(answer(
        &call,
        &controls,
        &request,
        RESPONSE_ID,
        stream,
        None,
    ))
}

/// `GET /v1/responses/{id}` (the response, or with `?stream=true` a replay of its events,
/// from after `starting_after` when given) and `DELETE /v1/responses/{id}`.
pub async fn by_id(call: Call) -> Answer {
    let controls = call.prelude(API, &[Method::GET, Method::DELETE]).await?;
    let id = stored_id(&call, "")?;
    if call.method == Method::DELETE {
        return Ok(json_response(StatusCode::OK, responses::deleted_body(id)));
    }
    let query = call.query().map_err(|message| API.bad_request(&message))?;
    let stream = match query.get("stream").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            let message = format!("stream: expected true or false, got {other:?}");
            return Err(API.bad_request(&message));
        }
    };
    let starting_after = match query.get("starting_after").map(|text| text.parse::<u64>()) {
        None => None,
        Some(Ok(number)) => Some(number),
        Some(Err(_)) => {
            return Err(API.bad_request("starting_after: must be a non-negative integer"));
        }
    };
    let request = Request::empty();
    Ok(answer(
        &call,
        &controls,
        &request,
        id,
        stream,
        starting_after,
    ))
}

/// `POST /v1/responses/{id}/cancel`: the response, in status `cancelled`.
pub async fn cancel(call: Call) -> Answer {
    let controls = call.prelude(API, &[Method::POST]).await?;
    let id = stored_id(&call, "/cancel")?;
    let request = Request::empty();
    let reply = Reply::new(&controls, &request.body, true);
    Ok(json_response(
        StatusCode::OK,
        responses::cancelled_body(id, &reply, &request),
    ))
}

/// `GET /v1/responses/{id}/input_items`: a page of the fixed input items.
pub async fn input_items(call: Call) -> Answer {
    call.prelude(API, &[Method::GET]).await?;
    stored_id(&call, "/input_items")?;
    let query = call.query().map_err(|message| API.bad_request(&message))?;
    let param = |name: &str| query.get(name).map(String::as_str);
    let body = responses::input_items_body(param("limit"), param("order"), param("after"))
        .map_err(|message| API.bad_request(&message))?;
    Ok(json_response(StatusCode::OK, body))
}

/// `POST /v1/responses/input_tokens`: the input tokens of a would-be request.
pub async fn input_tokens(call: Call) -> Answer {
    call.json_of_body(API, Request::parse, responses::input_tokens_body)
        .await
}

/// `POST /v1/responses/compact`: the request's user messages and one compaction item.
pub async fn compact(call: Call) -> Answer {
    call.json_of_body(API, Request::parse, responses::compacted_body)
        .await
}

/// Renders the answer to `request` as response `id`: JSON, or an event stream from after
/// `starting_after`. A non-streamed `stream_error` answer is an "overloaded" error, as on the
/// other APIs; `failed` and `incomplete` are `200` response objects in those statuses.
fn answer(
    call: &Call,
    controls: &Controls,
    request: &Request,
    id: &str,
    stream: bool,
    starting_after: Option<u64>,
) -> Response {
    let reply = Reply::new(controls, &request.body, true);
    call.answer(
        API,
        controls,
        &reply,
        stream,
        || responses::response_body(id, &reply, request),
        || responses::stream_events(id, &reply, request, starting_after),
    )
}

/// The `{id}` of `/v1/responses/{id}{suffix}`, as sent, or a `404` when the mock does not
/// "have" that response.
#[expect(
    clippy::result_large_err,
    reason = "the error is the answer, moved once per request"
)]
fn stored_id<'c>(call: &'c Call, suffix: &str) -> Result<&'c str, Response> {
    let path = call.uri.path();
    let rest = path.strip_prefix("/v1/responses/").unwrap_or(path);
    let id = rest.strip_suffix(suffix).unwrap_or(rest);
    if responses::is_known_id(id) {
        Ok(id)
    } else {
        Err(json_response(
            StatusCode::NOT_FOUND,
            responses::not_found_body(id),
        ))
    }
}
