"""A complete Luthien remote policy in under 60 lines: block requests whose last user
message contains a word.  python3 minimal.py --port 7001 --word forbidden"""
import argparse, json
from concurrent import futures
import grpc
import stubs

pb, pb_grpc = stubs.load()


def last_user_text(body):
    # Chat completions and Anthropic: `messages`; the Responses API: `input`, a string or items.
    conversation = body.get("messages", body.get("input", []))
    if isinstance(conversation, str):
        return conversation
    for message in reversed(conversation):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
    return ""


class BlockWord(pb_grpc.PolicyServiceServicer):
    def __init__(self, word):
        self.word = word.lower()

    def Describe(self, request, context):  # only the request phase: never sees responses
        return pb.PolicyDescription(name="block-word", phases=[pb.PHASE_REQUEST])

    def ProcessCall(self, requests, context):
        api = "openai"
        for message in requests:  # start, then request; one result per phase
            if message.HasField("start"):
                api = stubs.api_name(message.start.api)
            elif message.HasField("request"):
                body = json.loads(message.request.body)
                if self.word not in last_user_text(body).lower():
                    yield pb.PolicyResponse(request_result=pb.PolicyRequestResult(
                        continue_request=pb.PolicyContinue()))  # no body: unchanged
                    continue
                error = f"blocked: the request mentions {self.word!r}"
                answer = ({"type": "error", "error": {"type": "permission_error", "message": error}}
                          if api == "anthropic" else  # both OpenAI APIs share this shape
                          {"error": {"message": error, "type": "permission_error"}})
                yield pb.PolicyResponse(record=pb.PolicyRecord(action="blocked", summary=error))
                yield pb.PolicyResponse(request_result=pb.PolicyRequestResult(
                    respond=pb.PolicyImmediateResponse(
                        status=403, body=json.dumps(answer).encode(), reason=error)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=7001)
    parser.add_argument("--word", default="forbidden")
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_PolicyServiceServicer_to_server(BlockWord(args.word), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()
