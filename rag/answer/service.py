"""Question answering, start to end: retrieve, build the prompt, generate under the grammar,
validate, check the citations, and describe it all as one answer object or a series of events.

``prepare`` does everything before the model is called (a failure there is an ordinary HTTP error:
404, 400, 503); ``answer`` returns the final object; ``open`` + ``events`` stream it as events
``sources``, ``delta``..., ``answer``, ``done`` (or ``error`` in place of the rest). With no source
above ``answer_min_score`` the model is not called: the answer says the service does not know.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from rag.answer.citations import CitationCheck, check_citations
from rag.answer.extract import FieldExtractor
from rag.answer.generate import Completion, CompletionStream, Sampling, complete, completion_body
from rag.answer.prompt import Prompt, PromptBuilder, Source, Template, load_template
from rag.answer.schema import (
    InvalidAnswer,
    answer_char_limit,
    answer_grammar,
    answer_schema,
    validate_answer,
)
from rag.core.embeddings import Embedder
from rag.core.errors import InvalidRequest, RagError, UpstreamFailed, ValidationFailed
from rag.core.pool import Pool
from rag.core.search import Searcher, SearchFilter
from rag.core.settings import Settings

log = logging.getLogger(__name__)

DONT_KNOW = "I don't know: no document in this collection matches the question closely enough."
Event = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Question:
    text: str
    collection: str = "default"
    top_k: int | None = None
    filter: SearchFilter | None = None


@dataclass(frozen=True)
class Prepared:
    """Everything decided before the model is called."""

    template: Template
    sources: list[Source]
    prompt: Prompt | None = None
    body: dict[str, Any] | None = None
    schema: dict[str, Any] | None = None
    dont_know: str | None = None  # why the model is not called

    def sources_event(self) -> dict[str, Any]:
        return {"sources": [source.to_api(with_text=True) for source in self.sources]}


class AnswerService:
    def __init__(
        self, *, searcher: Searcher, pool: Pool, embedder: Embedder, settings: Settings
    ) -> None:
        self.searcher = searcher
        self.pool = pool
        self.embedder = embedder
        self.settings = settings
        self.prompts = PromptBuilder(pool)
        self.sampling = Sampling(
            max_tokens=settings.answer_max_tokens,
            temperature=settings.answer_temperature,
            repeat_penalty=settings.answer_repeat_penalty,
        )

    async def prepare(self, question: Question) -> Prepared:
        """Check the question, retrieve, and build the prompt within the token budget."""
        text = question.text.strip()
        if not text:
            raise ValidationFailed("the question is empty", reason="empty_question")
        limit = self.settings.question_max_chars
        if len(text) > limit:
            raise InvalidRequest(
                f"the question is {len(text)} characters long; the limit is {limit}",
                reason="question_too_long",
            )
        template = load_template(self.settings.answer_template)
        try:
            results = await self.searcher.search(
                text,
                collection=question.collection,
                top_k=question.top_k or self.settings.answer_top_k,
                filter=question.filter,
                retrieval="dense",  # the threshold is a cosine score
            )
        except InvalidRequest as exc:  # the embedding model's limit: the question is too long
            if exc.details.get("reason") != "query_too_long":
                raise
            raise InvalidRequest(
                exc.message.replace("the query", "the question", 1), reason="question_too_long"
            ) from exc
        relevant = [r for r in results if r.score >= self.settings.answer_min_score]
        if not relevant:
            return Prepared(template, [], dont_know="no_relevant_sources")
        prompt = await self.prompts.build(
            template, text, relevant, reserve=self.settings.answer_max_tokens
        )
        if not prompt.sources:
            return Prepared(template, [], prompt=prompt, dont_know="no_source_fits")
        numbers = [source.n for source in prompt.sources]
        chars = answer_char_limit(
            self.settings.answer_max_tokens, self.settings.answer_max_chars, len(numbers)
        )
        grammar = answer_grammar(numbers, chars)
        body = completion_body(prompt.text, grammar, self.sampling, stream=False)
        return Prepared(
            template, prompt.sources, prompt, body, schema=answer_schema(numbers, chars)
        )

    async def answer(self, prepared: Prepared) -> dict[str, Any]:
        """The final answer object (non-streaming)."""
        if prepared.body is None:
            return self._dont_know(prepared)
        completion = await complete(self.pool, prepared.body)
        return await self._final(prepared, completion)

    async def open(self, prepared: Prepared) -> CompletionStream | None:
        """Open the upstream stream (failing over before anything is sent to the client)."""
        if prepared.body is None:
            return None
        return await CompletionStream.open(self.pool, prepared.body)

    async def events(
        self, prepared: Prepared, stream: CompletionStream | None
    ) -> AsyncGenerator[Event, None]:
        """The answer as events; any failure becomes one final ``error`` event. Closes
        ``stream`` (and so frees the slot) however it ends, cancellation included."""
        try:
            yield "sources", prepared.sources_event()
            if stream is None:
                final = self._dont_know(prepared)
                yield "delta", {"text": final["answer"]}
            else:
                extractor = FieldExtractor("answer")
                async for piece in stream.chunks():
                    new = extractor.feed(piece)
                    if new:
                        yield "delta", {"text": new}
                assert stream.result is not None
                final = await self._final(prepared, stream.result)
            yield "answer", final
            yield "done", {}
        except RagError as exc:
            if exc.status >= 500:
                log.warning("answer stream failed: %s", exc.message)
            yield "error", error_event(exc)
        except Exception:
            log.exception("answer stream failed")
            yield "error", error_event(RagError("internal error"))
        finally:
            if stream is not None:
                await stream.aclose()

    async def _final(self, prepared: Prepared, completion: Completion) -> dict[str, Any]:
        assert prepared.schema is not None
        assert prepared.prompt is not None
        try:
            parsed = validate_answer(completion.text, prepared.schema)
        except InvalidAnswer as exc:
            log.warning("invalid answer object from the model: %s", exc)
            raise UpstreamFailed(
                f"the model's answer does not conform to the answer schema: {exc}",
                reason="invalid_output",
            ) from exc
        by_number = {source.n: source for source in prepared.sources}
        check = await check_citations(
            self.embedder,
            parsed.answer,
            {n: by_number[n].result.text for n in parsed.citations},
            threshold=self.settings.citation_min_similarity,
        )
        usage = {
            "prompt_tokens": completion.prompt_tokens or prepared.prompt.tokens or 0,
            "completion_tokens": completion.completion_tokens,
        }
        return answer_object(prepared, parsed.answer, parsed.citations, usage=usage, check=check)

    def _dont_know(self, prepared: Prepared) -> dict[str, Any]:
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        return answer_object(
            prepared, DONT_KNOW, [], usage=usage, check=CitationCheck(checked=True)
        )


def answer_object(
    prepared: Prepared,
    answer: str,
    citations: list[int],
    *,
    usage: dict[str, int],
    check: CitationCheck,
) -> dict[str, Any]:
    """The answer object of API.md, plus what the service knows about how it was made."""
    return {
        "answer": answer,
        "citations": citations,
        "sources": [source.to_api() for source in prepared.sources],
        "usage": usage,
        "template": prepared.template.name,
        "dont_know": prepared.dont_know is not None,
        "reason": prepared.dont_know,
        "dropped_sources": prepared.prompt.dropped if prepared.prompt else 0,
        "citations_checked": check.checked,
        "citation_scores": {str(n): score for n, score in check.scores.items()},
        "unsupported_citations": check.unsupported,
    }


def error_event(exc: RagError) -> dict[str, Any]:
    """The ``error`` event: the error body of every endpoint, plus its HTTP status."""
    error: dict[str, Any] = exc.body()["error"]
    error["status"] = exc.status
    return error
