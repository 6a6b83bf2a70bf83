"""The answer schema, its grammar, and the validation of generated objects."""

from __future__ import annotations

import pytest

from rag.answer.schema import (
    InvalidAnswer,
    answer_char_limit,
    answer_grammar,
    answer_schema,
    validate_answer,
)


def test_schema_limits_citations_to_the_given_sources() -> None:
    schema = answer_schema([1, 2, 3], 200)
    citations = schema["properties"]["citations"]
    assert citations["items"]["enum"] == [1, 2, 3]
    assert citations["minItems"] == 1
    assert schema["properties"]["answer"]["maxLength"] == 200
    assert schema["additionalProperties"] is False


def test_grammar_names_exactly_the_given_sources() -> None:
    grammar = answer_grammar([2, 1], 50)
    assert 'cite ::= "1" | "2"\n' in grammar
    assert "char{1,50}" in grammar
    assert "{0,1}" in grammar  # at most two citations
    single = answer_grammar([1], 50)
    assert 'cite ::= "1"\n' in single
    assert "{0," not in single.split("\n")[0]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"answer": "x", "citations": [7]}', "not one of the sources"),
        ('{"answer": "x", "citations": []}', "citations is empty"),
        ('{"answer": "   ", "citations": [1]}', "answer is empty"),
        ('{"answer": "x", "citations": [1]', "not JSON"),
        ('{"answer": "x"}', "missing keys"),
        ('{"answer": "x", "citations": [1], "extra": 1}', "unexpected keys"),
        ('{"answer": "' + "y" * 201 + '", "citations": [1]}', "longer than"),
        ('{"answer": "x", "citations": [true]}', "not one of the sources"),
        ('["x", [1]]', "not a JSON object"),
    ],
)
def test_invalid_objects_are_rejected(text: str, problem: str) -> None:
    with pytest.raises(InvalidAnswer, match=problem):
        validate_answer(text, answer_schema([1, 2], 200))


def test_valid_object_with_whitespace_and_repeats() -> None:
    parsed = validate_answer(
        '{\n\t"answer": "Yes.",\n "citations": [2, 2, 1]\n}', answer_schema([1, 2], 200)
    )
    assert parsed.answer == "Yes."
    assert parsed.citations == [2, 1]


def test_char_limit_leaves_room_for_the_object() -> None:
    assert answer_char_limit(96, 600, 3) == 3 * (96 - 12 - 6)
    assert answer_char_limit(1000, 600, 3) == 600
    assert answer_char_limit(10, 600, 5) == 1
