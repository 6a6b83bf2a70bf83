"""The augmented prompt: versioned templates, numbered sources, and the token budget.

Templates are files in ``rag/answer/prompts/`` (``answer-v1.txt``); their name is recorded
with every answer. The prompt is formatted by the generation server's own chat template
(``/apply-template``) and measured with its own tokenizer (``/tokenize``), both through the
generation pool, so that
nothing here assumes a particular model (a prompt with fewer UTF-8 bytes than the budget fits
whatever the tokenizer, and is not measured). The budget is the server's real per-slot context
(``GET /props``: ``default_generation_settings.n_ctx``) minus the tokens reserved for the answer.
Sources that do not fit are dropped whole, lowest score first; a source is never cut.

Untrusted text stays data: llama-server parses special tokens in a ``/completion`` prompt (it
must, for the chat template's own), so a question, a filename or a source that spells one
(``<|im_end|>``) would become a real control token and could forge a chat turn. Before the
template is applied, :meth:`PromptBuilder.neutraliser` asks the server's tokenizer which control
tokens those texts spell (tokenized with and without ``parse_special``: a token only the
first has, whose piece read as plain text is not that token, is a control token) and breaks
each such string with a WORD JOINER (U+2060) after its first character, so it is tokenized as
the plain text it is. The sources handed back keep their text.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Callable
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
JOINER = "\u2060"
"""WORD JOINER: invisible, and in no control token, so it breaks one's spelling."""
NEUTRALISE_ROUNDS = 3

Clean = Callable[[str], str]


def unchanged(text: str) -> str:
    return text


class UnknownTemplate(ValueError):
    """No template file of that name, or one without the required sections."""


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    user: str
    source: str

    def source_block(self, source: Source, clean: Clean = unchanged) -> str:
        return fill(
            self.source, n=str(source.n), title=clean(source.title), text=clean(source.result.text)
        )

    def messages(
        self, question: str, sources: list[Source], clean: Clean = unchanged
    ) -> list[dict[str, str]]:
        """The chat messages; ``clean`` is applied to every untrusted text (question, titles,
        sources), never to the template's own."""
        blocks = "\n\n".join(self.source_block(source, clean) for source in sources)
        user = fill(self.user, question=clean(question), sources=blocks)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


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
        return len(await self.tokenize(text, add_special=True, parse_special=True))

    async def tokenize(
        self, text: str, *, add_special: bool, parse_special: bool, with_pieces: bool = False
    ) -> list[Any]:
        """The server's tokens of ``text`` (ids, or ``{"id", "piece"}`` with pieces)."""
        body = {
            "content": text,
            "add_special": add_special,
            "parse_special": parse_special,
            "with_pieces": with_pieces,
        }
        response = await self.pool.request("POST", "/tokenize", json=body)
        tokens = _json(response.content, "/tokenize").get("tokens")
        if not isinstance(tokens, list):
            raise UpstreamFailed("the generation server's /tokenize answer has no tokens")
        return tokens

    async def control_strings(self, text: str) -> set[str]:
        """The control tokens that ``text`` spells, as the served model's tokenizer parses
        special tokens; plain tokenization never yields one."""
        if not text:
            return set()
        special, plain = await asyncio.gather(
            self.tokenize(text, add_special=False, parse_special=True, with_pieces=True),
            self.tokenize(text, add_special=False, parse_special=False),
        )
        ordinary = {token for token in plain if isinstance(token, int)}
        candidates = {
            token["id"]: token["piece"]
            for token in special
            if isinstance(token, dict)
            and token.get("id") not in ordinary
            and isinstance(token.get("piece"), str)
            and token["piece"]
        }
        if not candidates:
            return set()
        # a split can differ around a control token: a piece is one only if, read as plain
        # text, it is not that same single token
        alone = await asyncio.gather(
            *(
                self.tokenize(piece, add_special=False, parse_special=False)
                for piece in candidates.values()
            )
        )
        return {
            piece
            for (token, piece), plain_piece in zip(candidates.items(), alone, strict=True)
            if plain_piece != [token]
        }

    async def neutraliser(self, texts: list[str]) -> Clean:
        """A function that breaks every control-token string in ``texts`` (see the module)."""
        spelled: set[str] = set()
        joined = "\n".join(texts)
        for _ in range(NEUTRALISE_ROUNDS):
            found = await self.control_strings(_break(joined, spelled))
            if not found - spelled:
                break
            spelled |= found
        else:
            raise InvalidRequest("the text spells control tokens that cannot be neutralised")
        if not spelled:
            return unchanged
        return functools.partial(_break, spelled=spelled)

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
        clean = await self.neutraliser(
            [question, *(part for s in sources for part in (s.title, s.result.text))]
        )
        text = await self.format(template.messages(question, sources, clean))
        if fits_by_bytes(text, budget):
            return Prompt(text, sources, None, 0)
        tokens = await self.count(text)
        if tokens <= budget:
            return Prompt(text, sources, tokens, 0)
        keep = await self._estimate_fit(template, question, sources, budget, clean)
        while True:
            text = await self.format(template.messages(question, sources[:keep], clean))
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
        self,
        template: Template,
        question: str,
        sources: list[Source],
        budget: int,
        clean: Clean,
    ) -> int:
        """How many of the best sources fit, from the lengths of the parts measured separately
        (one round of concurrent calls); the caller checks the result on the whole prompt."""
        frame = await self.format(template.messages(question, [], clean))
        lengths = await asyncio.gather(
            self.count(frame),
            *(self.count(template.source_block(source, clean) + "\n\n") for source in sources),
        )
        used, keep = lengths[0], 0
        for length in lengths[1:]:
            if used + length > budget:
                break
            used += length
            keep += 1
        return keep


def _break(text: str, spelled: set[str]) -> str:
    """``text`` with a WORD JOINER after the first character of each string in ``spelled``
    (longest first, so that one control token inside another is broken as the longer one)."""
    for piece in sorted(spelled, key=len, reverse=True):
        if len(piece) > 1:
            text = text.replace(piece, piece[0] + JOINER + piece[1:])
    return text


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
