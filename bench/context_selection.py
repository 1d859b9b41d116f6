"""How often the answer survives the cut of a long document: the head cut vs relevance selection.

    python bench/context_selection.py [--budgets 1024 2048 4096 7000] [--variants all|NAME ...]
                                      [--data ../shared/data] [--latency [--quick] [--runs 3]]

Documents (from ../shared/data, see its SOURCES.md):
- SQuAD: each SQuAD 2.0 dev article made one document (its title, then its paragraphs, blank lines
  between); every answerable question, without history. Kept: one of the gold answers' character spans
  lies wholly inside a kept range.
- TryoCoQA: each conversation's story, every turn with its real history (the model sees the last two
  turns). Answers are free text, so the answer's evidence is located in the story first: the story's
  substring that best matches the answer (rapidfuzz partial_ratio_alignment, lower case). Kept: at least
  half of that evidence's characters inside kept ranges. Left out: no-answer turns ("I can't answer that."),
  yes/no answers (found anywhere), and answers whose best match scores under 60 (not locatable).

The budget given to the document is max_tokens minus the dialogue part's tokens, as in
cqa.format.fit_model_input; selection uses the same functions (passages, BM25, choice). The real T5
tokenizer (spiece.model plus the three added tokens) counts tokens. It prints Markdown tables: the kept
rates per variant and budget, and the time of one fit_model_input call on a ~14k-token document.

--latency also times answers (cqa runtime, int8, the LongT5-base-shaped random model of bench/latency.py,
built and cached by it) at each budget with relevance selection: seconds per answer vs answer kept.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import string
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cqa.format import (  # noqa: E402
    NEIGHBOUR_WEIGHT,
    NO_ANSWER,
    QUERY_TURNS,
    QUESTION_WEIGHT,
    dialogue_part,
    fit_model_input,
    neutralize_markers,
    passage_token_counts,
    relevance_query,
)
from cqa.passages import (  # noqa: E402
    DEFAULT_PARAGRAPH_MIN_CHARS,
    DEFAULT_PASSAGE_CHARS,
    PassageIndex,
    choose_passages,
    passage_spans,
    with_neighbours,
)

BUDGETS = (1024, 2048, 4096, 7000)
LATENCY_DOCUMENT_TOKENS = 14_000


# ----------------------------------------------------------------------------- data


@dataclass
class Question:
    history: list[tuple[str, str]]
    question: str
    evidence: list[tuple[int, int]]  # character spans in the document; kept when one of them is kept
    whole: bool  # True: the span must be wholly kept (SQuAD); False: at least half of it (TryoCoQA)


@dataclass
class Document:
    name: str
    text: str
    questions: list[Question]


def squad_documents(path: Path) -> list[Document]:
    """Each SQuAD 2.0 dev article as one document, with its answerable questions."""
    documents = []
    for article in json.loads(path.read_text())["data"]:
        text = article["title"].replace("_", " ")
        questions = []
        for paragraph in article["paragraphs"]:
            text += "\n\n"
            start = len(text)
            text += paragraph["context"]
            for qa in paragraph["qas"]:
                spans = [
                    (start + a["answer_start"], start + a["answer_start"] + len(a["text"]))
                    for a in qa["answers"]
                ]
                if spans and not qa.get("is_impossible"):
                    questions.append(Question([], qa["question"], spans, whole=True))
        documents.append(Document(article["title"], text, questions))
    return documents


def tryocoqa_documents(path: Path) -> tuple[list[Document], dict]:
    """Each TryoCoQA conversation as one document, its turns with their real history; what was left out."""
    from rapidfuzz import fuzz

    documents, left_out = [], {"no answer": 0, "yes/no": 0, "not locatable": 0}
    for conversation in json.loads(path.read_text()):
        story = conversation["story"]
        lower = story.lower() if len(story.lower()) == len(story) else story
        history: list[tuple[str, str]] = []
        questions = []
        for question, answer in zip(
            conversation["questions"], conversation["answers"]["input_text"], strict=True
        ):
            normalized = _normalize(answer)
            if answer.strip() == NO_ANSWER:
                left_out["no answer"] += 1
            elif normalized in ("yes", "no"):
                left_out["yes/no"] += 1
            else:
                match = fuzz.partial_ratio_alignment(answer.lower(), lower)
                if match.score < 60:
                    left_out["not locatable"] += 1
                else:
                    questions.append(
                        Question(list(history), question, [(match.dest_start, match.dest_end)], False)
                    )
            history.append((question, answer))
        documents.append(Document(f"conversation {conversation['conversation_id']}", story, questions))
    return documents, left_out


def _normalize(text: str) -> str:
    """SQuAD's answer normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


# ----------------------------------------------------------------------------- selection variants


