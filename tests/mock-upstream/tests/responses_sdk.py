"""Checks the mock's OpenAI Responses API against the official `openai` Python SDK.

The SDK parses every answer into its models and runs streams through its stream state
machine (`openai/lib/streaming/responses/_responses.py`), which raises on an inconsistent
stream; this script drives each scenario and auxiliary endpoint through it and prints one
line per check. It exits non-zero if a check fails.

Not wired into any test runner. To run it by hand, start the mock and point the script at it:

    cargo run -p luthien-mock-upstream --bin mock-upstream -- --listen 127.0.0.1:9000
    python tests/mock-upstream/tests/responses_sdk.py http://127.0.0.1:9000/v1

with a Python that has the `openai` package (written against openai 3.57.0).
"""

from __future__ import annotations

import json
import sys
import traceback
import urllib.request

import openai
import pydantic
from openai import OpenAI
from openai.types.responses import (
    CompactedResponse,
    EasyInputMessage,
    InputTokenCountResponse,
    Response,
    ResponseItemList,
    ResponseStreamEvent,
)

BASE_URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9000/v1"
MODEL = "gpt-4o-mini"
INPUT = [
    {"role": "user", "content": "Say hello to the world."},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Then stop."}]},
]
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": False,
    },
    {
        "type": "function",
        "name": "bash",
        "description": "Run a command",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
        "strict": False,
    },
]

# No retries, so that a forced error status reaches the script at once.
client = OpenAI(base_url=BASE_URL, api_key="sk-mock", max_retries=0, timeout=10)
failures: list[str] = []


def check(name: str, condition: bool, detail: object = "") -> None:
    print(f"{'ok  ' if condition else 'FAIL'} {name}{': ' + str(detail) if detail != '' else ''}")
    if not condition:
        failures.append(name)


def scenario(name: str, **extra: str) -> dict[str, str]:
    return {"x-mock-scenario": name, **extra}


def create_args(**overrides: object) -> dict[str, object]:
    args: dict[str, object] = {
        "model": MODEL,
        "input": INPUT,
        "instructions": "You are terse.",
        "tools": TOOLS,
        "temperature": 0.5,
        "metadata": {"suite": "sdk"},
    }
    args.update(overrides)
    return args


def summary(response: openai.types.responses.Response) -> str:
    items = []
    for item in response.output:
        if item.type == "message":
            items.append(f"message({item.status}, {item.content[0].text!r})")
        elif item.type == "function_call":
            items.append(f"function_call({item.name}, {item.arguments}, {item.call_id})")
        elif item.type == "reasoning":
            items.append(
                f"reasoning({item.summary[0].text[:20]!r}..., encrypted={len(item.encrypted_content or '')} chars)"
            )
    usage = response.usage
    tokens = f"{usage.input_tokens}+{usage.output_tokens}" if usage else "none"
    return f"status={response.status} output=[{', '.join(items)}] usage={tokens}"


def plain(response: openai.types.responses.Response) -> object:
    """The response as JSON data, without the fields only the SDK's parsed models add."""

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("parsed", "parsed_arguments", "output_parsed")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(response.model_dump(mode="json"))


STREAM_EVENT = pydantic.TypeAdapter(ResponseStreamEvent)


