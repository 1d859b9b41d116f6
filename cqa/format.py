"""The model's input format: the one definition used by the app and by training.

    {context} || <Q2> {older q} <A2> {older a} <Q1> {previous q} <A1> {previous a} <Q> {question} <A>␣

History pairs are numbered by recency (1 = the most recent previous pair) and written oldest first.
The string always ends with "<A> " (␣ above: a trailing space); the training target is the bare answer.
Markers typed in the question, the history or the document are neutralized first (``neutralize_markers``),
so the input has exactly one separator and one current question. A context over the length limit loses
its end ("head") or keeps its passages most related to the question ("relevant"): ``fit_model_input``.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cqa.passages import choose_passages, passage_spans, rank_passages, with_neighbours

SEPARATOR_TOKEN = "||"
QUESTION_TOKEN = "<Q>"
ANSWER_TOKEN = "<A>"
# Added to the T5 vocabulary in this order, so they get ids 32100, 32101, 32102.
ADDED_TOKENS = (SEPARATOR_TOKEN, QUESTION_TOKEN, ANSWER_TOKEN)

DEFAULT_TURNS = 2
DEFAULT_MAX_INPUT_TOKENS = 7000
# TryoCoQA's answer to unanswerable questions; the single no-answer target used in training.
NO_ANSWER = "I can't answer that."


CONTEXT_STRATEGIES = ("head", "relevant")
# Kept passages are joined by a blank line: the T5 tokenizer reads it as a plain space (no extra token,
# so the budget goes to the document), the model sees what it was trained on (paragraphs one after the
# other), and "What the model sees" shows the passages apart. A visible gap mark (" ... ") would cost
# tokens in every join and is something the model never saw in training.
PASSAGE_JOIN = "\n\n"
_JOIN_MARGIN = 16

# --- markers typed by a user or present in a document --------------------------------------------------
# "||", "<Q>", "<A>" are added tokens and "<Q1>", "<A2>", ... tokenize to the same pieces as the history
# markers ("<" is unknown to T5: <unk> Q 1 >), so such text would fake the dialogue's structure. The T5
# normalizer (NFKC-like) runs before the added tokens are matched, so the full-width and small forms
# ("｜", "＜", "﹤", "Ｑ", ...) make the same markers, and so do markers with control characters inside
# ("<\x01Q>"), which it deletes: they count too (the sets below come from running the real normalizer
# over all of Unicode). The replacements keep the length (one character for one), so offsets into the
# document stay valid, and use pieces T5 knows: "<Q1>" becomes "(Q1)" (pieces "▁(" "Q" "1)"), "||"
# becomes "| " ("▁|" or "|"); look-alikes such as "‹Q›" or "¦¦" would reach the model as <unk>.
_BAR = "|｜"
_OPEN = "<﹤＜"
_CLOSE = ">﹥＞"
_DELETED = "\x00-\x08\x0b\x0e-\x1f\x7f\x8f\x9f"  # control characters the T5 normalizer drops
_BAR_PAIR = re.compile(f"[{_BAR}][{_DELETED}]*[{_BAR}]")
_ANGLED = re.compile(f"[{_OPEN}]((?:[{_DELETED}]|[^\\s{_OPEN}{_CLOSE}]){{1,16}}?)[{_CLOSE}]")
_DELETED_CHARACTERS = re.compile(f"[{_DELETED}]")
_MARKER_INSIDE = re.compile(r"[QA]\d*")


def _round_brackets(match: re.Match) -> str:
    inside = match.group(1)
    seen = unicodedata.normalize("NFKC", _DELETED_CHARACTERS.sub("", inside))  # what the tokenizer reads
    if not _MARKER_INSIDE.fullmatch(seen):
        return match.group(0)  # "<b>", "<br>", "a<b>c": not a marker, left as it is
    return f"({inside})"


def _one_bar(match: re.Match) -> str:
    return match.group(0)[0] + " " * (len(match.group(0)) - 1)


def neutralize_markers(text: str) -> str:
    """``text`` with every marker of the model input (``||``, ``<Q>``, ``<A>``, ``<Q1>``, ...) made
    harmless: ``<Q1>`` -> ``(Q1)``, ``||`` -> ``| ``. Same length, character for character elsewhere."""
    return _BAR_PAIR.sub(_one_bar, _ANGLED.sub(_round_brackets, text))


def _clean(text: str) -> str:
    # Collapse all runs of white space so that a stray newline in a question or answer
    # cannot change the shape of the dialogue part.
    return " ".join(neutralize_markers(text).split())


def dialogue_part(history: Sequence[tuple[str, str]], question: str, turns: int = DEFAULT_TURNS) -> str:
    """Everything after the context: `` || <Q2> .. <A1> .. <Q> question <A> ``.

    ``history`` holds (question, answer) pairs, oldest first; the last ``turns`` of them are used.
    Markers typed in them are neutralized (``neutralize_markers``).
    """
    window = _window(history, turns)
    parts = [
        f"<Q{rank}> {_clean(q)} <A{rank}> {_clean(a)}"
        for rank, (q, a) in zip(range(len(window), 0, -1), window, strict=True)
    ]
    parts.append(f"{QUESTION_TOKEN} {_clean(question)} {ANSWER_TOKEN}")
    return f" {SEPARATOR_TOKEN} " + " ".join(parts) + " "


def _window(history: Sequence[tuple[str, str]], turns: int) -> list[tuple[str, str]]:
    return list(history)[-turns:] if turns > 0 else []


def _strip_bounds(context: str) -> tuple[int, int]:
    """Where ``context.strip()`` starts and ends in ``context``."""
    start = len(context) - len(context.lstrip())
    return start, max(start, len(context.rstrip()))


def build_model_input(
    context: str, history: Sequence[tuple[str, str]], question: str, turns: int = DEFAULT_TURNS
) -> str:
    """The exact model input for ``question`` about ``context`` after the conversation ``history``."""
    return neutralize_markers(context.strip()) + dialogue_part(history, question, turns)


class TokenizerLike(Protocol):
    """What the length rule needs: a ``tokenizers.Tokenizer`` (transformers' fast tokenizers expose
    theirs as ``.backend_tokenizer``)."""

    def encode(self, sequence: str, add_special_tokens: bool = True):  # -> tokenizers.Encoding
        ...


@dataclass(frozen=True)
class FittedInput:
    """A model input cut to the length limit, and what the cut did."""

    text: str
    input_tokens: int  # tokens of ``text``, end-of-sequence included
    context_tokens: int  # tokens of the whole context before any cut
    kept_context_tokens: int
    truncated: bool
    strategy: str = "head"
    # The parts of the context the model sees, as (start, end) character ranges of ``context`` as passed
    # to fit_model_input (before any strip), in document order.
    kept_ranges: tuple[tuple[int, int], ...] = ()
    passages_kept: int = 0  # "relevant" cuts only: passages in ``text`` / passages in the document
    passages_total: int = 0

    @property
    def kept_share(self) -> int:
        """Kept context tokens in percent of the document's, rounded down (a cut never shows 100%)."""
        return self.kept_context_tokens * 100 // max(1, self.context_tokens)

    @property
    def notice(self) -> str:
        """A sentence for people, empty when nothing was cut."""
        if not self.truncated:
            return ""
        if self.strategy == "relevant":
            passages = "passage" if self.passages_kept == 1 else f"{self.passages_kept:,} passages"
            return (
                f"The document is {self.context_tokens:,} tokens long; the model sees the {passages} "
                f"most related to your question ({self.kept_share}% of the document)."
            )
        return (
            f"The document is {self.context_tokens:,} tokens long; only its first "
            f"{self.kept_context_tokens:,} fit in the model's input, the rest was left out."
        )


