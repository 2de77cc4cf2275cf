"""Example Luthien remote policy server (Python, grpcio): removes tool calls that touch paths
outside an allowed directory.

    python3 -m pip install -r examples/remote-policy-python/requirements.txt
    python3 examples/remote-policy-python/server.py --port 7002 --allowed-dir /workspace

It asks for the response and stream phases only (it never sees requests). Tool calls are
found in OpenAI `tool_calls[].function.arguments`, Anthropic `tool_use.input` and OpenAI
Responses `function_call` items' `arguments`; every string
in the arguments is cut into words, and a word that is an absolute path, a home path (`~`) or
climbs with `..` must resolve inside the allowed directory. A call that does not is removed
and replaced by an explanatory text; when every call was removed the finish reason becomes
`stop` / `end_turn`. In streams each call is held until complete (OpenAI: until its choice's
finish chunk, then re-sent whole and renumbered; Anthropic: from its `content_block_start` to
its `content_block_stop`; Responses: from its `response.output_item.added` to its
`response.output_item.done`, everything after it waiting behind it). A removed Responses call
becomes, at the same `output_index`, a message item with the explanation, in the stream and
in `response.completed`. Every removal is sent as a PolicyRecord.
"""

import argparse
import json
import os
import posixpath
import re
import sys
from concurrent import futures

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stubs  # noqa: E402

pb, pb_grpc = stubs.load()

SEPARATORS = re.compile(r"[\s\"'`;|&<>(){}=,]+")


def strings_in(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)


def paths_outside(allowed, arguments):
    """Paths named in `arguments` (JSON text, or any text) that lie outside `allowed`."""
    try:
        texts = list(strings_in(json.loads(arguments)))
    except ValueError:
        texts = [arguments]
    allowed = posixpath.normpath(allowed)
    found = []
    for text in texts:
        for word in SEPARATORS.split(text):
            if not (word.startswith("/") or word.startswith("~") or ".." in word.split("/")):
                continue
            if word.startswith("~"):
                inside = False
            else:
                full = word if word.startswith("/") else posixpath.join(allowed, word)
                # `..` above the root is outside too (normpath would clamp it at `/`).
                depth, escapes = 0, False
                for part in full.split("/"):
                    if part == "..":
                        depth -= 1
                        escapes = escapes or depth < 0
                    elif part not in ("", "."):
                        depth += 1
                full = posixpath.normpath(full)
                inside = not escapes and (full == allowed or full.startswith(allowed.rstrip("/") + "/"))
            if not inside and word not in found:
                found.append(word)
    return found


class Guard:
    def __init__(self, allowed_dir):
        self.allowed = allowed_dir

    def check(self, tool, arguments):
        paths = paths_outside(self.allowed, arguments)
        return {"tool": tool, "paths": paths} if paths else None

    def explanation(self, blocked):
        return (f"[path-guard] Removed the call to `{blocked['tool']}`: it touches "
                f"{', '.join(blocked['paths'])}, outside the allowed directory {self.allowed}.")

    def replacement(self, call, blocked):
        """Responses: the message item that takes a removed `function_call` item's place."""
        return {"type": "message", "id": "msg_pathguard_" + call.get("id", call.get("call_id", "")),
                "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": self.explanation(blocked),
                             "annotations": [], "logprobs": []}]}

    def replace_calls(self, output, removed, decided):
        """Responses: replaces the blocked `function_call` items of `output` in place; `decided`
        holds the replacements already made in the stream, by `call_id`."""
        for i, item in enumerate(output):
            if item.get("type") != "function_call":
                continue
            if item.get("call_id") in decided:
                output[i] = decided[item["call_id"]] or item
                continue
            blocked = self.check(item.get("name", ""), item.get("arguments", ""))
            if blocked:
                removed.append(blocked)
                output[i] = self.replacement(item, blocked)

    def response(self, api, body, removed):
        """Checks a complete response in place."""
        if api == "openai_responses":
            self.replace_calls(body.get("output", []), removed, {})
        elif api == "openai":
            for choice in body.get("choices", []):
                message = choice.get("message") or {}
                calls = message.pop("tool_calls", None)
                if not calls:
                    continue
                kept, texts = [], []
                for call in calls:
                    function = call.get("function") or {}
                    blocked = self.check(function.get("name", ""), function.get("arguments", ""))
                    if blocked:
                        removed.append(blocked)
                        texts.append(self.explanation(blocked))
                    else:
                        kept.append(call)
                if kept:
                    message["tool_calls"] = kept
                if texts:
                    message["content"] = "\n\n".join(filter(None, [message.get("content")] + texts))
                    if not kept and choice.get("finish_reason") == "tool_calls":
                        choice["finish_reason"] = "stop"
        else:
            kept = 0
            for i, block in enumerate(body.get("content", [])):
                if block.get("type") != "tool_use":
                    continue
                blocked = self.check(block.get("name", ""), json.dumps(block.get("input", {})))
                if blocked:
                    removed.append(blocked)
                    body["content"][i] = {"type": "text", "text": self.explanation(blocked)}
                else:
                    kept += 1
            if removed and not kept and body.get("stop_reason") == "tool_use":
                body["stop_reason"] = "end_turn"


