"""Prompt templates: loading, sections, placeholders."""

from __future__ import annotations

import pytest

from rag.answer.prompt import Source, UnknownTemplate, fill, load_template
from rag.core.search import Result


def result(text: str, *, page: int | None = None) -> Result:
    return Result("doc", "chunk", 0, 0.9, text, "notes.md", page, ["Intro"], {})


def test_template_v1_has_its_sections() -> None:
    template = load_template("answer-v1")
    assert template.name == "answer-v1"
    assert "{question}" in template.user
    assert "{sources}" in template.user
    assert template.source.startswith("[{n}]")
    assert not template.system.startswith("#")


def test_unknown_template_is_refused() -> None:
    with pytest.raises(UnknownTemplate):
        load_template("answer-v999")
    with pytest.raises(UnknownTemplate):
        load_template("../settings")


def test_braces_in_questions_and_sources_are_kept() -> None:
    template = load_template("answer-v1")
    sources = [Source(1, result("a {question} in a source", page=3))]
    messages = template.messages("what is {sources}?", sources)
    user = messages[1]["content"]
    assert "what is {sources}?" in user
    assert "[1] notes.md, page 3 — Intro\na {question} in a source" in user
    assert fill("{a} {b}", a="{b}") == "{b} {b}"