def raw(path: str, body: dict[str, object], headers: dict[str, str]) -> bytes:
    """POSTs `body` and returns the raw answer, bypassing the SDK's lenient parsing."""
    request = urllib.request.Request(
        BASE_URL + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.read()


def validate_strictly(name: str, headers: dict[str, str]) -> None:
    """Validates the raw non-streamed body and every raw stream event against the SDK's
    pydantic models (the SDK itself constructs them without validation)."""
    Response.model_validate_json(raw("/responses", create_args(), headers))
    frames = raw("/responses", create_args(stream=True), headers).decode().split("\n\n")
    count = 0
    for frame in filter(None, frames):
        event_line, data_line = frame.split("\n")
        event = STREAM_EVENT.validate_json(data_line.removeprefix("data: "))
        assert event_line == f"event: {event.type}", frame
        count += 1
    check(f"{name}: raw body and {count} raw events validate against the SDK models", True)


def run(name: str, body) -> None:
    try:
        body()
    except Exception:  # noqa: BLE001 - report and carry on with the other checks
        check(name, False, traceback.format_exc().strip().splitlines()[-1])


def completed_scenario(name: str) -> None:
    headers = scenario(name, **{"x-mock-chunk-size": "5"})
    whole = client.responses.create(**create_args(), extra_headers=headers)
    check(f"{name}: create", whole.status == "completed", summary(whole))
    check(f"{name}: output_text", True, repr(whole.output_text))

    events = list(client.responses.create(**create_args(stream=True), extra_headers=headers))
    numbers = [event.sequence_number for event in events]
    check(f"{name}: create(stream=True) sequence 0..n", numbers == list(range(len(events))), f"{len(events)} events")
    kinds = sorted({event.type for event in events})
    check(f"{name}: event types", events[-1].type == "response.completed", ", ".join(kinds))
    check(
        f"{name}: response.completed.response == non-streamed",
        events[-1].response.model_dump() == whole.model_dump(),
    )
    added = [e.item for e in events if e.type == "response.output_item.added"]
    check(
        f"{name}: no encrypted_content in output_item.added",
        all(getattr(item, "encrypted_content", None) is None for item in added),
    )

    with client.responses.stream(**create_args(), extra_headers=headers) as stream:
        helper_events = list(stream)
        final = stream.get_final_response()
    check(
        f"{name}: responses.stream get_final_response == non-streamed",
        plain(final) == plain(whole),
        summary(final),
    )
    deltas = "".join(e.delta for e in helper_events if e.type == "response.output_text.delta")
    check(f"{name}: stream text deltas == output_text", deltas == whole.output_text, repr(deltas))
    validate_strictly(name, headers)


def terminal_scenario(name: str, status: str) -> None:
    headers = scenario(name)
    whole = client.responses.create(**create_args(), extra_headers=headers)
    check(
        f"{name}: create -> status {status}",
        whole.status == status,
        f"{summary(whole)} error={whole.error} incomplete_details={whole.incomplete_details}",
    )
    events = list(client.responses.create(**create_args(stream=True), extra_headers=headers))
    last = events[-1]
    check(
        f"{name}: stream ends with response.{status}",
        last.type == f"response.{status}" and last.response.model_dump() == whole.model_dump(),
        f"{len(events)} events, last {last.type}",
    )
    try:
        with client.responses.stream(**create_args(), extra_headers=headers) as stream:
            stream.get_final_response()
        check(f"{name}: responses.stream get_final_response", False, "returned")
    except RuntimeError as err:
        check(f"{name}: responses.stream get_final_response raises RuntimeError", True, err)
    validate_strictly(name, headers)


def stream_error() -> None:
    headers = scenario("stream_error")
    seen = []
    try:
        for event in client.responses.create(**create_args(stream=True), extra_headers=headers):
            seen.append(event.type)
        check("stream_error: create(stream=True) raises", False, f"no error after {seen}")
    except openai.APIError as err:
        check(
            "stream_error: create(stream=True) raises APIError",
            type(err) is openai.APIError,
            f"after {len(seen)} events: message={err.message!r} code={err.code!r} type={err.type!r} body={err.body}",
        )
    try:
        with client.responses.stream(**create_args(), extra_headers=headers) as stream:
            stream.get_final_response()
        check("stream_error: responses.stream raises", False, "returned")
    except openai.APIError as err:
        check("stream_error: responses.stream raises APIError", True, err.message)
    try:
        client.responses.create(**create_args(), extra_headers=headers)
        check("stream_error: create raises", False, "returned")
    except openai.InternalServerError as err:
        check("stream_error: create raises InternalServerError", err.status_code == 503, f"{err.status_code} {err.body}")


def forced_status() -> None:
    for code, exception in [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ]:
        try:
            client.responses.create(**create_args(), extra_headers={"x-mock-status": str(code)})
            check(f"x-mock-status {code}", False, "returned")
        except exception as err:
            check(f"x-mock-status {code} raises {exception.__name__}", err.status_code == code, err.body)
    try:
        client.responses.create(**create_args(), extra_headers={"x-mock-scenario": "nope"})
    except openai.BadRequestError as err:
        check("unknown scenario raises BadRequestError", True, err.message)


def hang() -> None:
    try:
        client.with_options(timeout=0.5).responses.create(**create_args(), extra_headers=scenario("hang"))
        check("hang", False, "returned")
    except openai.APITimeoutError as err:
        check("hang raises APITimeoutError", True, err)


def auxiliary() -> None:
    headers = scenario("text_and_tools")
    created = client.responses.create(**create_args(), extra_headers=headers)
    retrieved = client.responses.retrieve(created.id, extra_headers=headers)
    check("retrieve", retrieved.id == created.id and retrieved.output == created.output, summary(retrieved))

    replay = list(client.responses.retrieve(created.id, stream=True, extra_headers=headers))
    check("retrieve(stream=True)", replay[-1].type == "response.completed", f"{len(replay)} events")
    resumed = list(client.responses.retrieve(created.id, stream=True, starting_after=5, extra_headers=headers))
    check(
        "retrieve(stream=True, starting_after=5)",
        [e.sequence_number for e in resumed] == list(range(6, len(replay))),
        f"first {resumed[0].sequence_number}, {len(resumed)} events",
    )
    with client.responses.stream(response_id=created.id, extra_headers=headers) as stream:
        final = stream.get_final_response()
    check("responses.stream(response_id=...) == retrieve", plain(final) == plain(retrieved), summary(final))
    with client.responses.stream(response_id=created.id, starting_after=5, extra_headers=headers) as stream:
        first = next(iter(stream)).sequence_number
        final = stream.get_final_response()
    check("responses.stream(response_id=..., starting_after=5)", first == 6, f"first event {first}")

    deleted = client.responses.with_raw_response.delete(created.id)
    check("delete", deleted.status_code == 200 and deleted.parse() is None, deleted.http_response.text)

    cancelled = client.responses.cancel(created.id)
    check("cancel", cancelled.status == "cancelled", summary(cancelled))

    page = client.responses.input_items.list(created.id)
    items = [(item.type, item.role, item.content[0].text) for item in page.data]
    check("input_items.list", len(items) == 2, f"{items} has_more={page.has_more}")
    paged = [item.id for item in client.responses.input_items.list(created.id, limit=1, order="asc")]
    check("input_items.list auto-pagination (limit=1)", len(paged) == 2, paged)

    count = client.responses.input_tokens.count(model=MODEL, input=INPUT, instructions="You are terse.")
    check(
        "input_tokens.count == usage.input_tokens",
        count.input_tokens == created.usage.input_tokens,
        f"{count.object} {count.input_tokens}",
    )

    compacted = client.responses.compact(model=MODEL, input=INPUT)
    check(
        "compact",
        compacted.object == "response.compaction" and compacted.output[-1].type == "compaction",
        f"{[item.type for item in compacted.output]} usage={compacted.usage.input_tokens}+{compacted.usage.output_tokens}",
    )

    raw_bodies = [
        (Response, client.responses.with_raw_response.retrieve(created.id)),
        (Response, client.responses.with_raw_response.cancel(created.id)),
        (ResponseItemList, client.responses.input_items.with_raw_response.list(created.id)),
        (InputTokenCountResponse, client.responses.input_tokens.with_raw_response.count(model=MODEL, input="hi")),
    ]
    for model, answer in raw_bodies:
        model.model_validate_json(answer.http_response.content)
    # The SDK types `CompactedResponse.output` as output items, which have no user message,
    # though its docstring says the output starts with the user messages: those are checked
    # as input messages instead.
    compacted_raw = client.responses.with_raw_response.compact(model=MODEL, input=INPUT).http_response.json()
    messages = [item for item in compacted_raw["output"] if item["type"] == "message"]
    for message in messages:
        EasyInputMessage.model_validate(message)
    compacted_raw["output"] = [item for item in compacted_raw["output"] if item["type"] != "message"]
    CompactedResponse.model_validate(compacted_raw)
    check(
        "auxiliary raw bodies validate against the SDK models",
        True,
        [m.__name__ for m, _ in raw_bodies] + ["CompactedResponse (user messages as EasyInputMessage)"],
    )

    try:
        client.responses.retrieve("nope")
        check("retrieve unknown id", False, "returned")
    except openai.NotFoundError as err:
        check("retrieve unknown id raises NotFoundError", True, err.message)

    # The chat-only world: `failed` is a Responses scenario.
    try:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_headers=scenario("failed")
        )
    except openai.BadRequestError as err:
        check("chat.completions with scenario failed raises BadRequestError", True, err.message)
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_headers=scenario("incomplete")
    )
    check("chat.completions with scenario incomplete", chat.choices[0].finish_reason == "length")


def main() -> int:
    print(f"openai {openai.__version__} against {BASE_URL}")
    for name in ["text", "tools", "text_and_tools", "thinking"]:
        run(name, lambda name=name: completed_scenario(name))
    run("incomplete", lambda: terminal_scenario("incomplete", "incomplete"))
    run("failed", lambda: terminal_scenario("failed", "failed"))
    run("stream_error", stream_error)
    run("forced status", forced_status)
    run("hang", hang)
    run("auxiliary", auxiliary)
    print(f"{len(failures)} failed" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
