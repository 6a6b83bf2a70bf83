"""``rag balancer``: the pool served as a reverse proxy that speaks llama-server and OpenAI."""

from rag.balancer.app import create_balancer_app
from rag.balancer.settings import BalancerSettings, balancer_settings

__all__ = ["BalancerSettings", "balancer_settings", "create_balancer_app"]
