"""The document and job endpoints of API.md ("Documents and jobs")."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from ingest.detect import SAMPLE_BYTES, DetectionError, detect_content_type
from ingest.registry import ApiKey, DocumentRecord, DocumentStatus, JobNotRetryable, Registry
from rag.api.auth import KEYED_ERRORS, ReadKey, WriteKey, hidden_collection
from rag.api.deps import BlobsDep, RegistryDep, SettingsDep, StoreDep, WorkersDep
from rag.api.upload import UNCHANGED, UPLOAD_BODY, UploadedFile, read_upload
from rag.core.collections import check_collection
from rag.core.errors import Conflict, InvalidRequest, NotFound, UnsupportedType
from rag.web.error_schema import error_responses

router = APIRouter(tags=["documents"], responses=KEYED_ERRORS)
NOT_FOUND = error_responses(404)


@router.post(
    "/v1/documents",
    status_code=202,
    summary="Upload one or more documents",
    responses={200: UNCHANGED, **error_responses(400, 404, 415)},
    openapi_extra=UPLOAD_BODY,
)
async def upload_documents(
    request: Request,
    settings: SettingsDep,
    registry: RegistryDep,
    blobs: BlobsDep,
    workers: WorkersDep,
    key: WriteKey,
) -> JSONResponse:
    # Each file streams into a temporary blob file (hashed as it arrives, its head kept); every
    # file is checked before any is stored, and a refused upload leaves nothing behind.
    async with read_upload(
        request,
        blobs,
        max_bytes=settings.max_upload_bytes,
        max_files=settings.max_files_per_upload,
        head_bytes=SAMPLE_BYTES + 1,  # one byte more tells detection the head is not all
        max_metadata_bytes=settings.max_metadata_bytes,
    ) as form:
        if not key.may_use(form.collection):
            raise hidden_collection(form.collection)
        accepted: list[tuple[UploadedFile, str]] = []
        for upload in form.files:
            try:
                content_type = await asyncio.to_thread(
                    detect_content_type,
                    upload.writer.head,
                    upload.filename,
                    upload.declared_type,
                    path=upload.writer.temp_path,
                )
            except DetectionError as exc:
                error = InvalidRequest if exc.reason == "empty" else UnsupportedType
                raise error(str(exc), filename=upload.filename, reason=exc.reason) from exc
            accepted.append((upload, content_type))

        answers: list[dict[str, Any]] = []
        created_any = False
        for upload, content_type in accepted:
            await upload.writer.commit()
            document, job, created = await registry.add_document(
                collection=form.collection,
                filename=upload.filename,
                content_type=content_type,
                sha256=await upload.writer.finish(),
                size=upload.writer.size,
                metadata=form.metadata,
                max_attempts=settings.job_max_attempts,
                key_id=key.id,
                key_name=key.name,
            )
            created_any = created_any or created
            answers.append(
                {
                    "id": document.id,
                    "job_id": job.id if job is not None else None,
                    "collection": document.collection,
                    "filename": document.filename,
                    "sha256": document.sha256,
                    "status": document.status,
                    "created": created,
                }
            )
    if created_any and workers is not None:
        workers.wake()
    return JSONResponse({"documents": answers}, status_code=202 if created_any else 200)


@router.get("/v1/documents", summary="A page of documents", responses=error_responses(400))
async def list_documents(
    registry: RegistryDep,
    key: ReadKey,
    collection: str | None = None,
    status: DocumentStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    if collection is not None:
        check_collection(collection)
        if not key.may_use(collection):  # as a collection without documents
            return {"documents": [], "next_cursor": None}
    try:
        documents, next_cursor = await registry.list_documents(
            collection=collection,
            status=status,
            limit=limit,
            cursor=cursor,
            within=None if key.all_collections else key.collections,
        )
    except ValueError as exc:
        raise InvalidRequest(f"invalid cursor: {exc}") from exc
    return {"documents": [d.to_api() for d in documents], "next_cursor": next_cursor}


@router.get("/v1/documents/{document_id}", summary="One document", responses=NOT_FOUND)
async def get_document(registry: RegistryDep, key: ReadKey, document_id: str) -> dict[str, Any]:
    return (await _document_of(registry, key, document_id)).to_api()


async def _document_of(registry: Registry, key: ApiKey, document_id: str) -> DocumentRecord:
    """The document, if it exists in a collection the key may use; otherwise NotFound."""
    document = await registry.get_document(document_id)
    if document is None or not key.may_use(document.collection):
        raise NotFound(f"no document {document_id}")
    return document


@router.delete(
    "/v1/documents/{document_id}",
    status_code=204,
    summary="Delete a document",
    responses=NOT_FOUND,
)
async def delete_document(
    registry: RegistryDep, store: StoreDep, blobs: BlobsDep, key: WriteKey, document_id: str
) -> Response:
    await _document_of(registry, key, document_id)
    # The registry row goes first: a job still ingesting the document loses it at its next
    # upsert and removes what it wrote after this point; the store delete removes the rest.
    document = await registry.delete_document(document_id)
    if document is None:
        raise NotFound(f"no document {document_id}")
    await store.delete_document(document.collection, document.id)
    if not await registry.sha256_in_use(document.sha256):
        await blobs.delete(document.sha256)
    return Response(status_code=204)


@router.post(
    "/v1/documents/{document_id}/retry",
    status_code=202,
    summary="Retry a failed document",
    responses=error_responses(404, 409),
)
async def retry_document(
    registry: RegistryDep, workers: WorkersDep, key: WriteKey, document_id: str
) -> dict[str, Any]:
    """Requeue the latest job of a ``failed`` document (as ``POST /v1/jobs/{id}/retry``)."""
    await _document_of(registry, key, document_id)
    job = await registry.latest_job_for(document_id)
    if job is None:
        raise NotFound(f"no document {document_id}")
    return await retry_job(registry, workers, key, job.id)


@router.get(
    "/v1/jobs/{job_id}", summary="State and progress of an ingestion job", responses=NOT_FOUND
)
async def get_job(registry: RegistryDep, key: ReadKey, job_id: str) -> dict[str, Any]:
    await _job_allowed(registry, key, job_id)
    job = await registry.get_job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job.to_api()


async def _job_allowed(registry: Registry, key: ApiKey, job_id: str) -> None:
    """NotFound unless the job exists and its document is in a collection the key may use."""
    if key.all_collections:
        return
    job = await registry.get_job(job_id)
    document = await registry.get_document(job.document_id) if job is not None else None
    if document is None or not key.may_use(document.collection):
        raise NotFound(f"no job {job_id}")


@router.post(
    "/v1/jobs/{job_id}/retry",
    status_code=202,
    summary="Requeue a failed job",
    responses=error_responses(404, 409),
)
async def retry_job(
    registry: RegistryDep, workers: WorkersDep, key: WriteKey, job_id: str
) -> dict[str, Any]:
    await _job_allowed(registry, key, job_id)
    try:
        job = await registry.retry_job(job_id)
    except JobNotRetryable as exc:
        raise Conflict(str(exc)) from exc
    if job is None:
        raise NotFound(f"no job {job_id}")
    if workers is not None:
        workers.wake()
    return job.to_api()
