"""Receiving an upload: a size-limited multipart body, each file stored durably before the answer.

The request body is counted as it streams in; past ``max_bytes`` the upload stops with 413
before the rest is read. Starlette spools file parts to disk beyond 1 MiB, so memory stays
bounded, and each file is then hashed and moved into the content-addressed blob store.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException
from starlette.types import Message

from rag.core.collections import check_collection
from rag.core.errors import InvalidRequest, PayloadTooLarge


@dataclass
class UploadForm:
    collection: str
    metadata: dict[str, Any]
    files: list[UploadFile]


@asynccontextmanager
async def read_upload(
    request: Request, *, max_bytes: int, max_files: int
) -> AsyncIterator[UploadForm]:
    """The parsed upload; its spooled files are closed when the block ends."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"upload of {int(declared)} bytes exceeds the limit of {max_bytes}")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("uploads must be multipart/form-data with one or more 'file' parts")
    received = 0
    receive = request.receive

    async def counting_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise PayloadTooLarge(f"upload exceeds the limit of {max_bytes} bytes")
        return message

    limited = Request(request.scope, counting_receive)
    try:
        form = await limited.form(max_files=max_files, max_fields=16)
    except MultiPartException as exc:
        raise InvalidRequest(f"malformed multipart body: {exc.message}") from exc
    try:
        yield _validated(form)
    finally:
        await form.close()


def _validated(form: FormData) -> UploadForm:
    files = [item for item in form.getlist("file") if isinstance(item, UploadFile)]
    if not files:
        raise InvalidRequest("no 'file' part in the upload")
    collection = check_collection(str(form.get("collection") or "default"))
    metadata: dict[str, Any] = {}
    raw = form.get("metadata")
    if raw:
        try:
            metadata = json.loads(str(raw))
        except ValueError as exc:
            raise InvalidRequest(f"metadata is not valid JSON: {exc}") from exc
        if not isinstance(metadata, dict):
            raise InvalidRequest("metadata must be a JSON object")
    return UploadForm(collection, metadata, files)
