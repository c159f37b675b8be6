"""Splitting long text into pieces the upstream accepts, at the most natural boundary that fits.

Characters are counted as Python counts them (code points), which is how the upstream counts its 4096.
Boundaries are tried in order: paragraph, sentence, line, clause, word, grapheme cluster. A cut is only
ever made where a grapheme cluster ends, so an emoji ZWJ sequence, a flag or a letter with combining
marks is never torn apart; the one exception is a single cluster longer than the whole limit.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import regex

# A blank line (possibly holding spaces) ends a paragraph; the cut falls after the whitespace run.
_PARAGRAPH = regex.compile(r"\n[^\S\n]*\n\s*")
# Sentence ends: Latin punctuation needs whitespace after it (so "example.com/a.html" and "3.14" stay whole);
# CJK full stops end a sentence even with no space, since CJK text has none.
_SENTENCE = regex.compile(
    r"[.!?\u2026]+[\"'\u201d\u2019)\]\u00bb]*\s+|[\u3002\uff01\uff1f\uff61]+[\u300d\u300f\u201d\u2019\uff09]*\s*"
)
_LINE = regex.compile(r"\n\s*")
_CLAUSE = regex.compile(r"[,;:\u2014]\s+|[\u3001\uff0c\uff1b\uff1a]\s*")
_WORD = regex.compile(r"\s+")
_GRAPHEME = regex.compile(r"\X")
# Fenced code blocks stay whole at the paragraph level: their blank lines do not end a paragraph.
_FENCE = regex.compile(r"^[ \t]*(```|~~~)[^\n]*\n.*?^[ \t]*\1[^\n]*$", regex.MULTILINE | regex.DOTALL)

_LEVELS = (_PARAGRAPH, _SENTENCE, _LINE, _CLAUSE, _WORD)


def split_text(text: str, limit: int) -> list[str]:
    """Chunks of at most `limit` characters, in order, none empty, each stripped of edge whitespace.

    Text that fits is returned unchanged as the only chunk, so short requests reach the upstream exactly as
    sent. Otherwise the chunks, with the whitespace at each cut put back, are the original text.
    """
    if len(text) <= limit:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return [text]
    return [text[a:b] for a, b in split_spans(text, limit)]


def split_spans(text: str, limit: int, sections: Sequence[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Where the chunks lie in `text`, as split_text cuts them, edge whitespace excluded.

    With `sections`, each (start, end) range is split on its own, so no chunk crosses a section's edge (the
    read-along timeline starts a chunk at every heading); the grapheme and fence analysis is done once.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    splitter = _Splitter(text, limit)
    spans: list[tuple[int, int]] = []
    for start, end in sections if sections is not None else [(0, len(text))]:
        spans += [splitter.trim(a, b) for a, b in splitter.spans(start, end)]
    return spans


class _Splitter:
    def __init__(self, text: str, limit: int) -> None:
        self.text = text
        self.limit = limit
        self.graphemes = [m.end() for m in _GRAPHEME.finditer(text)]  # every cluster's end, ascending
        self.boundary = set(self.graphemes)
        fences = [(m.start(), m.end()) for m in _FENCE.finditer(text)]  # in order, never overlapping
        self.fence_starts = [a for a, _ in fences]
        self.fence_ends = [b for _, b in fences]

    def spans(self, start: int, end: int) -> list[tuple[int, int]]:
        return [(a, b) for a, b in self._pack(start, end, 0) if not self.text[a:b].isspace()]

    def _cuts(self, level: int, start: int, end: int) -> list[int]:
        """Cut positions strictly inside (start, end) for this level, all on grapheme boundaries."""
        if level == len(_LEVELS):
            lo = bisect.bisect_right(self.graphemes, start)
            hi = bisect.bisect_left(self.graphemes, end)
            return self.graphemes[lo:hi]
        keep: Callable[[int], bool] = self._outside_fences if level == 0 else (lambda _: True)
        return [
            m.end()
            for m in _LEVELS[level].finditer(self.text, start, end)
            if start < m.end() < end and m.end() in self.boundary and keep(m.end())
        ]

    def _outside_fences(self, position: int) -> bool:
        # By bisection: a scan of every fence for every cut took 13 s of CPU, holding the GIL, for 100,000
        # characters of "```" lines (10,000 fences) — one request could stall the whole server.
        i = bisect.bisect_left(self.fence_starts, position) - 1  # the last fence starting before position
        return i < 0 or position >= self.fence_ends[i]

    def _edges(self, a: int, b: int) -> tuple[int, int]:
        """Whitespace at the start and at the end of text[a:b]; the whole length if it is all whitespace.

        Only whole clusters count: a space followed by a combining mark or a ZWJ is one cluster with it.
        """
        piece = self.text[a:b]
        lead = len(piece) - len(piece.lstrip())
        while lead and a + lead not in self.boundary:
            lead -= 1
        trail = len(piece) - len(piece.rstrip())
        while trail and b - trail not in self.boundary:
            trail -= 1
        return lead, trail

    def trim(self, a: int, b: int) -> tuple[int, int]:
        lead, trail = self._edges(a, b)
        return a + lead, b - trail

    def _pack(self, start: int, end: int, level: int) -> list[tuple[int, int]]:
        """Greedily join this level's pieces into spans that fit; split a piece that does not at the next level."""
        if level > len(_LEVELS):
            # One grapheme cluster longer than the limit (hundreds of combining marks): the only unavoidable cut.
            return [(a, min(a + self.limit, end)) for a in range(start, end, self.limit)]
        cuts = self._cuts(level, start, end)
        out: list[tuple[int, int]] = []
        current: tuple[int, int] | None = None  # the span being filled, never all whitespace
        current_lead = 0
        for a, b in zip([start, *cuts], [*cuts, end], strict=True):
            lead, trail = self._edges(a, b)
            if lead == b - a:  # whitespace only: free to add, and dropped if it ends a chunk
                if current is not None:
                    current = (current[0], b)
                continue
            if (b - a) - lead - trail > self.limit:
                if current is not None:
                    out.append(current)
                    current = None
                out.extend(self._pack(a, b, level + 1))
                continue
            if current is not None and (b - current[0]) - current_lead - trail <= self.limit:
                current = (current[0], b)
            else:
                if current is not None:
                    out.append(current)
                current, current_lead = (a, b), lead
        if current is not None:
            out.append(current)
        return out
