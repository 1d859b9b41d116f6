"""Where in the document an answer comes from: its character span, and the sentence that holds it.

The model writes its answer; most answers are (nearly) a span of the document. ``locate_answer`` finds
that span, in three steps:

1. **Normalize** both texts as SQuAD scoring does (case, punctuation, the articles a/an/the, white
   space), plus accents, at the level of words: the document becomes a list of word keys, each remembering
   the characters it came from, so any run of keys maps back to exact offsets in the original text.
2. **Exact**: every occurrence of the answer's keys in the document's keys. When there are several, the
   occurrence whose neighbourhood shares the most (rare) words with the question wins: a proximity-weighted,
   idf-weighted overlap, measured against BM25 over the same windows in ``bench/evidence.py``.
   An occurrence inside ``prefer`` (the passages the model actually saw) beats any outside them.
3. **Fuzzy**, when there is no exact occurrence: the small rewordings a generative model makes (a word
   dropped or added) are aligned with rapidfuzz over a few candidate windows (those that hold the answer's
   rarer words); the best alignment is snapped to whole words and kept only above a similarity threshold
   chosen on SQuAD 2.0 dev so that answers from another article stay unmatched (``bench/evidence.py``).

Answers that cannot be evidence return ``None``: the no-answer reply (``cqa.format.NO_ANSWER``), empty
answers, answers made only of function words ("of the", "it": they match everywhere and show nothing),
and text not in the document. Answers of one word, or of fewer than ``MIN_FUZZY_CHARACTERS`` normalized
characters, are matched exactly only: a fuzzy "France" would find "Frances" and "franc".

``find_evidence`` adds the quote shown under the answer: the sentence holding the span (or the sentences,
when the answer crosses a boundary), cut at word boundaries to at most ``MAX_QUOTE_CHARACTERS`` around the
answer. Each document is indexed once (``functools.lru_cache`` keyed by the text), so a call costs
milliseconds even on a 14k-token document.
"""

from __future__ import annotations

import bisect
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from rapidfuzz import fuzz
from rapidfuzz.distance import Indel

from cqa.format import NO_ANSWER

__all__ = [
    "MAX_QUOTE_CHARACTERS",
    "NO_ANSWER",
    "DocumentIndex",
    "Evidence",
    "find_evidence",
    "index_document",
    "is_no_answer",
    "locate_answer",
    "normalize_words",
    "quote_span",
]

MAX_QUOTE_CHARACTERS = 400
# Fuzzy matches need at least two words and this many normalized characters (see the module doc).
MIN_FUZZY_CHARACTERS = 6
# The least similarity (0-100, _FuzzyAnswer.similarity) of a fuzzy match. Chosen on SQuAD 2.0 dev with
# bench/evidence.py: of answers with a word dropped or added, ~97% are found; of answers from another
# article, >99% stay unmatched; 85 would lose ~2 points of the first for ~0.3 of the second.
FUZZY_THRESHOLD = 80.0
# Question words count within this many words of an occurrence, weighted by exp(-distance / decay).
CONTEXT_WORDS = 40
CONTEXT_DECAY = 12.0
# The fuzzy search aligns at most this many windows (those holding most of the answer's words): it bounds
# the time on text repeated many times. On SQuAD dev it binds in under 0.5% of fuzzy searches and moves
# no measure of bench/evidence.py by more than 0.05 point.
MAX_FUZZY_WINDOWS = 40

# \w without the underscore, plus combining accents (a decomposed "é" is one word, not two).
_WORD = re.compile(r"(?:[^\W_]|[\u0300-\u036f])+")
_ARTICLES = frozenset({"a", "an", "the"})
# Function words: an answer made only of these is no evidence, and they carry no weight in a question.
# Numbers, "yes" and "no" are not here: they are real answers.
_STOP_WORDS = _ARTICLES | frozenset(
    """
    about above after again against all am and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her
    here hers herself him himself his how if in into is it its itself just me more most my myself nor not
    now of off on once only or other our ours ourselves out over own same she should so some such than that
    their theirs them themselves then there these they this those through to too under until up very was we
    were what when where which while who whom why will with would you your yours yourself yourselves s t d ll
    m re ve
    """.split()
)