def event(data, event_type="", seq=0):
    return pb.PolicyStreamEvent(seq=seq, event_type=event_type, data=json.dumps(data).encode())


class StreamGuard:
    """One streamed call: holds tool calls until complete."""

    def __init__(self, guard, api):
        self.guard, self.api = guard, api
        self.openai = {}  # choice index -> {call index -> {"id", "name", "arguments"}}
        self.envelope = {}
        self.block = None  # Anthropic: the tool_use block held
        self.item = None  # Responses: the function_call item held
        self.decided = {}  # Responses: call_id -> replacement message item (None: kept)
        self.kept = self.removed = 0

    def on_event(self, ev, out, removed):
        try:
            value = json.loads(ev.data)
        except ValueError:
            value = None
        if self.api == "openai":
            self.openai_event(ev, value, out, removed)
        elif self.api == "openai_responses":
            self.responses_event(ev, value, out, removed)
        else:
            self.anthropic_event(ev, value, out, removed)

    def on_end(self, out, removed):
        for choice in list(self.openai):
            self.release_choice(choice, out, removed)
        if self.block:
            self.release_block(None, out, removed)
        if self.item:
            self.release_item(out, removed)

    def responses_event(self, ev, value, out, removed):
        value = value if isinstance(value, dict) else {}
        kind = value.get("type")
        if self.item is not None:
            self.item["events"].append(ev)
            if value.get("output_index") == self.item["index"]:
                if kind == "response.function_call_arguments.delta":
                    self.item["call"]["arguments"] += value.get("delta", "")
                elif kind == "response.output_item.done":
                    self.item["call"] = value.get("item", self.item["call"])
                    self.release_item(out, removed)
            elif kind in ("response.completed", "response.incomplete", "response.failed"):
                self.release_item(out, removed)  # cut short: decided on what arrived
            return
        item = value.get("item") or {}
        if kind == "response.output_item.added" and item.get("type") == "function_call":
            self.item = {"index": value.get("output_index"), "call": dict(item), "events": [ev]}
        elif kind in ("response.completed", "response.incomplete", "response.failed") and self.removed:
            self.guard.replace_calls((value.get("response") or {}).get("output", []), removed,
                                     self.decided)
            out.append(event(value, kind, ev.seq))
        else:
            out.append(ev)

    def release_item(self, out, removed):
        held, self.item = self.item, None
        call = held["call"]
        blocked = self.guard.check(call.get("name", ""), call.get("arguments", ""))
        own, later = [], []
        for ev in held["events"]:
            ours = json.loads(ev.data or "{}").get("output_index") == held["index"]
            (own if ours else later).append(ev)
        if not blocked:
            self.kept += 1
            self.decided[call.get("call_id")] = None
            out.extend(own)
            self.responses_events_after(later, out, removed)
            return
        self.removed += 1
        removed.append(blocked)
        message = self.guard.replacement(call, blocked)
        self.decided[call.get("call_id")] = message
        text, part = message["content"][0]["text"], message["content"][0]
        common = {"output_index": held["index"], "sequence_number":
                  json.loads(held["events"][0].data).get("sequence_number", 0)}
        in_part = {**common, "item_id": message["id"], "content_index": 0}
        for kind, fields in [
                ("response.output_item.added", {"item": {**message, "status": "in_progress", "content": []}}),
                ("response.content_part.added", {**in_part, "part": {**part, "text": ""}}),
                ("response.output_text.delta", {**in_part, "delta": text, "logprobs": []}),
                ("response.output_text.done", {**in_part, "text": text, "logprobs": []}),
                ("response.content_part.done", {**in_part, "part": part}),
                ("response.output_item.done", {"item": message})]:
            out.append(event({"type": kind, **common, **fields}, kind))
        # Anything that arrived while the call was held and is not part of it.
        self.responses_events_after(later, out, removed)

    def responses_events_after(self, events, out, removed):
        for ev in events:
            try:
                value = json.loads(ev.data)
            except ValueError:
                value = None
            self.responses_event(ev, value, out, removed)

    def openai_event(self, ev, chunk, out, removed):
        if not isinstance(chunk, dict):  # [DONE]
            self.on_end(out, removed)
            out.append(ev)
            return
        self.envelope = {k: v for k, v in chunk.items() if k not in ("choices", "usage")}
        changed, releases = False, []
        for choice in chunk.get("choices", []):
            index = choice.get("index", 0)
            calls = (choice.get("delta") or {}).pop("tool_calls", None)
            if calls:
                changed = True
                held = self.openai.setdefault(index, {})
                for call in calls:
                    slot = held.setdefault(call.get("index", 0), {"id": None, "name": "", "arguments": ""})
                    slot["id"] = call.get("id", slot["id"])
                    function = call.get("function") or {}
                    slot["name"] += function.get("name") or ""
                    slot["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason") is not None:
                before = self.removed
                all_removed = self.release_choice(index, releases, removed)
                if all_removed and self.removed > before and choice["finish_reason"] == "tool_calls":
                    choice["finish_reason"] = "stop"
                    changed = True
        out.extend(releases)
        if not changed:
            out.append(ev)
        elif chunk.get("usage") or any(c.get("delta") or c.get("finish_reason") is not None
                                       for c in chunk.get("choices", [])):
            out.append(pb.PolicyStreamEvent(seq=ev.seq, data=json.dumps(chunk).encode()))

    def release_choice(self, choice, out, removed):
        calls = self.openai.pop(choice, {})

        def chunk(delta):
            return event({**self.envelope, "choices": [
                {"index": choice, "delta": delta, "logprobs": None, "finish_reason": None}]})

        kept, texts = 0, []
        for _, call in sorted(calls.items()):
            blocked = self.guard.check(call["name"], call["arguments"])
            if blocked:
                removed.append(blocked)
                texts.append(self.guard.explanation(blocked))
                self.removed += 1
            else:
                out.append(chunk({"tool_calls": [{
                    "index": kept, "id": call["id"], "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]}}]}))
                kept += 1
                self.kept += 1
        if texts:
            out.append(chunk({"content": "\n\n".join(texts)}))
        return kept == 0 and bool(texts)

    def anthropic_event(self, ev, value, out, removed):
        value = value if isinstance(value, dict) else {}
        kind, index = value.get("type"), value.get("index")
        if self.block is not None:
            ours = index == self.block["index"]
            if kind == "content_block_delta" and ours:
                self.block["input"] += (value.get("delta") or {}).get("partial_json", "")
                self.block["events"].append((ev, True))
            elif kind == "content_block_stop" and ours:
                self.release_block(ev, out, removed)
            else:
                self.block["events"].append((ev, False))
            return
        block = value.get("content_block") or {}
        if kind == "content_block_start" and block.get("type") == "tool_use":
            start_input = block.get("input") or {}
            self.block = {"index": index, "name": block.get("name", ""), "events": [(ev, True)],
                          "input": json.dumps(start_input) if start_input else ""}
        elif (kind == "message_delta" and self.removed and not self.kept
              and (value.get("delta") or {}).get("stop_reason") == "tool_use"):
            value["delta"]["stop_reason"] = "end_turn"
            out.append(pb.PolicyStreamEvent(seq=ev.seq, event_type=ev.event_type,
                                            data=json.dumps(value).encode()))
        else:
            out.append(ev)

    def release_block(self, stop, out, removed):
        held, self.block = self.block, None
        blocked = self.guard.check(held["name"], held["input"])
        if not blocked:
            self.kept += 1
            out.extend(ev for ev, _ in held["events"])
            if stop is not None:
                out.append(stop)
            return
        self.removed += 1
        removed.append(blocked)
        i = held["index"]
        out.append(event({"type": "content_block_start", "index": i,
                          "content_block": {"type": "text", "text": ""}}, "content_block_start"))
        out.append(event({"type": "content_block_delta", "index": i, "delta": {
            "type": "text_delta", "text": self.guard.explanation(blocked)}}, "content_block_delta"))
        out.append(event({"type": "content_block_stop", "index": i}, "content_block_stop"))
        out.extend(ev for ev, ours in held["events"] if not ours)


class PathGuardServicer(pb_grpc.PolicyServiceServicer):
    def __init__(self, guard):
        self.guard = guard

    def Describe(self, request, context):
        return pb.PolicyDescription(name="path-guard-python",
                                    phases=[pb.PHASE_RESPONSE, pb.PHASE_STREAM])

    def ProcessCall(self, requests, context):
        api, stream = "openai", None
        for message in requests:
            kind = message.WhichOneof("message")
            removed = []
            if kind == "start":
                api = stubs.api_name(message.start.api)
                continue
            if kind == "request":  # not asked for; answered unchanged anyway
                result = pb.PolicyResponse(request_result=pb.PolicyRequestResult(
                    continue_request=pb.PolicyContinue()))
            elif kind == "response":
                body = json.loads(message.response.body)
                self.guard.response(api, body, removed)
                result = pb.PolicyResponse(response_result=pb.PolicyResponseResult(
                    body=json.dumps(body).encode()) if removed else pb.PolicyResponseResult())
            elif kind == "event":
                stream = stream or StreamGuard(self.guard, api)
                out = []
                stream.on_event(message.event, out, removed)
                result = pb.PolicyResponse(event_result=pb.PolicyEventResult(
                    seq=message.event.seq, events=out))
            elif kind == "stream_end":
                out = []
                if stream:
                    stream.on_end(out, removed)
                result = pb.PolicyResponse(stream_end_result=pb.PolicyStreamEndResult(events=out))
            else:
                continue
            for blocked in removed:
                yield pb.PolicyResponse(record=pb.PolicyRecord(
                    action="blocked",
                    summary=f"removed tool call `{blocked['tool']}` touching {', '.join(blocked['paths'])}",
                    data_json=json.dumps({**blocked, "allowed_dir": self.guard.allowed}).encode()))
            yield result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7002)
    parser.add_argument("--allowed-dir", default="/workspace")
    parser.add_argument("--workers", type=int, default=64,
                        help="concurrent calls (one thread each while the call runs)")
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers),
                         options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                  ("grpc.max_send_message_length", 64 * 1024 * 1024),
                                  # Luthien pings every 30 s while calls are open.
                                  ("grpc.keepalive_permit_without_calls", 1),
                                  ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                                  # A port in use is an error, not silently shared.
                                  ("grpc.so_reuseport", 0)])
    pb_grpc.add_PolicyServiceServicer_to_server(PathGuardServicer(Guard(args.allowed_dir)), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    print(f"path-guard listening on {args.host}:{port}", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(1)


if __name__ == "__main__":
    main()
