"""Versioned prompt templates (``<name>-v<N>.txt``), loaded by ``rag.answer.prompt``.

A template is never edited once released: a change is a new file with the next version, so that
the version recorded with every answer names the exact text the model was given.
"""
