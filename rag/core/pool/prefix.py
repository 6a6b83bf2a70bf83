"""Prefix keys for cache affinity, derived from a llama.cpp or OpenAI request body.

llama-server re-uses the KV cache of the longest common prefix of a slot's previous prompt. The
key of a prompt is a chain of hashes of its leading blocks of ``block`` characters (the first
block, the first two, ...); the pool sends a request to the upstream that last served the longest
of these prefixes. Prompts that share a system prompt and sources but end in different questions
thus share all but their last keys. Prompts shorter than one block get no key.
"""

from __future__ import annotations

import hashlib
from typing import Any

BLOCK_CHARS = 256
MAX_BLOCKS = 64


def prefix_chain(
    text: str, *, block: int = BLOCK_CHARS, max_blocks: int = MAX_BLOCKS
) -> tuple[str, ...]:
    """Hashes of ``text[:block]``, ``text[:2 * block]``, ... (whole blocks only), shortest first."""
    digest = hashlib.blake2b(digest_size=12)
    keys: list[str] = []
    for start in range(0, min(len(text) // block, max_blocks) * block, block):
        digest.update(text[start : start + block].encode("utf-8", "surrogatepass"))
        keys.append(digest.copy().hexdigest())
    return tuple(keys)


def prompt_text(path: str, body: Any) -> str | None:
    """The prompt of a generation request as one string, or None when there is none."""
    if not isinstance(body, dict):
        return None
    if path.endswith(("chat/completions", "/v1/messages", "responses")):
        messages = body.get("messages", body.get("input"))
        if isinstance(messages, str):  # the Responses API's plain input
            messages = [{"role": "user", "content": messages}]
        if not isinstance(messages, list):
            return None
        system = body.get("system", body.get("instructions"))  # Anthropic's, Responses'
        parts = [f"system\x1f{_content_text(system)}\x1e"] if system else []
        for message in messages:
            if isinstance(message, dict):
                parts.append(
                    f"{message.get('role', '')}\x1f{_content_text(message.get('content'))}\x1e"
                )
        return "".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt:
        prompt = prompt[0] if isinstance(prompt[0], str | list) else prompt
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):  # token ids
        return ",".join(str(token) for token in prompt)
    return None


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def request_prefix(path: str, body: Any, *, block: int = BLOCK_CHARS) -> tuple[str, ...]:
    """The prefix-key chain of a request body (empty when it has no usable prompt)."""
    text = prompt_text(path, body)
    return prefix_chain(text, block=block) if text else ()
