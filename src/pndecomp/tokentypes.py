"""The eight token types of the next_token_type_8 probe task (docs/method.md §6).

A token is classified by the text of that token decoded on its own. Rules, first match wins:

1. ``newline``       the text contains a line break: exactly the characters ``str.splitlines``
                     splits on (:data:`LINE_BREAKS`: \\n \\r \\v \\f \\x1c \\x1d \\x1e \\x85
                     \\u2028 \\u2029), so a Python built-in defines it, nothing hand-picked.
2. ``whitespace``    otherwise the text is non-empty and all ``str.isspace`` (incl. \\t, NBSP,
                     U+3000 ideographic space).
3. With u = the text with surrounding white space removed (``str.strip()``):
   ``alpha``         ``u.isalpha()``: every char is a Unicode letter (L*), so "漢字", "é" and
                     "Ġ" count; combining marks (M*) are not letters, so decomposed accents and
                     many Indic words fall to ``other``.
   ``digit``         ``u.isdecimal()``: every char is a decimal digit (category Nd, any script,
                     e.g. "１２"). Superscripts, circled numbers and fractions ("²", "①", "½")
                     are not decimal digits and end up ``other`` (category No).
   ``open_bracket``  every char in "([{<"   (so "((" and "<" too);
   ``close_bracket`` every char in ")]}>";
   ``punct_symbol``  every char in a Unicode category P* or S* (e.g. "):", "->", "€", "_"),
                     except U+FFFD;
   ``other``         anything else: the empty string, mixed classes ("a1", "__init__"), inner
                     spaces ("a b"), format characters (U+200B), and any text with U+FFFD, the
                     replacement char a byte-level tokenizer emits for a partial UTF-8 sequence
                     (U+FFFD is category So, so it is excluded from ``punct_symbol`` by hand).
"""
from __future__ import annotations

import unicodedata
from collections.abc import Iterable

TOKEN_TYPES = (
    "newline",
    "whitespace",
    "alpha",
    "digit",
    "open_bracket",
    "close_bracket",
    "punct_symbol",
    "other",
)

LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")  # = str.splitlines' set
OPEN_BRACKETS = frozenset("([{<")
CLOSE_BRACKETS = frozenset(")]}>")
REPLACEMENT_CHAR = "\ufffd"


def _is_punct_or_symbol(char: str) -> bool:
    return unicodedata.category(char)[0] in "PS"


def token_type(text: str) -> str:
    """The type (one of :data:`TOKEN_TYPES`) of one token's decoded text."""
    if any(char in LINE_BREAKS for char in text):
        return "newline"
    if text.isspace():  # False for "", which falls through to "other"
        return "whitespace"
    u = text.strip()
    if not u or REPLACEMENT_CHAR in u:
        return "other"
    if u.isalpha():
        return "alpha"
    if u.isdecimal():
        return "digit"
    if set(u) <= OPEN_BRACKETS:
        return "open_bracket"
    if set(u) <= CLOSE_BRACKETS:
        return "close_bracket"
    if all(map(_is_punct_or_symbol, u)):
        return "punct_symbol"
    return "other"


def token_types_for_ids(ids: Iterable[int], tokenizer) -> list[str]:
    """Types of token ids, each decoded alone with ``tokenizer.decode([id])``.

    Decoding alone matters: a multi-byte character split across tokens decodes to U+FFFD
    in each piece, which is what the token itself carries.
    """
    cache: dict[int, str] = {}  # ids repeat a lot; decode each once
    types = []
    for token_id in ids:
        token_id = int(token_id)
        if token_id not in cache:
            cache[token_id] = token_type(tokenizer.decode([token_id]))
        types.append(cache[token_id])
    return types