@dataclass(frozen=True)
class Variant:
    """One way to choose what of a document is kept; "relevant" is what fit_model_input does."""

    name: str
    head: bool = False
    passage_chars: int = DEFAULT_PASSAGE_CHARS
    paragraph_min_chars: int = DEFAULT_PARAGRAPH_MIN_CHARS
    question_weight: int = QUESTION_WEIGHT
    history_turns: int = QUERY_TURNS  # turns of history in the query
    neighbour_weight: float = NEIGHBOUR_WEIGHT
    keep_first: bool = False  # the first passage (title, introduction) always kept


VARIANTS = {
    v.name: v
    for v in (
        Variant("head", head=True),
        Variant("relevant"),
        # Whole paragraphs (cut only when over 4,000 characters), the plain query, no neighbours.
        Variant(
            "bm25 over paragraphs",
            passage_chars=4000,
            paragraph_min_chars=0,
            question_weight=1,
            history_turns=2,
            neighbour_weight=0,
        ),
        Variant("no neighbours", neighbour_weight=0),
        Variant("neighbours 0.25", neighbour_weight=0.25),
        Variant("neighbours 1.0", neighbour_weight=1.0),
        Variant("question weight 1", question_weight=1),
        Variant("question weight 3", question_weight=3),
        Variant("query: question only", history_turns=0),
        Variant("query: last 2 turns", history_turns=2),
        Variant("passages 200 chars", passage_chars=200),
        Variant("passages 800 chars", passage_chars=800),
        Variant("passages cross paragraphs", paragraph_min_chars=10**9),
        Variant("passages end at every paragraph", paragraph_min_chars=0),
        Variant("first passage kept", keep_first=True),
    )
}


class Prepared:
    """One document tokenized once, and its passages indexed once per passage layout."""

    def __init__(self, tokenizer, document: Document) -> None:
        self.document = document
        self.text = neutralize_markers(document.text)  # same length: evidence offsets stay valid
        self.encoding = tokenizer.encode(self.text, add_special_tokens=False)
        self.token_ends = [
            end for _, end in self.encoding.offsets
        ]  # (Encoding rebuilds its lists per access)
        self._layouts: dict[tuple, tuple] = {}

    def layout(self, variant: Variant):
        key = (variant.passage_chars, variant.paragraph_min_chars)
        if key not in self._layouts:
            spans = passage_spans(self.text, variant.passage_chars, variant.paragraph_min_chars)
            self._layouts[key] = (
                spans,
                passage_token_counts(self.encoding, spans),
                PassageIndex(self.text, spans),
            )
        return self._layouts[key]

    def scores(self, variant: Variant, question: Question) -> list[float]:
        """Each passage's score for ``question`` (the same at every budget)."""
        if variant.head:
            return []
        query = relevance_query(
            question.history, question.question, variant.history_turns, variant.question_weight
        )
        scores = with_neighbours(self.layout(variant)[2].scores(query), variant.neighbour_weight)
        if variant.keep_first and scores:
            scores[0] = float("inf")
        return scores

    def kept_ranges(self, variant: Variant, scores: list[float], budget: int) -> list[tuple[int, int]]:
        """What the model sees of the document when ``budget`` tokens are left for it."""
        if budget >= len(self.token_ends):
            return [(0, len(self.text))]
        if variant.head:
            return [(0, self.token_ends[budget - 1])] if budget > 0 else []
        spans, sizes, _ = self.layout(variant)
        return [spans[i] for i in choose_passages(sizes, scores, budget)]


def is_kept(question: Question, ranges: Sequence[tuple[int, int]]) -> bool:
    for start, end in question.evidence:
        inside = sum(max(0, min(end, e) - max(start, s)) for s, e in ranges)
        if (inside == end - start) if question.whole else (2 * inside >= end - start):
            return True
    return False


def kept_rates(
    tokenizer, prepared: list[Prepared], variants: Sequence[Variant], budgets: Sequence[int]
) -> dict[tuple[str, int], float]:
    counts: dict[tuple[str, int], list[int]] = {}
    for doc in prepared:
        for question in doc.document.questions:
            dialogue_tokens = len(tokenizer.encode(dialogue_part(question.history, question.question)).ids)
            for variant in variants:
                scores = doc.scores(variant, question)
                for max_tokens in budgets:
                    ranges = doc.kept_ranges(variant, scores, max_tokens - dialogue_tokens)
                    count = counts.setdefault((variant.name, max_tokens), [0, 0])
                    count[0] += is_kept(question, ranges)
                    count[1] += 1
    return {key: kept / total for key, (kept, total) in counts.items()}