def fit_model_input(
    tokenizer: TokenizerLike,
    context: str,
    history: Sequence[tuple[str, str]],
    question: str,
    max_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
    turns: int = DEFAULT_TURNS,
    strategy: str = "head",
) -> FittedInput:
    """Build the model input and, if it is longer than ``max_tokens``, cut the context.

    ``strategy`` says what of a context that does not fit is kept: "head" its beginning, "relevant" the
    passages most related to the question and the last turns (cqa.passages), in document order. A context
    that fits is kept whole under both. The dialogue part (history and question) is never cut: the
    original system truncated the end of the whole string, which could drop the question itself. Raises
    ValueError when the dialogue part alone does not fit.
    """
    if strategy not in CONTEXT_STRATEGIES:
        raise ValueError(f"unknown context strategy {strategy!r}: use one of {', '.join(CONTEXT_STRATEGIES)}")
    offset, end = _strip_bounds(context)
    document = neutralize_markers(context[offset:end])
    dialogue = dialogue_part(history, question, turns)
    # One encoding of the document (its offsets say where every cut may go) and one of the dialogue.
    context_encoding = tokenizer.encode(document, add_special_tokens=False)
    context_tokens = len(context_encoding.ids)
    dialogue_tokens = len(tokenizer.encode(dialogue).ids)  # end-of-sequence included
    # The dialogue starts with a space, so no token spans the join: the two counts add up (the margin is
    # for safety). Only an input that may fit is encoded whole, to count it exactly.
    if context_tokens + dialogue_tokens <= max_tokens + _JOIN_MARGIN:
        n_tokens = len(tokenizer.encode(document + dialogue).ids)
        if n_tokens <= max_tokens:
            whole = ((offset, end),) if document else ()
            return FittedInput(
                document + dialogue, n_tokens, context_tokens, context_tokens, False, strategy, whole
            )

    budget = max_tokens - dialogue_tokens
    if budget < 0:
        raise ValueError(
            f"The question and the conversation history take {dialogue_tokens:,} tokens, "
            f"more than the model's input limit of {max_tokens:,}."
        )
    if strategy == "relevant":
        query = relevance_query(history, question, min(turns, QUERY_TURNS))
        return _fit_relevant(
            tokenizer, document, offset, context_encoding, dialogue, query, budget, max_tokens
        )
    return _fit_head(tokenizer, document, offset, context_encoding, dialogue, budget, max_tokens)


