"""The model's input format: the one definition used by the app and by training.

    {context} || <Q2> {older q} <A2> {older a} <Q1> {previous q} <A1> {previous a} <Q> {question} <A>␣

History pairs are numbered by recency (1 = the most recent previous pair) and written oldest first.
The string always ends with "<A> " (␣ above: a trailing space); the training target is the bare answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

SEPARATOR_TOKEN = "||"
QUESTION_TOKEN = "<Q>"
ANSWER_TOKEN = "<A>"
# Added to the T5 vocabulary in this order, so they get ids 32100, 32101, 32102.
ADDED_TOKENS = (SEPARATOR_TOKEN, QUESTION_TOKEN, ANSWER_TOKEN)

DEFAULT_TURNS = 2
DEFAULT_MAX_INPUT_TOKENS = 7000
# TryoCoQA's answer to unanswerable questions; the single no-answer target used in training.
NO_ANSWER = "I can't answer that."


def _clean(text: str) -> str:
    # Collapse all runs of white space so that a stray newline in a question or answer
    # cannot change the shape of the dialogue part.
    return " ".join(text.split())


def dialogue_part(history: Sequence[tuple[str, str]], question: str, turns: int = DEFAULT_TURNS) -> str:
    """Everything after the context: `` || <Q2> .. <A1> .. <Q> question <A> ``.

    ``history`` holds (question, answer) pairs, oldest first; the last ``turns`` of them are used.
    """
    window = list(history)[-turns:] if turns > 0 else []
    parts = [
        f"<Q{rank}> {_clean(q)} <A{rank}> {_clean(a)}"
        for rank, (q, a) in zip(range(len(window), 0, -1), window, strict=True)
    ]
    parts.append(f"{QUESTION_TOKEN} {_clean(question)} {ANSWER_TOKEN}")
    return f" {SEPARATOR_TOKEN} " + " ".join(parts) + " "


def build_model_input(
    context: str, history: Sequence[tuple[str, str]], question: str, turns: int = DEFAULT_TURNS
) -> str:
    """The exact model input for ``question`` about ``context`` after the conversation ``history``."""
    return context.strip() + dialogue_part(history, question, turns)


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

    @property
    def notice(self) -> str:
        """A sentence for people, empty when nothing was cut."""
        if not self.truncated:
            return ""
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
) -> FittedInput:
    """Build the model input and, if it is longer than ``max_tokens``, cut the context's end.

    The dialogue part (history and question) is never cut: the original system truncated the end of
    the whole string, which could drop the question itself. Raises ValueError when the dialogue part
    alone does not fit.
    """
    context = context.strip()
    dialogue = dialogue_part(history, question, turns)
    full = tokenizer.encode(context + dialogue)
    context_encoding = tokenizer.encode(context, add_special_tokens=False)
    context_tokens = len(context_encoding.ids)
    if len(full.ids) <= max_tokens:
        return FittedInput(context + dialogue, len(full.ids), context_tokens, context_tokens, False)

    dialogue_tokens = len(tokenizer.encode(dialogue).ids)  # end-of-sequence included
    budget = max_tokens - dialogue_tokens
    if budget < 0:
        raise ValueError(
            f"The question and the conversation history take {dialogue_tokens:,} tokens, "
            f"more than the model's input limit of {max_tokens:,}."
        )
    # Tokens can merge across the cut, so shrink until the whole string fits (rarely more than once).
    # (The budget can exceed the context's own token count when pieces merge differently joined.)
    keep = min(budget, context_tokens)
    while True:
        cut = context_encoding.offsets[keep - 1][1] if keep > 0 else 0
        text = context[:cut].rstrip() + dialogue
        n_tokens = len(tokenizer.encode(text).ids)
        if n_tokens <= max_tokens or keep == 0:
            return FittedInput(text, n_tokens, context_tokens, keep, True)
        keep -= max(1, n_tokens - max_tokens)
        keep = max(keep, 0)