def print_rates(title: str, rates: dict, variants: Sequence[Variant], budgets: Sequence[int]) -> None:
    print(f"\n{title}\n")
    print("| selection | " + " | ".join(f"{b:,} tokens" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for variant in variants:
        print(f"| {variant.name} | " + " | ".join(f"{rates[variant.name, b]:.3f}" for b in budgets) + " |")


# ----------------------------------------------------------------------------- speed


def long_document(tokenizer, squad: list[Document], tokens: int) -> tuple[str, Question]:
    """Whole SQuAD articles one after the other until ``tokens`` tokens; a question about the last one."""
    parts, total = [], 0
    for doc in sorted(squad, key=lambda d: -len(d.text)):
        parts.append(doc.text)
        total += len(tokenizer.encode(doc.text, add_special_tokens=False).ids)
        if total >= tokens:
            return "\n\n".join(parts), doc.questions[-1]
    raise ValueError(f"the SQuAD articles hold fewer than {tokens:,} tokens")


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fit_speed(tokenizer, text: str, question: Question, budgets: Sequence[int], runs: int) -> None:
    n = len(tokenizer.encode(text).ids)
    print(
        f"\nfit_model_input on a {n:,}-token document (median of {runs} after a warm-up; noisy on a shared "
        "machine)\n"
    )
    print("| budget | head | relevant |")
    print("|---|---|---|")
    for budget in budgets:
        head, relevant = (
            median_seconds(
                lambda s=s, b=budget: fit_model_input(
                    tokenizer, text, question.history, question.question, b, strategy=s
                ),
                runs,
            )
            for s in ("head", "relevant")
        )
        print(f"| {budget:,} | {head * 1000:.0f} ms | {relevant * 1000:.0f} ms |")


def _rate(rates: dict, variant: str, budget: int) -> str:
    rate = rates.get((variant, budget))
    return "n/a" if rate is None else f"{rate:.3f}"


def answer_latency(text: str, question: Question, budgets: Sequence[int], rates: dict, args) -> None:
    """Seconds per answer (cqa runtime, int8, LongT5-base-shaped random weights) at each budget."""
    sys.path.insert(0, str(REPO / "bench"))
    import latency

    paths = latency.paths_for(Path(args.cache_dir), args.quick)
    latency.prepare(paths, args.quick, [latency.DEFAULT_VARIANT])
    tokenizer, answer = latency._runtime_answer_fn(
        latency.DEFAULT_VARIANT, paths, args.threads, args.new_tokens
    )
    backend = tokenizer.backend_tokenizer
    print(
        f"\nAnswer latency ({latency.DEFAULT_VARIANT}, {args.threads} threads, {args.new_tokens} new tokens, "
        f"median of {args.runs} after a warm-up) with relevance selection\n"
    )
    print("| budget | input tokens | seconds per answer | SQuAD answer kept | TryoCoQA answer kept |")
    print("|---|---|---|---|---|")
    for budget in budgets:
        fitted = fit_model_input(
            backend, text, question.history, question.question, budget, strategy="relevant"
        )
        seconds = median_seconds(lambda f=fitted: answer(f.text), args.runs)
        squad, tryo = (_rate(rates[name], "relevant", budget) for name in ("SQuAD", "TryoCoQA"))
        print(f"| {budget:,} | {fitted.input_tokens:,} | {seconds:.2f} s | {squad} | {tryo} |")


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument(
        "--variants", nargs="+", default=["all"], help=f"'all' or some of: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--fit-runs", type=int, default=5)
    parser.add_argument(
        "--latency", action="store_true", help="also time answers (minutes; bench/latency.py's model)"
    )
    parser.add_argument("--quick", action="store_true", help="--latency on a small model (a smoke run)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(REPO / ".cache" / "bench"))
    args = parser.parse_args(argv)
    names = list(VARIANTS) if args.variants == ["all"] else args.variants
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}: choose from {list(VARIANTS)}")
    variants = [VARIANTS[n] for n in names]

    from training.tiny import build_tokenizer

    data = Path(args.data)
    tokenizer = build_tokenizer(spiece_model=data / "t5-tokenizer" / "spiece.model").backend_tokenizer
    squad = squad_documents(data / "squad2" / "dev-v2.0.reconstructed.json")
    tryo, left_out = tryocoqa_documents(data / "tryocoqa" / "tryocoqa_v1.json")
    rates = {}
    for title, documents in (("SQuAD", squad), ("TryoCoQA", tryo)):
        prepared = [Prepared(tokenizer, d) for d in documents]
        sizes = sorted(len(p.token_ends) for p in prepared)
        questions = sum(len(d.questions) for d in documents)
        rates[title] = kept_rates(tokenizer, prepared, variants, args.budgets)
        note = (
            f"; left out: {', '.join(f'{v} {k}' for k, v in left_out.items())}" if title == "TryoCoQA" else ""
        )
        print_rates(
            f"{title}: answer kept, {len(documents)} documents of {sizes[0]:,}-{sizes[-1]:,} tokens "
            f"(median {sizes[len(sizes) // 2]:,}), {questions:,} questions{note}",
            rates[title],
            variants,
            args.budgets,
        )
    text, question = long_document(tokenizer, squad, LATENCY_DOCUMENT_TOKENS)
    fit_speed(tokenizer, text, question, args.budgets, args.fit_runs)
    if args.latency:
        answer_latency(text, question, args.budgets, rates, args)


if __name__ == "__main__":
    main()
