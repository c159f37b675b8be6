"""How a text is cut into upstream calls so that the read-along timeline can be exact, and its chapters.

Each piece is one upstream call, so its audio, and so its place on the timeline, is known exactly from the
frames it produced. Pieces are cut the way long text always was (speccyd.generation.chunking: paragraph,
then sentence, line, clause, word), only shorter: at most `timeline_chars` (finer highlighting costs more
upstream calls, not more money: the upstream bills characters). Every Markdown heading outside a fenced
code block starts a new piece, so a chapter's audio time is exact too.

Offsets are Python string indexes: Unicode code points, as the apps' `String.unicodeScalars` count them.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass

import regex

from speccyd.generation.chunking import split_spans

# ATX headings (CommonMark §4.2): up to three spaces, 1-6 '#', then a space, a tab or the end of the line.
# Fence lines (§4.5): up to three spaces, then three or more backticks or tildes.
_MARKERS = re.compile(r"^ {0,3}(?:(#{1,6})(?=[ \t]|$)(.*)$|(`{3,}|~{3,})(.*)$)", re.MULTILINE)
_CLOSING = re.compile(r"(?:^|[ \t]+)#+[ \t]*$")  # an optional closing sequence: "## Title ##"
TITLE_CHARS = 200  # a title is shown in one line of a list, and in podcast apps' headers
# An mp3's CTOC frame names at most 255 chapters (its entry count is one byte). Past that, headings are read
# as text: each chapter costs an upstream call of its own, and 25,000 one-line headings must not cost 25,000.
MAX_CHAPTERS = 255
_GRAPHEME = regex.compile(r"\X")


@dataclass(frozen=True, slots=True)
class Heading:
    level: int
    title: str
    start: int  # offset of the heading line's first character


def headings(text: str) -> list[Heading]:
    """The ATX headings of a Markdown text that are not inside a fenced code block (`# comment` in code)."""
    found: list[Heading] = []
    fence: str | None = None  # the opening fence's run of backticks or tildes, while inside a code block
    for match in _MARKERS.finditer(text):
        hashes, rest, run, info = match.groups()
        if run is not None:
            if fence is None:
                if not (run[0] == "`" and "`" in info):  # a backtick fence's info string has no backtick
                    fence = run
            elif run[0] == fence[0] and len(run) >= len(fence) and not info.strip():
                fence = None
            continue
        if fence is not None:
            continue
        title = _CLOSING.sub("", rest).strip()
        if title:
            found.append(Heading(len(hashes), shorten(title), match.start()))
    return found


def shorten(line: str, limit: int = TITLE_CHARS) -> str:
    """At most `limit` characters, cut between grapheme clusters (never inside an emoji), with an ellipsis."""
    if len(line) <= limit:
        return line
    kept = 0
    for cluster in _GRAPHEME.finditer(line):
        if cluster.end() > limit - 1:
            break
        kept = cluster.end()
    return line[:kept].rstrip() + "…"


def title_of(text: str) -> str | None:
    """The first heading's text, or the first non-blank line, trimmed: what a library row and TIT2 show."""
    found = headings(text)
    if found:
        return found[0].title
    for line in text.splitlines():
        if line.strip():
            return shorten(line.strip())
    return None


@dataclass(frozen=True, slots=True)
class Chapter:
    title: str
    text_start: int
    piece: int  # the piece its heading starts, so its audio starts where that piece's does


@dataclass(frozen=True, slots=True)
class Plan:
    pieces: list[tuple[int, int]]  # text[a:b] of each upstream call, in order
    chapters: list[Chapter]
    title: str | None

    def tiles(self, length: int) -> list[tuple[int, int]]:
        """The text each piece stands for on the timeline: from its start to the next one's, 0 to `length`.

        The whitespace between two pieces (not sent upstream) goes with the piece before it, so the tiles
        cover the whole text with no gap and no overlap.
        """
        starts = [0] + [a for a, _ in self.pieces[1:]]
        return list(zip(starts, [*starts[1:], length], strict=True))


def plan_text(text: str, piece_chars: int, *, joinable: bool = True) -> Plan:
    """The pieces and chapters of a text whose audio will be joined from pieces of at most `piece_chars`.

    A text of at most `piece_chars` with no heading after its start is sent as it is, exactly as received.
    Formats that cannot be joined (opus, flac) are one piece: only a heading at its very start has a time.
    """
    found = headings(text)[:MAX_CHAPTERS]
    title = found[0].title if found else title_of(text)
    lead = len(text) - len(text.lstrip())
    cuts = [h.start for h in found if h.start > lead]
    if not joinable or (not cuts and len(text) <= piece_chars):
        chapters = [Chapter(h.title, 0, 0) for h in found if h.start <= lead][:1]
        return Plan([(0, len(text))], chapters, title)
    bounds = [0, *cuts, len(text)]
    pieces = split_spans(text, piece_chars, list(itertools.pairwise(bounds)))
    starts = [a for a, _ in pieces]
    chapters = []
    for heading in found:
        # The piece that starts at this heading's first non-blank character (each heading starts a section).
        index = bisect.bisect_left(starts, heading.start)
        if index < len(pieces):
            chapters.append(Chapter(heading.title, 0 if index == 0 else starts[index], index))
    return Plan(pieces, chapters, title)
