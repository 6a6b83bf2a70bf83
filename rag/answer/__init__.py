"""Question answering: retrieval, an augmented prompt within the model's context, and a
grammar-constrained answer object, streamed or not.

prompt.py     versioned templates, numbered sources, the token budget (/props, /tokenize)
schema.py     the answer object's JSON schema, its GBNF grammar, validation
generate.py   the /completion call on the generation pool, streamed or not
extract.py    the answer text out of the partial JSON while it streams
citations.py  the check of each citation against the cited source
service.py    AnswerService: the orchestration, as one object or as events
"""

from rag.answer.service import AnswerService, Prepared, Question

__all__ = ["AnswerService", "Prepared", "Question"]