_NUMBER_WORDS = frozenset(
    """
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
    seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand
    million billion trillion first second third fourth fifth sixth seventh eighth ninth tenth
    """.split()
)


def _key(word: str) -> str:
    """A word as matching sees it: case-folded, without accents ("Café" and "cafe" are one key)."""
    folded = word.casefold()
    if folded.isascii():
        return folded
    decomposed = unicodedata.normalize("NFKD", folded)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def normalize_words(text: str) -> list[str]:
    """The word keys of ``text`` after SQuAD-style normalization (no punctuation, no articles)."""
    keys = (_key(match.group()) for match in _WORD.finditer(text))
    return [key for key in keys if key and key not in _ARTICLES]


_NO_ANSWER_KEYS = normalize_words(NO_ANSWER)


def is_no_answer(answer: str) -> bool:
    """True for the model's no-answer reply, whatever its case, apostrophe or final period."""
    return normalize_words(answer.replace("’", "'")) == _NO_ANSWER_KEYS


# --- the per-document index -------------------------------------------------------------------------------


class DocumentIndex:
    """A document's word keys with their character spans, and the look-up tables matching needs.

    Built once per document (``index_document`` caches the last few); everything per answer is then a
    string search over ``joined`` plus a few array look-ups.
    """

    def __init__(self, document: str):
        self.document = document
        keys: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        for match in _WORD.finditer(document):
            key = _key(match.group())
            if not key or key in _ARTICLES:  # empty: a stray accent with no letter
                continue
            keys.append(key)
            starts.append(match.start())
            ends.append(match.end())
        self.keys = keys
        self.starts = starts  # character offset in the document where word i begins
        self.ends = ends  # ... and where it ends
        # " k0 k1 k2 ... ": a phrase of whole words is found with str.find(" w1 w2 "); offsets[i] is where
        # word i begins in it, so a position in ``joined`` maps back to a word by bisection.
        self.joined = " " + " ".join(keys) + " "
        self.offsets = [0] * len(keys)
        position = 1
        for i, key in enumerate(keys):
            self.offsets[i] = position
            position += len(key) + 1

    @cached_property
    def positions(self) -> dict[str, np.ndarray]:
        """Word key -> sorted word indices where it occurs."""
        table: dict[str, list[int]] = {}
        for i, key in enumerate(self.keys):
            table.setdefault(key, []).append(i)
        return {key: np.asarray(indices) for key, indices in table.items()}

    @cached_property
    def idf(self) -> dict[str, float]:
        """Inverse document frequency of each key, over blocks of 50 words (a document is one text, so its
        'documents' for idf are its stretches: a word in every stretch tells nothing about where to look)."""
        block = 50
        blocks_with: dict[str, int] = {}  # key -> number of blocks it occurs in
        last_block: dict[str, int] = {}
        for i, key in enumerate(self.keys):
            if last_block.get(key) != i // block:
                last_block[key] = i // block
                blocks_with[key] = blocks_with.get(key, 0) + 1
        n_blocks = max(1, math.ceil(len(self.keys) / block))
        return {key: math.log(1.0 + n_blocks / count) for key, count in blocks_with.items()}

    @cached_property
    def sentence_starts(self) -> list[int]:
        """Character offsets where sentences (and lines) begin, for the quotes."""
        return _sentence_starts(self.document)

    def word_at(self, joined_position: int) -> int:
        """The first word that begins at or after ``joined_position`` of ``joined``."""
        return bisect.bisect_left(self.offsets, joined_position)

    def char_span(self, first_word: int, end_word: int) -> tuple[int, int]:
        """Character span in the document of words ``first_word`` .. ``end_word - 1``."""
        return self.starts[first_word], self.ends[end_word - 1]

    def phrase(self, first_word: int, end_word: int) -> str:
        return " ".join(self.keys[first_word:end_word])


