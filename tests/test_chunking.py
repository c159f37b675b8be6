"""Splitting long text: limits, boundaries, and the round-trip property over generated texts."""

from __future__ import annotations

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from speccyd.generation.chunking import split_text


def assert_round_trip(text: str, chunks: list[str]) -> list[int]:
    """The chunks, in order, are the text with only whitespace left out between them; returns the cut points."""
    position = 0
    cuts = []
    for chunk in chunks:
        gap_end = text.index(chunk, position) if chunk else position
        assert text[position:gap_end].strip() == "", f"non-whitespace dropped before {chunk[:20]!r}"
        cuts.extend([position, gap_end])
        position = gap_end + len(chunk)
    assert text[position:].strip() == ""
    cuts.append(position)
    return cuts


def grapheme_boundaries(text: str) -> set[int]:
    return {0} | {m.end() for m in regex.finditer(r"\X", text)}


def check(text: str, limit: int) -> list[str]:
    chunks = split_text(text, limit)
    assert chunks, "at least one chunk"
    assert all(chunk.strip() for chunk in chunks), "no empty chunk"
    assert all(len(chunk) <= limit for chunk in chunks), "every chunk within the limit"
    cuts = assert_round_trip(text, chunks)
    longest_cluster = max((len(m.group()) for m in regex.finditer(r"\X", text)), default=0)
    if longest_cluster <= limit:
        boundaries = grapheme_boundaries(text)
        assert all(cut in boundaries for cut in cuts), "no cut inside a grapheme cluster"
    return chunks


PIECES = st.sampled_from(
    [
        "word", "Hello", "world.", "Really?", "Yes!", " ", "  ", "\n", "\n\n", "\t", ", ", "; ",
        "https://example.com/a/b.html?x=1", "3.14", "e.g.", "- item", "1. first", "```\ncode\n\nmore\n```",
        "日本語のテキスト", "。", "、", "中文句子\uff01", "👨‍👩‍👧‍👦", "🇫🇷", "é", "e\u0301", "a\u0300\u0301\u0302",
        "\u200d", "\u0301", "x" * 30, "ñandú", "…",
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(PIECES, min_size=1, max_size=80).map("".join), st.integers(min_value=1, max_value=60))
def test_chunks_fit_are_nonempty_and_rebuild_the_text(text: str, limit: int) -> None:
    """Every chunk is within the limit, none is empty, and chunks plus cut whitespace give back the text."""
    if text.strip():
        check(text, limit)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=400), st.integers(min_value=1, max_value=50))
def test_arbitrary_unicode_round_trips(text: str, limit: int) -> None:
    """The same properties hold for arbitrary Unicode, including controls and lone combining marks."""
    if text.strip():
        check(text, limit)


def test_short_text_is_sent_unchanged() -> None:
    """Text within the limit is one chunk, byte for byte, whitespace included."""
    assert split_text("  Hello there.\n", 4096) == ["  Hello there.\n"]


def test_paragraphs_are_preferred_over_sentences() -> None:
    """With room for whole paragraphs, cuts fall at the blank lines."""
    para = "One sentence here. Another one there."
    text = "\n\n".join([para] * 3)
    assert split_text(text, len(para) * 2 + 5) == [para + "\n\n" + para, para]


def test_sentences_are_preferred_over_words() -> None:
    """A paragraph longer than the limit is cut after a sentence end."""
    text = "The first sentence is here. The second sentence follows. The third one ends it."
    assert split_text(text, 60) == [
        "The first sentence is here. The second sentence follows.",
        "The third one ends it.",
    ]


def test_one_long_sentence_is_cut_between_words() -> None:
    """A sentence longer than the limit is cut at spaces, never inside a word."""
    words = [f"word{i}" for i in range(200)]
    chunks = check(" ".join(words), 50)
    assert [w for chunk in chunks for w in chunk.split()] == words


def test_text_without_spaces_is_cut_at_graphemes() -> None:
    """A run with no spaces or punctuation (a long token) is cut at character boundaries within the limit."""
    text = "a" * 250
    assert split_text(text, 100) == ["a" * 100, "a" * 100, "a" * 50]


def test_urls_are_not_cut_at_their_dots() -> None:
    """A URL's dots are not sentence ends; it stays whole when the limit allows."""
    url = "https://example.com/docs/v1.2/index.html?page=3."
    text = f"See {url} for details. " * 5
    assert all(url in chunk or url not in text for chunk in check(text, 90))


def test_code_block_stays_whole_when_it_fits() -> None:
    """A fenced code block with blank lines inside is not cut at those blank lines."""
    code = "```python\ndef f():\n    return 1\n\n\ndef g():\n    return 2\n```"
    text = f"Intro paragraph.\n\n{code}\n\nOutro paragraph."
    chunks = check(text, len(code) + 2)
    assert code in chunks


def test_lists_are_cut_between_items() -> None:
    """List items without full stops are cut at line ends."""
    items = [f"- item number {i}" for i in range(20)]
    chunks = check("\n".join(items), 60)
    assert all(line in items for chunk in chunks for line in chunk.split("\n"))


def test_cjk_without_spaces_is_cut_after_full_stops() -> None:
    """Chinese and Japanese text is cut after 。 even though it has no spaces."""
    sentence = "这是一个没有空格的中文句子。"
    chunks = check(sentence * 10, 3 * len(sentence))
    assert all(chunk.endswith("。") for chunk in chunks)


def test_cjk_without_punctuation_is_cut_within_limit() -> None:
    """CJK text with neither spaces nor punctuation is still cut, at character boundaries."""
    check("日本語" * 100, 64)


def test_emoji_sequences_and_flags_are_never_split() -> None:
    """A family emoji (7 code points), flags and combining sequences survive every limit they fit in."""
    family = "👨‍👩‍👧‍👦"
    text = (family + "🇫🇷" + "e\u0301") * 30
    for limit in range(7, 40):
        for chunk in check(text, limit):
            assert chunk.count("\u200d") % 3 == 0  # every ZWJ sequence whole


def test_hundred_thousand_characters_split_quickly() -> None:
    """A 100,000-character document splits into ~25 chunks of at most 4096 characters."""
    text = ("A sentence of moderate length, with a clause. " * 20 + "\n\n") * 106
    chunks = check(text[:100_000], 4096)
    assert 25 <= len(chunks) <= 30
