"""Generates the Python gRPC stubs of luthien.v1.PolicyService into ./gen.

    python3 examples/remote-policy-python/stubs.py

`server.py` and `minimal.py` call `load()`, which (re)generates them when they are missing
or older than the proto, then imports them. Outside this repository, point LUTHIEN_PROTO_DIR
at a folder holding `luthien/v1/policy_service.proto`.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.environ.get("LUTHIEN_PROTO_DIR", os.path.join(HERE, "..", "..", "proto"))
PROTO = "luthien/v1/policy_service.proto"
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
    ])
    if status != 0:
        sys.exit(f"protoc failed ({status}) on {os.path.join(PROTO_DIR, PROTO)}")


def load():
    """Returns (policy_service_pb2, policy_service_pb2_grpc), generating them when stale."""
    stub = os.path.join(OUT, "luthien", "v1", "policy_service_pb2_grpc.py")
    source = os.path.join(PROTO_DIR, PROTO)
    if not os.path.exists(stub) or (
        os.path.exists(source) and os.path.getmtime(source) > os.path.getmtime(stub)
    ):
        generate()
    if OUT not in sys.path:
        sys.path.insert(0, OUT)
    try:
        from luthien.v1 import policy_service_pb2, policy_service_pb2_grpc
    except ImportError as error:
        sys.exit(
            f"cannot import the generated stubs ({error}): python3 -m pip install -r "
            + os.path.join(HERE, "requirements.txt")
        )
    return policy_service_pb2, policy_service_pb2_grpc


if __name__ == "__main__":
    generate()
    print("stubs generated in", OUT)
