"""The augmented prompt: versioned templates, numbered sources, and the token budget.

Templates are files in ``rag/answer/prompts/`` (``answer-v1.txt``); their name is recorded
with every answer. The prompt is formatted by the generation server's own chat template
(``/apply-template``) and measured with its own tokenizer (``/tokenize``), both through the
generation pool, so that
nothing here assumes a particular model (a prompt with fewer UTF-8 bytes than the budget fits
whatever the tokenizer, and is not measured). The budget is the server's real per-slot context
(``GET /props``: ``default_generation_settings.n_ctx``) minus the tokens reserved for the answer.
Sources that do not fit are dropped whole, lowest score first; a source is never cut.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from rag.core.errors import InvalidRequest, UpstreamFailed
from rag.core.pool import Pool
from rag.core.search import Result

SECTIONS = ("system", "user", "source")
_SECTION = re.compile(r"^\[(\w+)\]\s*$")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
PROPS_TTL = 30.0
"""Seconds the generation server's context size is cached before /props is asked again."""
SAFETY_TOKENS = 4
"""Margin for the tokens a chat template or the server may add around the measured prompt."""


class UnknownTemplate(ValueError):
    """No template file of that name, or one without the required sections."""


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    user: str
    source: str

    def source_block(self, source: Source) -> str:
        return fill(self.source, n=str(source.n), title=source.title, text=source.result.text)

    def messages(self, question: str, sources: list[Source]) -> list[dict[str, str]]:
        blocks = "\n\n".join(self.source_block(source) for source in sources)
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": fill(self.user, question=question, sources=blocks)},
        ]


def fill(template: str, **values: str) -> str:
    """Replace ``{name}`` placeholders in one pass: inserted text is never scanned again, so
    braces in a question or a source stay as they are."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


@functools.cache
def load_template(name: str) -> Template:
    """The template ``rag/answer/prompts/<name>.txt``, split into its ``[section]`` parts."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise UnknownTemplate(f"invalid template name {name!r}")
    path = resources.files("rag.answer.prompts").joinpath(f"{name}.txt")
    if not path.is_file():
        raise UnknownTemplate(f"no prompt template {name!r} in rag/answer/prompts")
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        header = _SECTION.match(line)
        if header and header.group(1) in SECTIONS:
            current = parts.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
        elif line.strip() and not line.startswith("#"):
            raise UnknownTemplate(f"template {name!r}: text before the first section")
    missing = [section for section in SECTIONS if section not in parts]
    if missing:
        raise UnknownTemplate(f"template {name!r} lacks the sections {missing}")
    text = {key: "\n".join(lines).strip("\n") for key, lines in parts.items()}
    return Template(name, text["system"], text["user"], text["source"])


@dataclass(frozen=True)
class Source:
    """A retrieved chunk as given to the model, under its number ``n`` (1-based)."""

    n: int
    result: Result

    @property
    def title(self) -> str:
        title = self.result.filename or self.result.document_id
        if self.result.page is not None:
            title += f", page {self.result.page}"
        if self.result.heading_path:
            title += " — " + " / ".join(self.result.heading_path)
        return title

    def to_api(self, *, with_text: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "n": self.n,
            "document_id": self.result.document_id,
            "chunk_id": self.result.chunk_id,
            "filename": self.result.filename,
            "page": self.result.page,
            "score": round(self.result.score, 4),
        }
        if with_text:
            data["text"] = self.result.text
        return data


@dataclass(frozen=True)
class Prompt:
    text: str
    sources: list[Source]
    tokens: int | None  # the prompt's length in model tokens; None: not measured (it fits)
    dropped: int  # sources left out because they did not fit