@lru_cache(maxsize=8)
def index_document(document: str) -> DocumentIndex:
    """The index of ``document``, built once: the app asks about the same document turn after turn."""
    return DocumentIndex(document)


# --- locating the answer ----------------------------------------------------------------------------------


def locate_answer(
    document: str,
    answer: str,
    question: str | None = None,
    *,
    prefer: Sequence[tuple[int, int]] = (),
) -> tuple[int, int] | None:
    """Character offsets ``(start, end)`` of ``answer`` in ``document``, or ``None`` when it is not there.

    ``question`` picks among several occurrences (the one in the passage most related to it wins);
    ``prefer`` holds character ranges of the document the model actually saw: an occurrence inside them wins
    over any outside them, since the model can only have copied from what it saw.
    """
    answer_keys = normalize_words(answer)
    if not answer_keys or is_no_answer(answer) or all(key in _STOP_WORDS for key in answer_keys):
        return None
    index = index_document(document)
    candidates = _exact_occurrences(index, answer_keys)
    if not candidates:
        candidates = _fuzzy_occurrences(index, answer_keys)
    if not candidates:
        return None
    first, end = _best_occurrence(index, candidates, answer_keys, question, prefer)
    start, end = index.char_span(first, end)
    return _with_leading_article(document, answer, start), end


_LEADING_ARTICLE = re.compile(r"\s*(a|an|the)\s", re.IGNORECASE)


def _with_leading_article(document: str, answer: str, start: int) -> int:
    """``start`` moved back over the article the answer begins with, when the document has it there:
    normalization ignores articles, but "The Normans" should be marked whole."""
    article = _LEADING_ARTICLE.match(answer)
    if article is None:
        return start
    before = re.search(r"\b(a|an|the)\s+$", document[max(0, start - 8) : start], re.IGNORECASE)
    if before is None or before.group(1).lower() != article.group(1).lower():
        return start
    return start - (len(before.group()))


def _exact_occurrences(index: DocumentIndex, answer_keys: list[str]) -> list[tuple[int, int]]:
    """Word spans ``(first, end)`` where the answer's keys occur as whole words, in document order."""
    needle = " " + " ".join(answer_keys) + " "
    found = []
    position = index.joined.find(needle)
    while position >= 0:
        first = index.word_at(position + 1)
        found.append((first, first + len(answer_keys)))
        position = index.joined.find(needle, position + 1)
    return found


def _fuzzy_occurrences(index: DocumentIndex, answer_keys: list[str]) -> list[tuple[int, int]]:
    """The best-matching word spans when the answer is not in the document word for word: those scoring
    ``FUZZY_THRESHOLD`` or more, within a point of the best (the question then picks among them)."""
    scored = {
        span: score for span, score in fuzzy_scores(index, answer_keys).items() if score >= FUZZY_THRESHOLD
    }
    if not scored:
        return []
    best = max(scored.values())
    # Overlapping spans are one place: keep its best-scoring, shortest span.
    places: list[tuple[int, int]] = []
    for span in sorted(scored, key=lambda span: (-scored[span], span[1] - span[0], span[0])):
        if scored[span] >= best - 1.0 and all(span[1] <= kept[0] or kept[1] <= span[0] for kept in places):
            places.append(span)
    return sorted(places)


