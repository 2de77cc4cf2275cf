//! The auxiliary endpoints: Anthropic token counting and both providers' models listings,
//! byte-exact, with each provider's errors.

use http::Method;
use luthien_mock_upstream::MockUpstream;
use serde_json::json;

use crate::support::{anthropic_request, get, post, send};

const VERSION: (&str, &str) = ("anthropic-version", "2023-06-01");

#[tokio::test]
async fn count_tokens_counts_like_the_message_usage() {
    let mock = MockUpstream::start().await.expect("mock");
    let answer = post(
        &mock,
        "/v1/messages/count_tokens",
        &[VERSION],
        &anthropic_request(false),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type(), "application/json");
    // The same 9 words the message's usage reports as input tokens.
    assert_eq!(answer.text(), r#"{"input_tokens":9}"#);

    let bad = send(
        &mock,
        Method::POST,
        "/v1/messages/count_tokens",
        &[VERSION],
        "{",
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["type"], "error");
    let got = get(&mock, "/v1/messages/count_tokens", &[VERSION]).await;
    assert_eq!(got.status, 405);
    let forced = post(
        &mock,
        "/v1/messages/count_tokens",
        &[VERSION, ("x-mock-status", "529")],
        &anthropic_request(false),
    )
    .await;
    assert_eq!(forced.status, 529);
    assert_eq!(forced.json()["error"]["type"], "overloaded_error");

    let recorded = mock.requests();
    assert_eq!(recorded.len(), 4);
    assert_eq!(recorded[0].path, "/v1/messages/count_tokens");
    assert_eq!(recorded[0].json(), anthropic_request(false));
}

#[tokio::test]
async fn anthropic_models_are_listed_and_paginated() {
    let mock = MockUpstream::start().await.expect("mock");
    let all = get(&mock, "/v1/models", &[VERSION]).await;
    assert_eq!(all.status, 200);
    assert_eq!(all.content_type(), "application/json");
    assert_eq!(
        all.text(),
        concat!(
            r#"{"data":["#,
            r#"{"type":"model","id":"claude-haiku-4-5-20251001","display_name":"Claude Haiku 4.5","created_at":"2025-10-15T00:00:00Z"},"#,
            r#"{"type":"model","id":"claude-sonnet-4-5-20250929","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"},"#,
            r#"{"type":"model","id":"claude-opus-4-1-20250805","display_name":"Claude Opus 4.1","created_at":"2025-08-05T00:00:00Z"}],"#,
            r#""has_more":false,"first_id":"claude-haiku-4-5-20251001","last_id":"claude-opus-4-1-20250805"}"#
        )
    );

    let page = get(&mock, "/v1/models?limit=1", &[VERSION]).await;
    let page = page.json();
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["has_more"], true);
    assert_eq!(page["last_id"], "claude-haiku-4-5-20251001");
    let next = get(
        &mock,
        "/v1/models?limit=5&after_id=claude-haiku-4-5-20251001",
        &[VERSION],
    )
    .await
    .json();
    assert_eq!(next["first_id"], "claude-sonnet-4-5-20250929");
    assert_eq!(next["has_more"], false);
    let previous = get(
        &mock,
        "/v1/models?limit=1&before_id=claude-opus-4-1-20250805",
        &[VERSION],
    )
    .await
    .json();
    assert_eq!(previous["first_id"], "claude-sonnet-4-5-20250929");
    assert_eq!(previous["has_more"], true);
    let empty = get(
        &mock,
        "/v1/models?after_id=claude-opus-4-1-20250805",
        &[VERSION],
    )
    .await
    .json();
    assert_eq!(
        empty,
        json!({"data": [], "has_more": false, "first_id": null, "last_id": null})
    );

    for bad in [
        "limit=0",
        "limit=x",
        "after_id=nope",
        "after_id=a&before_id=b",
    ] {
        let answer = get(&mock, &format!("/v1/models?{bad}"), &[VERSION]).await;
        assert_eq!(answer.status, 400, "{bad}");
        assert_eq!(answer.json()["error"]["type"], "invalid_request_error");
    }
    assert_eq!(mock.requests()[1].query.as_deref(), Some("limit=1"));
}

#[tokio::test]
async fn anthropic_model_by_id_or_not_found() {
    let mock = MockUpstream::start().await.expect("mock");
    let model = get(&mock, "/v1/models/claude-sonnet-4-5-20250929", &[VERSION]).await;
    assert_eq!(model.status, 200);
    assert_eq!(
        model.text(),
        r#"{"type":"model","id":"claude-sonnet-4-5-20250929","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"}"#
    );
    let missing = get(&mock, "/v1/models/claude-nope", &[VERSION]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.text(),
        r#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-nope"}}"#
    );
}

#[tokio::test]
async fn openai_models_are_listed_and_found() {
    let mock = MockUpstream::start().await.expect("mock");
    let all = get(&mock, "/v1/models", &[]).await;
    assert_eq!(all.status, 200);
    assert_eq!(all.content_type(), "application/json");
    assert_eq!(
        all.text(),
        concat!(
            r#"{"object":"list","data":["#,
            r#"{"id":"gpt-4o-mini","object":"model","created":1686935002,"owned_by":"openai"},"#,
            r#"{"id":"gpt-4o","object":"model","created":1715367049,"owned_by":"system"},"#,
            r#"{"id":"o3-mini","object":"model","created":1737146383,"owned_by":"system"}]}"#
        )
    );
    let model = get(&mock, "/v1/models/gpt-4o-mini", &[]).await;
    assert_eq!(
        model.text(),
        r#"{"id":"gpt-4o-mini","object":"model","created":1686935002,"owned_by":"openai"}"#
    );
    let missing = get(&mock, "/v1/models/gpt-nope", &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.text(),
        r#"{"error":{"message":"The model `gpt-nope` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#
    );
    let post = send(&mock, Method::POST, "/v1/models", &[], "{}").await;
    assert_eq!(post.status, 405);
    assert_eq!(mock.requests().len(), 4, "every request is recorded");
}