class PromptBuilder:
    """Builds prompts that fit the generation servers' per-slot context."""

    def __init__(self, pool: Pool, *, props_ttl: float = PROPS_TTL) -> None:
        self.pool = pool
        self.props_ttl = props_ttl
        self._context: tuple[int, float] | None = None
        self._lock = asyncio.Lock()

    async def context_size(self) -> int:
        """Tokens of one slot of a generation server (``-c`` divided by ``-np``)."""
        now = time.monotonic()
        if self._context is not None and now - self._context[1] < self.props_ttl:
            return self._context[0]
        async with self._lock:
            if self._context is not None and time.monotonic() - self._context[1] < self.props_ttl:
                return self._context[0]
            response = await self.pool.request("GET", "/props")
            size = _slot_context(_json(response.content, "/props"))
            self._context = (size, time.monotonic())
            return size

    async def count(self, text: str) -> int:
        """Tokens of ``text`` as the server tokenizes a prompt (special tokens added)."""
        response = await self.pool.request(
            "POST", "/tokenize", json={"content": text, "add_special": True, "parse_special": True}
        )
        tokens = _json(response.content, "/tokenize").get("tokens")
        if not isinstance(tokens, list):
            raise UpstreamFailed("the generation server's /tokenize answer has no tokens")
        return len(tokens)

    async def format(self, messages: list[dict[str, str]]) -> str:
        """The prompt text of ``messages`` in the served model's own chat template."""
        response = await self.pool.request("POST", "/apply-template", json={"messages": messages})
        prompt = _json(response.content, "/apply-template").get("prompt")
        if not isinstance(prompt, str):
            raise UpstreamFailed("the generation server's /apply-template answer has no prompt")
        return prompt

    async def build(
        self, template: Template, question: str, results: list[Result], *, reserve: int
    ) -> Prompt:
        """The prompt with as many of ``results`` (best first) as fit beside ``reserve`` tokens
        for the answer. Raises ``InvalidRequest`` when the question alone does not fit."""
        budget = await self.context_size() - reserve - SAFETY_TOKENS
        sources = [Source(n, result) for n, result in enumerate(results, start=1)]
        text = await self.format(template.messages(question, sources))
        if fits_by_bytes(text, budget):
            return Prompt(text, sources, None, 0)
        tokens = await self.count(text)
        if tokens <= budget:
            return Prompt(text, sources, tokens, 0)
        keep = await self._estimate_fit(template, question, sources, budget)
        while True:
            text = await self.format(template.messages(question, sources[:keep]))
            tokens = await self.count(text)
            if tokens <= budget:
                return Prompt(text, sources[:keep], tokens, len(sources) - keep)
            if keep == 0:
                raise InvalidRequest(
                    f"the question takes {tokens} tokens of the model's {budget + reserve}-token "
                    "context; shorten it",
                    reason="question_too_long",
                )
            keep -= 1

    async def _estimate_fit(
        self, template: Template, question: str, sources: list[Source], budget: int
    ) -> int:
        """How many of the best sources fit, from the lengths of the parts measured separately
        (one round of concurrent calls); the caller checks the result on the whole prompt."""
        frame = await self.format(template.messages(question, []))
        lengths = await asyncio.gather(
            self.count(frame),
            *(self.count(template.source_block(source) + "\n\n") for source in sources),
        )
        used, keep = lengths[0], 0
        for length in lengths[1:]:
            if used + length > budget:
                break
            used += length
            keep += 1
        return keep


def fits_by_bytes(text: str, budget: int) -> bool:
    """Whether ``text`` surely fits ``budget`` tokens without asking the tokenizer: a token of a
    byte-level BPE or byte-fallback tokenizer stands for at least one byte of text, so a prompt
    has at most as many tokens as UTF-8 bytes (plus the special tokens the server adds, within
    ``SAFETY_TOKENS``). Saves a round trip for every prompt well inside the context."""
    return len(text.encode("utf-8")) + SAFETY_TOKENS <= budget


def _json(content: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(content)
    except ValueError as exc:
        raise UpstreamFailed(f"the generation server's {what} answer is not JSON") from exc
    if not isinstance(value, dict):
        raise UpstreamFailed(f"the generation server's {what} answer is not an object")
    return value


def _slot_context(props: dict[str, Any]) -> int:
    """``n_ctx`` of one slot from ``/props`` (llama.cpp reports the per-slot value there)."""
    settings = props.get("default_generation_settings")
    size = settings.get("n_ctx") if isinstance(settings, dict) else props.get("n_ctx")
    if not isinstance(size, int) or size <= 0:
        raise UpstreamFailed("the generation server's /props does not report n_ctx")
    return size
