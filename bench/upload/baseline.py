"""The upload path as it was before uploads streamed (the baseline of ``bench.upload``).

Starlette's form parser spools each file to a temporary file, then the route read the whole file
into memory (``data = await upload.read()``) to detect its type, and copied it into the blob store.
Served on its own by ``python -m bench.upload.baseline PORT DATA_DIR``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from ingest.blobs import BlobStore
from ingest.detect import detect_content_type


def create_app(data_dir: Path) -> FastAPI:
    app = FastAPI()
    blobs = BlobStore(data_dir / "blobs")

    async def chunks(upload: UploadFile) -> AsyncIterator[bytes]:
        while block := await upload.read(1 << 20):
            yield block

    @app.post("/v1/documents")
    async def upload(request: Request) -> JSONResponse:
        form = await request.form(max_files=20, max_fields=16)
        answers = []
        try:
            for item in form.getlist("file"):
                assert isinstance(item, UploadFile)
                await item.seek(0)
                data = await item.read()  # the whole file, in memory
                await item.seek(0)
                kind = await asyncio.to_thread(
                    detect_content_type, data, item.filename or "upload", item.content_type
                )
                del data
                sha256, size, _ = await blobs.write_stream(chunks(item), 1 << 40)
                answers.append({"sha256": sha256, "size": size, "content_type": kind})
        finally:
            await form.close()
        return JSONResponse({"documents": answers}, status_code=202)

    return app


if __name__ == "__main__":
    port, folder = int(sys.argv[1]), Path(sys.argv[2])
    uvicorn.run(create_app(folder), host="127.0.0.1", port=port, log_level="warning")