@dataclass(frozen=True)
class _FuzzyAnswer:
    """An answer's keys and what the fuzzy search compares against every span, computed once."""

    keys: list[str]
    content: list[str]  # the keys that are not function words
    numbers: frozenset[str]  # the keys that are numbers: a match must hold them all
    key_set: frozenset[str]
    content_set: frozenset[str]

    @classmethod
    def of(cls, keys: list[str]) -> _FuzzyAnswer:
        content = [key for key in keys if key not in _STOP_WORDS]
        numbers = frozenset(key for key in keys if key in _NUMBER_WORDS or any(ch.isdigit() for ch in key))
        return cls(keys, content, numbers, frozenset(keys), frozenset(content))

    def needles(self) -> list[str]:
        """What to align: the whole answer, and its content words alone when that is different."""
        needles = [" ".join(self.keys)]
        if len(self.content) >= 2 and len(self.content) < len(self.keys):
            needles.append(" ".join(self.content))
        return needles

    def plausible(self, span_keys: list[str]) -> bool:
        """Rules that similar-looking text from elsewhere breaks (measured on SQuAD answers searched in
        another article): the span does not begin or end with a function word the answer lacks ("with 11
        million", "Daniel and"); it holds the answer's numbers ("12 million" is not "11 million", "1640"
        not "1840"); and it holds more than half of the answer's distinct content words, exactly."""
        for edge in (span_keys[0], span_keys[-1]):
            if edge in _STOP_WORDS and edge not in self.key_set:
                return False
        span_set = set(span_keys)
        return self.numbers <= span_set and 2 * len(self.content_set & span_set) > len(self.content_set)

    def similarity(self, span_keys: list[str]) -> float:
        """How alike the answer and a span are, 0-100: the best of fuzz.ratio of the two phrases
        (characters), of their words as units (one word dropped from "Committee of Independent Experts"
        changes many characters but only one word), and of both for their content words alone (a function
        word added or dropped, "the end of the war" / "end of war", is no real difference). Word-level
        scores need two words on each side: one word against one is the character score's business."""
        score = fuzz.ratio(" ".join(self.keys), " ".join(span_keys))
        if len(self.keys) >= 2 and len(span_keys) >= 2:
            score = max(score, 100 * Indel.normalized_similarity(self.keys, span_keys))
        span_content = [key for key in span_keys if key not in _STOP_WORDS]
        if len(self.content) >= 2 and len(span_content) >= 2:
            score = max(
                score,
                fuzz.ratio(" ".join(self.content), " ".join(span_content)),
                100 * Indel.normalized_similarity(self.content, span_content),
            )
        return score


def fuzzy_scores(index: DocumentIndex, answer_keys: list[str]) -> dict[tuple[int, int], float]:
    """Candidate word spans ``(first, end)`` with their similarity to the answer (0-100).

    Windows around the answer's rarer words are aligned with rapidfuzz's partial_ratio_alignment (with the
    whole answer, and with its content words alone); each alignment is widened to whole words and tried
    with its edges moved by up to two words, since a character alignment can stop inside a word or skip a
    short edge word. Answers of one word, or shorter than ``MIN_FUZZY_CHARACTERS``, get none.
    """
    answer = _FuzzyAnswer.of(answer_keys)
    needles = answer.needles()
    if len(answer_keys) < 2 or len(needles[0]) < MIN_FUZZY_CHARACTERS:
        return {}
    scored: dict[tuple[int, int], float] = {}
    for low, high in _candidate_windows(index, answer.content, reach=len(answer_keys) + 2):
        window = index.phrase(low, high)
        base = index.offsets[low]
        for needle in needles:
            alignment = fuzz.partial_ratio_alignment(needle, window)
            first = index.word_at(base + alignment.dest_start + 1) - 1  # the word holding the first character
            end = index.word_at(base + alignment.dest_end)  # one past the word holding the last character
            for span in _snap_variants(first, end, low, high):
                if span in scored:
                    continue
                span_keys = index.keys[span[0] : span[1]]
                if answer.plausible(span_keys):
                    scored[span] = answer.similarity(span_keys)
    return scored


def _snap_variants(first: int, end: int, low: int, high: int) -> list[tuple[int, int]]:
    """The span and its variants with either edge moved by up to two words, inside ``low .. high``."""
    spans = []
    for a in range(first - 2, first + 3):
        for b in range(end - 2, end + 3):
            if low <= a < b <= high:
                spans.append((a, b))
    return spans


