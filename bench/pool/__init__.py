"""Benchmarks of the llama.cpp pool and ``rag balancer`` (one command each, results under
``docs/benchmarks/pool-*``)."""
