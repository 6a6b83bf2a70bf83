"""Incremental extraction of one string member of a JSON object while the object streams in.

The model emits the answer object token by token (``{"answer": "The sl``, ``ots are\\n``, ...);
``FieldExtractor.feed`` takes each chunk and returns the newly decoded characters of the chosen
member (``answer``), so the text can be streamed to the client before the object is complete.
Escapes split across chunks (``\\``, ``\\u00``, a surrogate pair in two ``\\u`` escapes) are held
back until complete. Only the top-level object is read; the complete text is validated separately.
"""

from __future__ import annotations

import enum

_SIMPLE_ESCAPES = {
    '"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
}  # fmt: skip
_WHITESPACE = " \t\r\n"


class _State(enum.Enum):
    BEFORE_OBJECT = enum.auto()
    BEFORE_KEY = enum.auto()  # after "{" or ","
    KEY = enum.auto()
    BEFORE_COLON = enum.auto()
    BEFORE_VALUE = enum.auto()
    STRING_VALUE = enum.auto()
    OTHER_VALUE = enum.auto()  # number, literal, array or nested object: skipped
    AFTER_VALUE = enum.auto()
    DONE = enum.auto()


class _StringDecoder:
    """Decodes the inside of a JSON string one character at a time, escapes included."""

    def __init__(self) -> None:
        self.escape: str | None = None  # text of an escape in progress, after the backslash
        self.high_surrogate: int | None = None

    def feed(self, char: str) -> tuple[str, bool]:
        """Returns (decoded text, whether the closing quote was reached)."""
        if self.escape is not None:
            return self._escape_char(char), False
        if char == "\\":
            self.escape = ""
            return "", False
        if char == '"':
            return self._flush_surrogate(), True
        return self._flush_surrogate() + char, False

    def _escape_char(self, char: str) -> str:
        assert self.escape is not None
        if self.escape == "":
            if char == "u":
                self.escape = "u"
                return ""
            self.escape = None
            return self._flush_surrogate() + _SIMPLE_ESCAPES.get(char, char)
        self.escape += char
        if len(self.escape) < 5:  # "u" + 4 hex digits
            return ""
        try:
            code = int(self.escape[1:], 16)
        except ValueError:
            code = 0xFFFD
        self.escape = None
        if 0xD800 <= code < 0xDC00:
            pending = self._flush_surrogate()
            self.high_surrogate = code
            return pending
        if 0xDC00 <= code < 0xE000 and self.high_surrogate is not None:
            high, self.high_surrogate = self.high_surrogate, None
            return chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00))
        return self._flush_surrogate() + (chr(code) if not 0xD800 <= code < 0xE000 else "\ufffd")

    def _flush_surrogate(self) -> str:
        if self.high_surrogate is None:
            return ""
        self.high_surrogate = None
        return "\ufffd"  # a lone high surrogate


class FieldExtractor:
    """Streams the decoded value of the top-level string member ``field``."""

    def __init__(self, field: str = "answer") -> None:
        self.field = field
        self._state = _State.BEFORE_OBJECT
        self._key: list[str] = []
        self._decoder = _StringDecoder()
        self._capturing = False
        self._depth = 0  # nesting inside a skipped value
        self._in_string = False  # inside a string of a skipped value
        self._skip_escape = False
        self.text = ""  # everything of the member decoded so far

    def feed(self, chunk: str) -> str:
        """Consume ``chunk``; return the member's newly decoded characters (maybe empty)."""
        out: list[str] = []
        for char in chunk:
            self._step(char, out)
        new = "".join(out)
        self.text += new
        return new

    def _step(self, char: str, out: list[str]) -> None:
        state = self._state
        if state is _State.BEFORE_OBJECT:
            if char == "{":
                self._state = _State.BEFORE_KEY
        elif state is _State.BEFORE_KEY:
            if char == '"':
                self._key.clear()
                self._decoder = _StringDecoder()
                self._state = _State.KEY
            elif char == "}":
                self._state = _State.DONE
        elif state is _State.KEY:
            text, closed = self._decoder.feed(char)
            self._key.append(text)
            if closed:
                self._state = _State.BEFORE_COLON
        elif state is _State.BEFORE_COLON:
            if char == ":":
                self._state = _State.BEFORE_VALUE
        elif state is _State.BEFORE_VALUE:
            self._start_value(char)
        elif state is _State.STRING_VALUE:
            text, closed = self._decoder.feed(char)
            if self._capturing:
                out.append(text)
            if closed:
                self._capturing = False
                self._state = _State.AFTER_VALUE
        elif state is _State.OTHER_VALUE:
            self._skip(char)
        elif state is _State.AFTER_VALUE:
            if char == ",":
                self._state = _State.BEFORE_KEY
            elif char == "}":
                self._state = _State.DONE

    def _start_value(self, char: str) -> None:
        if char in _WHITESPACE:
            return
        if char == '"':
            self._decoder = _StringDecoder()
            self._capturing = "".join(self._key) == self.field
            self._state = _State.STRING_VALUE
            return
        self._state = _State.OTHER_VALUE
        self._depth = 0
        self._in_string = False
        self._skip(char)

    def _skip(self, char: str) -> None:
        """Skip a non-string value; it ends at depth 0 on ``,`` or ``}`` (or its own close)."""
        if self._in_string:
            if self._skip_escape:
                self._skip_escape = False
            elif char == "\\":
                self._skip_escape = True
            elif char == '"':
                self._in_string = False
            return
        if char == '"':
            self._in_string = True
        elif char in "[{":
            self._depth += 1
        elif char in "]}":
            if self._depth == 0:  # the end of the enclosing object
                self._state = _State.DONE
                return
            self._depth -= 1
            if self._depth == 0:
                self._state = _State.AFTER_VALUE
        elif char == "," and self._depth == 0:
            self._state = _State.BEFORE_KEY
