"""The upstreams' own Prometheus families (llama-server ``--metrics``) for the balancer's
``/metrics``, after the pool's.

Each upstream's ``/metrics`` is read when the balancer's is scraped (in parallel, a short
timeout; an upstream without ``--metrics`` answers 501 and adds nothing). Every sample appears
once per upstream with an ``upstream`` label, and once without it, aggregated over the
upstreams (counters and counts summed; llama-server's averaged gauges, ``*_seconds`` rates and
``*_ratio``, averaged), so that a dashboard or client made for one llama-server reads the pool
as one. The ``Process-Start-Time-Unix`` header of the first upstream that answered comes along.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

TIMEOUT = httpx.Timeout(connect=1.0, read=2.0, write=2.0, pool=1.0)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_AVERAGED = ("_seconds", "_ratio", "_per_decode")


@dataclass
class _Family:
    meta: list[str] = field(default_factory=list)  # HELP and TYPE lines
    kind: str = "untyped"
    samples: list[str] = field(default_factory=list)  # labelled by upstream
    values: dict[str, list[float]] = field(default_factory=dict)  # unlabelled: per upstream


async def upstream_metrics(
    http: httpx.AsyncClient, upstreams: Mapping[str, Mapping[str, str]]
) -> tuple[str, dict[str, str]]:
    """The text of the families of ``upstreams`` (URL: the headers with its API key) and the
    headers to pass on. Only those upstreams appear: a removed one's series are gone."""
    urls = list(upstreams)
    answers = await asyncio.gather(*(_read(http, url, upstreams[url]) for url in urls))
    families: dict[str, _Family] = {}
    passed: dict[str, str] = {}
    for url, answer in zip(urls, answers, strict=True):
        if answer is None:
            continue
        text, start = answer
        if start and not passed:
            passed["Process-Start-Time-Unix"] = start
        _add(families, url, text)
    return _render(families), passed


async def _read(
    http: httpx.AsyncClient, url: str, headers: Mapping[str, str]
) -> tuple[str, str | None] | None:
    with contextlib.suppress(httpx.HTTPError):
        response = await http.get(f"{url}/metrics", timeout=TIMEOUT, headers=headers)
        if response.status_code == 200:
            return response.text, response.headers.get("Process-Start-Time-Unix")
    return None


def _add(families: dict[str, _Family], url: str, text: str) -> None:
    label = 'upstream="' + url.replace("\\", "\\\\").replace('"', '\\"') + '"'
    for line in text.splitlines():
        if line.startswith("# "):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                family = families.setdefault(parts[2], _Family())
                if not any(m.startswith(f"# {parts[1]} ") for m in family.meta):
                    family.meta.append(line)
                if parts[1] == "TYPE" and len(parts) == 4:
                    family.kind = parts[3]
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        family = families.setdefault(name, _Family())
        inner = labels[1:-1] if labels else ""
        family.samples.append(f"{name}{{{label}{',' + inner if inner else ''}}} {value}")
        if not labels:
            with contextlib.suppress(ValueError):
                family.values.setdefault(name, []).append(float(value))


def _render(families: dict[str, _Family]) -> str:
    lines: list[str] = []
    for family in families.values():
        lines += family.meta
        for name, values in family.values.items():
            averaged = family.kind == "gauge" and name.endswith(_AVERAGED)
            total = sum(values) / len(values) if averaged else sum(values)
            lines.append(f"{name} {total:g}")
        lines += family.samples
    return "\n".join(lines) + "\n" if lines else ""
