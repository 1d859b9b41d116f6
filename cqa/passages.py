"""Passages of a document and how related each is to a question (BM25), for documents over the limit.

A passage is a few whole sentences (up to ``DEFAULT_PASSAGE_CHARS`` characters) that ends at a paragraph
break (where a post changes subject) unless it is still short (a heading, a list item). Measured on SQuAD
articles and TryoCoQA (bench/context_selection.py), that layout keeps the answer more often than passages
that run across paragraphs, stop at every paragraph end, or are longer or shorter. Everything is character
offsets into the text as given, so that the caller can show, and map back, exactly what was kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

DEFAULT_PASSAGE_CHARS = 400  # ~90 T5 tokens of English prose; see bench/context_selection.py
# A passage ends at a paragraph break once it holds this many characters: a heading or a short list item
# joins the paragraph after it instead of being a passage of three words (bench/context_selection.py).
DEFAULT_PARAGRAPH_MIN_CHARS = 100

# A paragraph break: a line break followed by another (possibly after spaces).
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
# A sentence ends with . ! or ? (closing quotes/brackets may follow) before white space, or at a line
# break (headings, list items). Abbreviations ("e.g. x") split too: harmless, passages hold several.
# Linear time on hostile text: a run of marks is matched from its first mark only (look-behind) and never
# given back (possessive), and a line break takes the white space after it, not before it (the spans are
# trimmed anyway); "\s*\n" would rescan a run of spaces from each of its positions.
_SENTENCE_END = re.compile(r"(?<![.!?])[.!?]++[\"'”’)\]]*+\s+|\n\s*")


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def paragraph_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each paragraph (text between blank lines), white space trimmed, empty ones left out."""
    spans, start = [], 0
    for brk in _PARAGRAPH_BREAK.finditer(text):
        spans.append(_strip_span(text, start, brk.start()))
        start = brk.end()
    spans.append(_strip_span(text, start, len(text)))
    return [(s, e) for s, e in spans if e > s]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text``, in order, white space trimmed: they cover all its words."""
    spans = []
    for para_start, para_end in paragraph_spans(text):
        start = para_start
        for end_mark in _SENTENCE_END.finditer(text, para_start, para_end):
            spans.append(_strip_span(text, start, end_mark.end()))
            start = end_mark.end()
        spans.append(_strip_span(text, start, para_end))
    return [(s, e) for s, e in spans if e > s]


def _split_long(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """A sentence longer than ``max_chars`` (a table, a list without full stops) cut at spaces, so that
    one endless "sentence" cannot make a passage too big to keep."""
    pieces = []
    while end - start > max_chars:
        cut = text.rfind(" ", start + 1, start + max_chars)
        cut = cut if cut > start else start + max_chars
        pieces.append(_strip_span(text, start, cut))
        start = cut
    pieces.append(_strip_span(text, start, end))
    return [(s, e) for s, e in pieces if e > s]


def passage_spans(
    text: str, max_chars: int = DEFAULT_PASSAGE_CHARS, paragraph_min_chars: int = DEFAULT_PARAGRAPH_MIN_CHARS
) -> list[tuple[int, int]]:
    """(start, end) of consecutive passages of ``text``: whole sentences, up to about ``max_chars``.

    Sentences are added to a passage while it stays within ``max_chars``; a passage also ends at a
    paragraph break once it holds ``paragraph_min_chars`` characters. The spans are trimmed and in
    document order; between two of them there is only white space.
    """
    sentences = [piece for s, e in sentence_spans(text) for piece in _split_long(text, s, e, max_chars)]
    paragraph_ends = {e for _, e in paragraph_spans(text)}
    passages: list[tuple[int, int]] = []
    start = end = None
    for s, e in sentences:
        if start is not None:
            full = e - start > max_chars
            at_paragraph_end = end in paragraph_ends and end - start >= paragraph_min_chars
            if full or at_paragraph_end:
                passages.append((start, end))
                start = None
        if start is None:
            start = s
        end = e
    if start is not None:
        passages.append((start, end))
    return passages


class PassageIndex:
    """A BM25 index (bm25s, English stop words left out) of the passages ``spans`` of ``text``: build it
    once, score many queries (the benchmark asks hundreds of questions about one document)."""

    def __init__(self, text: str, spans: Sequence[tuple[int, int]]) -> None:
        import bm25s  # here, not at the top: only documents over the limit need it (and it loads numpy)

        self._bm25s = bm25s
        self.size = len(spans)
        self.corpus = bm25s.tokenize([text[s:e] for s, e in spans], stopwords="en", show_progress=False)
        self.retriever = bm25s.BM25()
        if spans:
            self.retriever.index(self.corpus, show_progress=False)

    def scores(self, query: str) -> list[float]:
        """The BM25 score of each passage for ``query``, in passage order. Repeating words in ``query``
        weighs them more (each occurrence adds its score); words no passage has count for nothing."""
        words = self._bm25s.tokenize(query, stopwords="en", return_ids=False, show_progress=False)[0]
        known = [word for word in words if word in self.corpus.vocab]
        if not known or not self.size:
            return [0.0] * self.size
        return [float(score) for score in self.retriever.get_scores(known)]


def rank_passages(text: str, spans: Sequence[tuple[int, int]], query: str) -> list[float]:
    """The BM25 score of each passage ``spans`` of ``text`` for ``query``, in the order of ``spans``."""
    return PassageIndex(text, spans).scores(query)


def with_neighbours(scores: Sequence[float], weight: float) -> list[float]:
    """Each score plus ``weight`` times its two neighbours' scores: the answer is often in the sentences
    right after (or before) the ones that share words with the question ("Why?" after an answer)."""
    return [
        score
        + weight * (scores[i - 1] if i > 0 else 0.0)
        + weight * (scores[i + 1] if i + 1 < len(scores) else 0.0)
        for i, score in enumerate(scores)
    ]


def choose_passages(sizes: Sequence[int], scores: Sequence[float], budget: int) -> list[int]:
    """Indices, in document order, of the best-scored passages whose ``sizes`` add up to at most ``budget``.

    Best first; a passage that no longer fits is skipped for smaller ones after it, so the budget fills up.
    Equal scores (no word in common, mostly) go in document order: the rest of the budget goes to the
    beginning of the document, like the head cut.
    """
    chosen, used = [], 0
    for i in sorted(range(len(sizes)), key=lambda i: (-scores[i], i)):
        if used + sizes[i] <= budget:
            chosen.append(i)
            used += sizes[i]
    return sorted(chosen)
