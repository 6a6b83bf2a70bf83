"""``python -m rag.balancer``: the balancer alone, with only its own dependencies imported.

The same options and settings as ``rag balancer`` (which loads every command of the CLI, and so
the ingestion and store packages too); for a host that runs nothing but the balancer, such as a
GPU host with the project on ``PYTHONPATH`` and only the balancer's wheels installed.
"""

from __future__ import annotations

import argparse

from rag.balancer import balancer_settings
from rag.balancer.serve import serve
from rag.balancer.settings import DEFAULT_HOST, DEFAULT_PORT
from rag.core.pool.policy import POLICIES


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m rag.balancer", description=__doc__)
    parser.add_argument("--upstream", action="append", help="llama-server base URL; repeat")
    parser.add_argument("--host", help=f"listen address (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, help=f"listen port (default {DEFAULT_PORT})")
    parser.add_argument("--policy", choices=POLICIES)
    args = parser.parse_args()
    settings = balancer_settings(
        host=args.host, port=args.port, policy=args.policy, upstreams=args.upstream
    )
    serve(settings)


if __name__ == "__main__":
    main()
