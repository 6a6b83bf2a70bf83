"""Slot-balanced pools of ``llama-server`` upstreams, used in-process and by ``rag balancer``.

policy.py      choose(): the pure choice of an upstream
upstream.py    what is known of one upstream (health, slots, requests in flight)
poller.py      the task per upstream that reads /health, /slots, /props
buffer.py      the bounded FIFO of requests waiting for a slot
scheduler.py   slot leases: choice, buffer, prefix affinity, early handoff
budget.py      token budgets of generation requests, events of their streams
pool.py        Pool: lifecycle, membership, the pollers
requesting.py  Pool's request path: request(), stream() and forward() with failover
opening.py     Opening: an opened answer's lifetime (async with); the upstream key on requests
client.py      PoolClient: httpx's API, open() and exchange() straight to the transport
transport.py   UpstreamTransport: kept-alive connections per upstream; Answer, the raw answer
connection.py  one upstream connection: an asyncio protocol, llhttp parsing its answers
observe.py     watching answers go by unchanged: first chunk, events, timings
prefix.py      prefix keys for cache affinity from request bodies
settings.py    PoolSettings, the one settings model, and build_pool / build_client
metrics.py     Prometheus metrics
"""

from rag.core.pool.errors import UpstreamRejected
from rag.core.pool.metrics import PoolMetrics
from rag.core.pool.policy import POLICIES, Candidate, Policy, choose
from rag.core.pool.pool import Pool

__all__ = ["POLICIES", "Candidate", "Policy", "Pool", "PoolMetrics", "UpstreamRejected", "choose"]
