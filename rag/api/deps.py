"""What a route may ask for: each component the lifespan built, as a typed FastAPI dependency.

Routes name the parts they need (``registry: RegistryDep``), never the whole set of components.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ingest.blobs import BlobStore
from ingest.registry import Registry
from ingest.worker import Workers
from rag.answer import AnswerService
from rag.core.pool import Pool
from rag.core.runtime.supervisor import Supervisor
from rag.core.search import Searcher
from rag.core.settings import Settings
from rag.core.vectorstore import VectorStore
from rag.service.components import Components
from rag.service.metrics import Metrics
from rag.service.usage import UsageRecorder


def _components(request: Request) -> Components:
    components: Components = request.app.state.components
    return components


ComponentsDep = Annotated[Components, Depends(_components)]


def _settings(components: ComponentsDep) -> Settings:
    return components.settings


def _registry(components: ComponentsDep) -> Registry:
    return components.registry


def _blobs(components: ComponentsDep) -> BlobStore:
    return components.blobs


def _store(components: ComponentsDep) -> VectorStore:
    return components.store


def _searcher(components: ComponentsDep) -> Searcher:
    return components.searcher


def _answers(components: ComponentsDep) -> AnswerService:
    return components.answers


def _workers(components: ComponentsDep) -> Workers | None:
    return components.workers


def _supervisor(components: ComponentsDep) -> Supervisor | None:
    return components.supervisor


def _metrics(components: ComponentsDep) -> Metrics:
    return components.metrics


def _recorder(components: ComponentsDep) -> UsageRecorder:
    return components.recorder


def _embedding_pool(components: ComponentsDep) -> Pool:
    return components.embedding_pool


def _generation_pool(components: ComponentsDep) -> Pool:
    return components.generation_pool


def _query_embedding_pool(components: ComponentsDep) -> Pool | None:
    return components.query_embedding_pool


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[Registry, Depends(_registry)]
BlobsDep = Annotated[BlobStore, Depends(_blobs)]
StoreDep = Annotated[VectorStore, Depends(_store)]
SearcherDep = Annotated[Searcher, Depends(_searcher)]
AnswersDep = Annotated[AnswerService, Depends(_answers)]
WorkersDep = Annotated[Workers | None, Depends(_workers)]
SupervisorDep = Annotated[Supervisor | None, Depends(_supervisor)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
RecorderDep = Annotated[UsageRecorder, Depends(_recorder)]
EmbeddingPoolDep = Annotated[Pool, Depends(_embedding_pool)]
GenerationPoolDep = Annotated[Pool, Depends(_generation_pool)]
QueryEmbeddingPoolDep = Annotated[Pool | None, Depends(_query_embedding_pool)]
