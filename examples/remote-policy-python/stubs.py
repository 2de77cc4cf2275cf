"""Generates the Python gRPC stubs of luthien.policy.v1.PolicyService into ./gen.

    python3 examples/remote-policy-python/stubs.py

`server.py` and `minimal.py` call `load()`, which (re)generates them when they are missing
or older than the proto, then imports them. Outside this repository, point LUTHIEN_PROTO_DIR
at a folder holding `luthien/policy/v1/policy_service.proto` and the
`luthien/common/v1/api.proto` it imports.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.environ.get("LUTHIEN_PROTO_DIR", os.path.join(HERE, "..", "..", "proto"))
PROTO = "luthien/policy/v1/policy_service.proto"
COMMON = "luthien/common/v1/api.proto"
OUT = os.path.join(HERE, "gen")


def generate():
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        sys.exit(
            "grpcio-tools is missing: python3 -m pip install -r "
            + os.path.join(HERE, "requirements.txt")
        )
    os.makedirs(OUT, exist_ok=True)
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    status = protoc.main([
        "protoc",
        "-I" + PROTO_DIR,
        "-I" + well_known,
        "--python_out=" + OUT,
        "--grpc_python_out=" + OUT,
        PROTO,
        COMMON,
    ])
    if status != 0:
        sys.exit(f"protoc failed ({status}) on {os.path.join(PROTO_DIR, PROTO)}")


def load():
    """Returns (policy_service_pb2, policy_service_pb2_grpc), generating them when stale."""
    stub = os.path.join(OUT, "luthien", "policy", "v1", "policy_service_pb2_grpc.py")
    sources = [os.path.join(PROTO_DIR, proto) for proto in (PROTO, COMMON)]
    if not os.path.exists(stub) or any(
        os.path.exists(source) and os.path.getmtime(source) > os.path.getmtime(stub)
        for source in sources
    ):
        generate()
    if OUT not in sys.path:
        sys.path.insert(0, OUT)
    try:
        from luthien.policy.v1 import policy_service_pb2, policy_service_pb2_grpc
    except ImportError as error:
        sys.exit(
            f"cannot import the generated stubs ({error}): python3 -m pip install -r "
            + os.path.join(HERE, "requirements.txt")
        )
    return policy_service_pb2, policy_service_pb2_grpc


def api_name(api):
    """`PolicyCallStart.api` as the short name the examples branch on, Luthien's own names:
    `openai` (chat completions), `anthropic` or `openai_responses`."""
    from luthien.common.v1 import api_pb2
    return {api_pb2.API_ANTHROPIC_MESSAGES: "anthropic",
            api_pb2.API_OPENAI_RESPONSES: "openai_responses"}.get(api, "openai")


if __name__ == "__main__":
    generate()
    print("stubs generated in", OUT)
