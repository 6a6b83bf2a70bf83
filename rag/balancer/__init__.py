"""``rag balancer``: the pool served as a reverse proxy that speaks llama-server and OpenAI."""

from rag.balancer.app import create_balancer_app
from rag.balancer.settings import BalancerSettings

__all__ = ["BalancerSettings", "create_balancer_app"]
