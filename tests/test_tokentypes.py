"""Token types: a hand-written table of tricky decoded tokens (docs/method.md §6 rules)."""
import pytest

from pndecomp.tokentypes import LINE_BREAKS, TOKEN_TYPES, token_type, token_types_for_ids

# (decoded token text, expected type), each worked out by hand from the rules.
TABLE = [
    # newline: any line break wins over everything else
    ("\n", "newline"),
    ("\n\n", "newline"),
    (" \n", "newline"),
    ("\r\n", "newline"),
    ("\r", "newline"),
    ("\u2028", "newline"),  # LINE SEPARATOR
    ("\x0c", "newline"),  # form feed: str.splitlines splits on it
    (".\n", "newline"),
    ("\n\ufffd", "newline"),
    # whitespace
    ("\t", "whitespace"),
    ("   ", "whitespace"),
    (" ", "whitespace"),
    ("\xa0", "whitespace"),  # NBSP
    ("\u3000", "whitespace"),  # ideographic space
    # alpha
    (" the", "alpha"),
    ("the", "alpha"),
    ("The", "alpha"),
    (" é", "alpha"),
    ("漢字", "alpha"),
    ("日本", "alpha"),
    ("ひらがな", "alpha"),
    ("Ġthe", "alpha"),  # an undecoded BPE marker is a Latin letter itself
    (" Москва", "alpha"),
    # digit
    (" 42", "digit"),
    ("2024", "digit"),
    ("0", "digit"),
    ("１２", "digit"),  # fullwidth digits are Nd
    ("²", "other"),  # superscript two is No, not a decimal digit
    ("½", "other"),
    # brackets
    (" (", "open_bracket"),
    ("((", "open_bracket"),
    ("[", "open_bracket"),
    ("{", "open_bracket"),
    ("<", "open_bracket"),
    ("}", "close_bracket"),
    ("))", "close_bracket"),
    (" ]", "close_bracket"),
    (">", "close_bracket"),
    ("()", "punct_symbol"),  # mixed open and close: every char still P/S
    ("):", "punct_symbol"),
    ("({", "open_bracket"),
    # punct_symbol
    ("->", "punct_symbol"),
    ("==", "punct_symbol"),
    ("#", "punct_symbol"),
    ("$", "punct_symbol"),
    ("€", "punct_symbol"),
    ("_", "punct_symbol"),  # Pc
    ("'", "punct_symbol"),
    ("...", "punct_symbol"),
    (" +", "punct_symbol"),
    (" «", "punct_symbol"),  # Pi: not in the bracket sets
    ("。", "punct_symbol"),
    ("😀", "punct_symbol"),  # emoji are So
    # other
    ("\ufffd", "other"),  # So, but a partial UTF-8 byte: other by docs/method.md §6
    (" \ufffd", "other"),
    ("\ufffd\ufffd", "other"),
    ("a\ufffd", "other"),
    ("a1", "other"),
    ("__init__", "other"),
    ("x2", "other"),
    ("a b", "other"),  # inner space
    ("\u200b", "other"),  # zero-width space is Cf, not white space
    ("", "other"),  # nothing to classify
    ("<|endoftext|>", "other"),
    ("e\u0301", "other"),  # decomposed é: the combining accent is Mn, not a letter
]


@pytest.mark.parametrize(("text", "expected"), TABLE, ids=[repr(t) for t, _ in TABLE])
def test_token_type_table(text, expected):
    assert token_type(text) == expected


def test_table_covers_every_type():
    assert {expected for _, expected in TABLE} == set(TOKEN_TYPES)


def test_line_breaks_are_exactly_those_of_splitlines():
    splitlines_breaks = {
        char for char in map(chr, range(0x110000)) if len(f"a{char}b".splitlines()) > 1
    }
    assert splitlines_breaks == LINE_BREAKS


class _FakeTokenizer:
    """Records decode calls; id 2 is a partial UTF-8 byte, which decodes to U+FFFD."""

    def __init__(self):
        self.vocab = {0: " the", 1: "\n", 2: "\ufffd", 3: " 42", 4: "):"}
        self.calls = []

    def decode(self, ids):
        self.calls.append(list(ids))
        return "".join(self.vocab[i] for i in ids)


def test_token_types_for_ids_decodes_each_id_alone():
    tokenizer = _FakeTokenizer()
    ids = [0, 1, 2, 3, 4, 0, 2]
    assert token_types_for_ids(ids, tokenizer) == [
        "alpha", "newline", "other", "digit", "punct_symbol", "alpha", "other"
    ]
    assert all(len(call) == 1 for call in tokenizer.calls)
    assert sorted(call[0] for call in tokenizer.calls) == [0, 1, 2, 3, 4]  # each id once


def test_token_types_for_ids_accepts_numpy_ids():
    np = pytest.importorskip("numpy")
    tokenizer = _FakeTokenizer()
    assert token_types_for_ids(np.array([3, 1], dtype=np.int64), tokenizer) == ["digit", "newline"]
    assert tokenizer.calls == [[3], [1]] and all(type(c[0]) is int for c in tokenizer.calls)
