"""Vector store backends behind ``rag.core.vectorstore.VectorStore``.

- ``layout``: the stored layout's names and constants (no qdrant-client: the store process
  imports only these);
- ``base``: what every backend stores and returns (points, hits, ids, the backend interface);
- ``qdrant``: Qdrant through ``AsyncQdrantClient``, against a server or in local mode;
- ``edge``: Qdrant Edge (``qdrant-edge-py``), the embedded default, run in a store process
  (``host``) so that its GIL-holding calls never touch the service's event loop;
- ``shards``, ``filters``: the Qdrant Edge calls themselves, used by the host and by migration;
- ``migrate``: converting a local-mode folder into Qdrant Edge shards.
"""