def _fit_head(tokenizer, document, offset, context_encoding, dialogue, budget, max_tokens) -> FittedInput:
    """The longest beginning of ``document`` that fits, cut after a whole token."""
    context_tokens = len(context_encoding.ids)
    # Tokens can merge across the cut, so shrink until the whole string fits (rarely more than once).
    # (The budget can exceed the context's own token count when pieces merge differently joined.)
    keep = min(budget, context_tokens)
    offsets = context_encoding.offsets  # (a new list at every access: fetched once)
    while True:
        cut = offsets[keep - 1][1] if keep > 0 else 0
        kept = document[:cut].rstrip()
        text = kept + dialogue
        n_tokens = len(tokenizer.encode(text).ids)
        if n_tokens <= max_tokens or keep == 0:
            ranges = ((offset, offset + len(kept)),) if kept else ()
            return FittedInput(text, n_tokens, context_tokens, keep, True, "head", ranges)
        keep -= max(1, n_tokens - max_tokens)
        keep = max(keep, 0)


# The relevance query: the question, its words counted QUESTION_WEIGHT times, then the last QUERY_TURNS
# turns (the model sees two; the older one in the query measured worse: it pulls in the previous topic).
# A passage's score adds NEIGHBOUR_WEIGHT times its neighbours'. All measured in bench/context_selection.py.
QUESTION_WEIGHT = 2
QUERY_TURNS = 1
NEIGHBOUR_WEIGHT = 0.5


def relevance_query(
    history: Sequence[tuple[str, str]],
    question: str,
    turns: int = QUERY_TURNS,
    question_weight: int = QUESTION_WEIGHT,
) -> str:
    """The words passages are ranked by: the question (``question_weight`` times), then the questions and
    answers of the last ``turns`` turns (what "it" or "why?" refers to)."""
    recent = " ".join(f"{q} {a}" for q, a in _window(history, turns))
    return " ".join([question] * question_weight + [recent])


def passage_token_counts(context_encoding, spans: Sequence[tuple[int, int]]) -> list[int]:
    """Tokens of each passage (in document order), from the document's one ``tokenizers.Encoding``.

    A passage's tokens are those that start from the end of the passage before it up to its own end: the
    white space before a passage is its own (T5 makes a lone "▁" token of the space before a digit or a
    quote, and that token comes along when the passage is kept).
    """
    starts = [start for start, _ in context_encoding.offsets]
    ends = [e for _, e in spans]
    lows = [0, *ends[:-1]]
    return [bisect_left(starts, e) - bisect_left(starts, low) for low, e in zip(lows, ends, strict=True)]


def _fit_relevant(
    tokenizer, document, offset, context_encoding, dialogue, query, budget, max_tokens
) -> FittedInput:
    """The passages of ``document`` most related to ``query`` that fit, joined in document order."""
    context_tokens = len(context_encoding.ids)
    spans = passage_spans(document)
    sizes = passage_token_counts(context_encoding, spans)
    scores = with_neighbours(rank_passages(document, spans, query), NEIGHBOUR_WEIGHT)
    while True:
        kept = choose_passages(sizes, scores, budget)
        text = PASSAGE_JOIN.join(document[spans[i][0] : spans[i][1]] for i in kept) + dialogue
        n_tokens = len(tokenizer.encode(text).ids)
        if n_tokens <= max_tokens or not kept:
            ranges = tuple((offset + spans[i][0], offset + spans[i][1]) for i in kept)
            used = sum(sizes[i] for i in kept)
            return FittedInput(
                text, n_tokens, context_tokens, used, True, "relevant", ranges, len(kept), len(spans)
            )
        budget -= n_tokens - max_tokens  # pieces merged differently across a join: retry a bit smaller
