"""Drives the official `openai` SDK's Responses API against a base URL and prints what it got.

The end-to-end tests run it through the data plane (tests/tests/e2e/responses.rs):

    python tests/python/responses_sdk.py BASE_URL '{"call": "stream", "kwargs": {...}}'

`call` is one of:
  create   client.responses.create(**kwargs), streamed when kwargs has "stream": true
  stream   with client.responses.stream(**kwargs) as s: every event, then s.get_final_response()
  retrieve, delete, cancel, input_items, input_tokens, compact   the stored-response endpoints
           (`retrieve` with "stream": true lists the replayed events with their numbers)

It prints one JSON object: `result` (the SDK's parsed object, as JSON), `events` (for streams:
each event's type and, for text deltas, the delta), `text` (the SDK's `output_text` of the
final response, when there is one), or `error` (the exception class, message, status and
body) when the SDK raised. `headers` in the spec are sent with every request.
"""

import json
import sys

import openai


def dump(value):
    return value.model_dump(mode="json", exclude_unset=True) if value is not None else None


def event_summary(event):
    summary = {"type": event.type}
    if event.type == "response.output_text.delta":
        summary["delta"] = event.delta
    return summary


def run(client, spec):
    call = spec["call"]
    kwargs = spec.get("kwargs", {})
    responses = client.responses
    if call == "create" and kwargs.get("stream"):
        events = [event for event in responses.create(**kwargs)]
        final = next((e.response for e in events if e.type in (
            "response.completed", "response.incomplete", "response.failed")), None)
        return {"events": [event_summary(e) for e in events], "result": dump(final)}
    if call == "create":
        response = responses.create(**kwargs)
        return {"result": dump(response), "text": response.output_text}
    if call == "stream":
        with responses.stream(**kwargs) as stream:
            events = [event_summary(event) for event in stream]
            final = stream.get_final_response()
        return {"events": events, "result": dump(final), "text": final.output_text}
    response_id = spec.get("id", "resp_mock_0001")
    if call == "retrieve" and kwargs.get("stream"):
        events = list(responses.retrieve(response_id, **kwargs))
        return {"events": [dict(event_summary(e), sequence_number=e.sequence_number)
                           for e in events]}
    if call == "retrieve":
        return {"result": dump(responses.retrieve(response_id, **kwargs))}
    if call == "delete":
        return {"result": dump(responses.delete(response_id))}
    if call == "cancel":
        return {"result": dump(responses.cancel(response_id))}
    if call == "input_items":
        page = responses.input_items.list(response_id, **kwargs)
        return {"result": [dump(item) for item in page.data]}
    if call == "input_tokens":
        return {"result": dump(responses.input_tokens.count(**kwargs))}
    if call == "compact":
        return {"result": dump(responses.compact(**kwargs))}
    raise SystemExit(f"unknown call {call!r}")


def main():
    base_url, spec = sys.argv[1], json.loads(sys.argv[2])
    client = openai.OpenAI(base_url=base_url, api_key=spec.get("api_key", "sk-test"),
                           default_headers=spec.get("headers", {}), max_retries=0, timeout=30)
    try:
        output = run(client, spec)
    except openai.APIError as error:
        output = {"error": {"class": type(error).__name__, "message": error.message,
                            "status": getattr(error, "status_code", None),
                            "body": error.body}}
    except RuntimeError as error:
        output = {"error": {"class": "RuntimeError", "message": str(error)}}
    print(json.dumps(output))


if __name__ == "__main__":
    main()
