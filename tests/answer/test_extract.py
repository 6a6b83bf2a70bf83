"""The incremental extraction of the answer text from the streamed JSON object."""

from __future__ import annotations

import json

import pytest

from rag.answer.extract import FieldExtractor

OBJECTS = [
    '{"answer": "Sea otters hold hands.", "citations": [1]}',
    '{\n  "answer": "tab\\there, quote \\" and backslash \\\\ and slash \\/",'
    '\n"citations": [1, 2]}',
    '{"citations": [2, 1], "answer": "citations first: \\u00e9t\\u00e9"}',
    '{"answer": "emoji \\ud83e\\udda6 in a surrogate pair", "citations": [3]}',
    '{"other": {"answer": "nested, not this", "x": [1, {"y": "]}"}]}, "answer": "this one"}',
    '{"answer": "ünïcödé passed through — raw", "citations": [1]}',
]


def chunked(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("text", OBJECTS)
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 1000])
def test_extracted_text_equals_the_decoded_member(text: str, size: int) -> None:
    extractor = FieldExtractor("answer")
    pieces = [extractor.feed(chunk) for chunk in chunked(text, size)]
    assert "".join(pieces) == json.loads(text)["answer"]
    assert extractor.text == json.loads(text)["answer"]


def test_escape_split_across_chunks_is_held_back() -> None:
    extractor = FieldExtractor("answer")
    assert extractor.feed('{"answer": "a\\') == "a"
    assert extractor.feed("u00") == ""
    assert extractor.feed("e9b") == "éb"
    assert extractor.feed("\\ud83e") == ""
    assert extractor.feed('\\udda6"}') == "\U0001f9a6"


def test_text_streams_before_the_object_is_complete() -> None:
    extractor = FieldExtractor("answer")
    assert extractor.feed('{"answer": "The lamp') == "The lamp"
    assert extractor.feed(" is visible") == " is visible"


def test_malformed_text_yields_nothing_unexpected() -> None:
    extractor = FieldExtractor("answer")
    assert extractor.feed('not json at all "answer": "x"') == ""