def _candidate_windows(index: DocumentIndex, content: list[str], reach: int) -> list[tuple[int, int]]:
    """Word ranges worth aligning: ``reach`` words either side of the places a match can be.

    A match holds more than half of the answer's c distinct content words (``_FuzzyAnswer.plausible``),
    so it misses fewer than c/2 of them and holds at least one of any ceil(c/2): anchoring on the
    ceil(c/2) rarest ones finds every place, at the cost of their occurrences only. Windows that overlap
    are merged (up to a bounded length) and kept only when they hold more than half of the content words;
    the ``MAX_FUZZY_WINDOWS`` that hold most of them are returned, in document order.
    """
    distinct = set(content)
    rarest = sorted(distinct, key=lambda key: len(index.positions.get(key, ())))[
        : math.ceil(len(distinct) / 2)
    ]
    anchors = sorted(
        position for key in rarest if key in index.positions for position in index.positions[key]
    )
    windows: list[tuple[int, int]] = []
    for anchor in anchors:
        low, high = max(0, anchor - reach), min(len(index.keys), anchor + reach + 1)
        if windows and low <= windows[-1][1] and high - windows[-1][0] <= 4 * reach:
            windows[-1] = (windows[-1][0], high)
        else:
            windows.append((low, high))
    # Keep the windows that hold most of the answer's words; bounded, for text repeated many times.
    coverage = {window: len(distinct.intersection(index.keys[window[0] : window[1]])) for window in windows}
    kept = [window for window in windows if 2 * coverage[window] > len(distinct)]
    kept.sort(key=lambda window: -coverage[window])  # stable: document order among equals
    return sorted(kept[:MAX_FUZZY_WINDOWS])


def _best_occurrence(
    index: DocumentIndex,
    candidates: list[tuple[int, int]],
    answer_keys: list[str],
    question: str | None,
    prefer: Sequence[tuple[int, int]],
) -> tuple[int, int]:
    """The candidate to show: inside ``prefer`` first, then most related to the question, then earliest."""
    if len(candidates) == 1:
        return candidates[0]
    if prefer:
        inside = [span for span in candidates if _inside(index.char_span(*span), prefer)]
        candidates = inside or candidates
        if len(candidates) == 1:
            return candidates[0]
    scores = question_scores(index, candidates, answer_keys, question) if question else None
    if scores is None:
        return candidates[0]
    return candidates[int(np.argmax(scores))]  # argmax keeps the earliest among equals


def _inside(span: tuple[int, int], ranges: Sequence[tuple[int, int]]) -> bool:
    start, end = span
    return any(low <= start and end <= high for low, high in ranges)


def question_scores(
    index: DocumentIndex,
    candidates: list[tuple[int, int]],
    answer_keys: list[str],
    question: str,
) -> np.ndarray:
    """How related each candidate's neighbourhood is to the question.

    Each content word of the question (not a function word, not a word of the answer) found within
    ``CONTEXT_WORDS`` words of the candidate adds its idf, weighted by exp(-distance / CONTEXT_DECAY): near,
    rare question words say "this is the passage the question is about".
    """
    answer_set = set(answer_keys)
    terms = {key for key in normalize_words(question) if key not in _STOP_WORDS and key not in answer_set}
    firsts = np.array([first for first, _ in candidates])
    lasts = np.array([end - 1 for _, end in candidates])
    scores = np.zeros(len(candidates))
    for term in terms:
        where = index.positions.get(term)
        if where is None:
            continue
        # The nearest occurrence of the term before the candidate's first word and after its last word.
        before = np.searchsorted(where, firsts, side="right") - 1
        after = np.searchsorted(where, lasts, side="left")
        distance = np.full(len(candidates), np.inf)
        has_before = before >= 0
        distance[has_before] = firsts[has_before] - where[before[has_before]]
        has_after = after < len(where)
        distance[has_after] = np.minimum(distance[has_after], where[after[has_after]] - lasts[has_after])
        weight = np.where(distance <= CONTEXT_WORDS, np.exp(-distance / CONTEXT_DECAY), 0.0)
        scores += index.idf[term] * weight
    return scores


# --- the quote --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """Where an answer comes from: its span in the document and the quote (a sentence or short passage)
    that holds it. Offsets are character offsets into the document; ``quote_start <= start < end <=
    quote_end``."""

    start: int
    end: int
    quote_start: int
    quote_end: int

    def quote(self, document: str) -> str:
        return document[self.quote_start : self.quote_end]

    def as_dict(self, document: str) -> dict:
        """What the ``chat`` API returns: ``{"start", "end", "quote", "quote_start", "quote_end"}``."""
        return {
            "start": self.start,
            "end": self.end,
            "quote": self.quote(document),
            "quote_start": self.quote_start,
            "quote_end": self.quote_end,
        }


def find_evidence(
    document: str,
    answer: str,
    question: str | None = None,
    *,
    prefer: Sequence[tuple[int, int]] = (),
) -> Evidence | None:
    """The answer's span (as ``locate_answer``) with the sentence that holds it, or ``None``."""
    span = locate_answer(document, answer, question, prefer=prefer)
    if span is None:
        return None
    start, end = span
    quote_start, quote_end = quote_span(document, start, end)
    return Evidence(start, end, quote_start, quote_end)


def quote_span(document: str, start: int, end: int, limit: int = MAX_QUOTE_CHARACTERS) -> tuple[int, int]:
    """The sentence(s) holding ``document[start:end]``, cut at word boundaries to about ``limit``
    characters around it when longer. Never cuts into the answer itself."""
    starts = index_document(document).sentence_starts
    sentence = bisect.bisect_right(starts, start) - 1
    low = starts[sentence] if sentence >= 0 else 0
    following = bisect.bisect_left(starts, end)
    high = starts[following] if following < len(starts) else len(document)
    low, high = _strip(document, low, high)
    if high - low <= limit:
        return low, high
    # Too long: keep the answer and share the rest of the limit between its two sides (a side that needs
    # less gives its share to the other), then cut inwards at white space so no word is cut.
    room = max(0, limit - (end - start))
    after = min(high - end, room - min(start - low, room // 2))
    before = min(start - low, room - after)
    left, right = start - before, end + after
    if left > low:
        left = next((p + 1 for p in range(left - 1, start) if document[p].isspace()), start)
    if right < high:
        right = next((p for p in range(right, end - 1, -1) if document[p].isspace()), end)
    return _strip(document, left, right)


def _strip(document: str, low: int, high: int) -> tuple[int, int]:
    while low < high and document[low].isspace():
        low += 1
    while high > low and document[high - 1].isspace():
        high -= 1
    return low, high


# A sentence ends at . ! ? (and any closing quotes or brackets) followed by white space, or at a line break.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+|\n\s*")
# Not sentence ends: "Mr. Smith", "e.g. this", "J. R. R. Tolkien", "U.S. Army".
_ABBREVIATION = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|Mt|vs|etc|Vol|Fig|Inc|Ltd|Co|Gen|Col|Gov|Sen|Rep|approx)"
    r"|\b(?:[A-Za-z]\.)*[A-Za-z])\.$"
)


def _sentence_starts(document: str) -> list[int]:
    """Where each sentence begins (a simple splitter: it needs to find the sentence around an answer,
    not to be a linguist; a missed boundary makes a longer quote, which the length limit bounds)."""
    starts = [0]
    for match in _SENTENCE_END.finditer(document):
        following = match.end()
        if following >= len(document):
            break
        if "\n" not in match.group():
            if document[following].islower():
                continue  # "e.g. this", "... and so on. and": not a new sentence
            before = document[max(0, match.start() - 12) : match.start() + 1]
            if _ABBREVIATION.search(before):
                continue
        starts.append(following)
    return starts
