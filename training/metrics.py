"""Exact match and token F1, computed exactly like the official SQuAD 2.0 and CoQA evaluation scripts.

    python -m training.metrics squad_v2 dev-v2.0.json predictions.json   # {question_id: answer}
    python -m training.metrics coqa coqa-dev-v1.0.json predictions.json  # [{"id", "turn_id", "answer"}]

Both print JSON with the official script's keys. ``score`` is the same arithmetic for in-training
evaluation (SQuAD 2.0's: max over the gold answers), with the model's no-answer text mapped to the
official empty answer first, on both sides: a prediction that only resembles it ("I can't answer")
scores 0 against a no-answer gold, as in the official scripts, not a partial token F1.

``coqa`` also scores CoQA-format files whose stories have other sources (e.g. TryoCoQA converted to
CoQA's schema): each such source gets its own figure, counted in ``overall``.

Answer normalization (both official scripts): lower-case, drop punctuation, drop the articles
a/an/the, collapse white space. An empty gold answer means "no answer": an empty prediction scores 1
against it and anything else 0.

Two documented differences from the official scripts: a missing prediction counts as wrong (the SQuAD
2.0 script skips it in ``total`` and then fails on the HasAns/NoAns subsets), and a warning says how
many are missing.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import string
import sys
from collections.abc import Mapping, Sequence

from cqa.format import NO_ANSWER

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)

# CoQA's `source` values and the names its official script reports them under.
COQA_IN_DOMAIN = {
    "mctest": "children_stories",
    "gutenberg": "literature",
    "race": "mid-high_school",
    "cnn": "news",
    "wikipedia": "wikipedia",
}
COQA_OUT_DOMAIN = {"reddit": "reddit", "science": "science"}
COQA_UNKNOWN = "unknown"  # CoQA's answer to unanswerable questions


def normalize_answer(text: str) -> str:
    """Lower-case, remove punctuation, articles and extra white space (official SQuAD/CoQA rule)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def compute_exact(gold: str, prediction: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(prediction))


def compute_f1(gold: str, prediction: str) -> float:
    """Token-overlap F1 of one prediction against one gold answer."""
    gold_tokens, pred_tokens = _tokens(gold), _tokens(prediction)
    if not gold_tokens or not pred_tokens:
        # Either is "no answer": 1 if both are, 0 otherwise.
        return float(gold_tokens == pred_tokens)
    common = collections.Counter(gold_tokens) & collections.Counter(pred_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


# What ``score`` measures, as results.json, metrics.json and the model card name it.
SCORE_NAME = (
    "token F1 and exact match in percent, SQuAD 2.0 rules: normalized answers, the max over the gold "
    "answers, the no-answer text scored as the official empty answer"
)


def as_empty_if_no_answer(text: str, no_answer: str | None = NO_ANSWER) -> str:
    """ "" (the official "no answer") for the model's no-answer text, compared normalized; else ``text``."""
    if no_answer is not None and normalize_answer(text) == normalize_answer(no_answer):
        return ""
    return text


def answer_scores(prediction: str, golds: Sequence[str], no_answer: str | None = NO_ANSWER) -> dict:
    """Exact match (0/1) and F1 (0-1) of one prediction: the max over ``golds`` (none: "" only), the
    no-answer text counted as "" on both sides (``no_answer=None``: compared as plain text)."""
    prediction = as_empty_if_no_answer(prediction, no_answer)
    golds = [as_empty_if_no_answer(gold, no_answer) for gold in golds] or [""]
    return {
        "exact": max(compute_exact(gold, prediction) for gold in golds),
        "f1": max(compute_f1(gold, prediction) for gold in golds),
    }


def score(
    predictions: Sequence[str], references: Sequence[Sequence[str]], no_answer: str | None = NO_ANSWER
) -> dict[str, float]:
    """Mean exact match and F1 in percent, each the max over the item's gold answers (answer_scores).

    An item with no gold answers is scored against "" (SQuAD's rule for unanswerable questions).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {"exact": 0.0, "f1": 0.0}
    scores = [answer_scores(p, golds, no_answer) for p, golds in zip(predictions, references, strict=True)]
    return {
        "exact": 100.0 * sum(s["exact"] for s in scores) / len(scores),
        "f1": 100.0 * sum(s["f1"] for s in scores) / len(scores),
    }


def to_official_answer(text: str, dataset: str, no_answer: str = NO_ANSWER) -> str:
    """Map the model's no-answer text back to what the dataset's official scorer expects.

    SQuAD 2.0 expects "", CoQA "unknown", TryoCoQA keeps its own "I can't answer that.". The
    comparison uses the normalized form, so "I can't answer that" (no period) also counts.
    """
    if normalize_answer(text) != normalize_answer(no_answer):
        return text
    official = {"squad_v2": "", "coqa": COQA_UNKNOWN, "tryocoqa": NO_ANSWER}
    if dataset not in official:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(official)}")
    return official[dataset]


def official_predictions(
    dataset: str, ids: Sequence[str], predictions: Sequence[str], no_answer: str = NO_ANSWER
) -> dict[str, str] | list[dict]:
    """Predictions for examples from ``training.data`` in the official scorer's file format.

    SQuAD 2.0: {question_id: answer}. CoQA: [{"id": story_id, "turn_id": n, "answer": ...}], reading
    story and turn from our example ids ``{story_id}_{turn_id}``.
    """
    answers = [to_official_answer(p, dataset, no_answer) for p in predictions]
    if dataset == "squad_v2":
        return dict(zip(ids, answers, strict=True))
    if dataset == "coqa":
        rows = []
        for example_id, answer in zip(ids, answers, strict=True):
            story_id, turn_id = example_id.rsplit("_", 1)
            rows.append({"id": story_id, "turn_id": int(turn_id), "answer": answer})
        return rows
    raise ValueError(f"no official prediction format for {dataset!r}; expected squad_v2 or coqa")


# --- SQuAD 2.0 ---------------------------------------------------------------------------------


def squad_v2_evaluate(dataset: Sequence[Mapping], predictions: Mapping[str, str]) -> dict[str, float]:
    """The official SQuAD 2.0 evaluation (without the no-answer probability options).

    ``dataset`` is the file's ``data`` list; ``predictions`` maps question ids to answer strings
    ("" = no answer). Returns exact, f1, total and the HasAns_/NoAns_ breakdowns, in percent.
    """
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    has_answer: dict[str, bool] = {}
    missing = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qid = qa["id"]
                has_answer[qid] = bool(qa["answers"])
                golds = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])] or [""]
                if qid not in predictions:
                    missing += 1
                    exact[qid] = f1[qid] = 0.0
                    continue
                exact[qid] = max(compute_exact(gold, predictions[qid]) for gold in golds)
                f1[qid] = max(compute_f1(gold, predictions[qid]) for gold in golds)
    if missing:
        print(f"warning: {missing} of {len(exact)} questions have no prediction (scored 0)", file=sys.stderr)

    def summary(qids: list[str]) -> dict[str, float]:
        total = len(qids)
        return {
            "exact": 100.0 * sum(exact[q] for q in qids) / total,
            "f1": 100.0 * sum(f1[q] for q in qids) / total,
            "total": total,
        }

    result = summary(list(exact))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [q for q, has in has_answer.items() if has == wanted]
        if qids:
            result.update({f"{prefix}_{key}": value for key, value in summary(qids).items()})
    return result


# --- CoQA ----------------------------------------------------------------------------------------


def coqa_turn_score(golds: Sequence[str], prediction: str) -> dict[str, float]:
    """One CoQA turn: with several golds, the average over leaving each one out of the max."""
    golds = list(golds)
    if len(golds) == 1:
        return {"em": float(compute_exact(golds[0], prediction)), "f1": compute_f1(golds[0], prediction)}
    em = f1 = 0.0
    for i in range(len(golds)):
        others = golds[:i] + golds[i + 1 :]
        em += max(compute_exact(gold, prediction) for gold in others)
        f1 += max(compute_f1(gold, prediction) for gold in others)
    return {"em": em / len(golds), "f1": f1 / len(golds)}


def coqa_gold_answers(dataset: Sequence[Mapping]) -> tuple[dict[tuple[str, int], list[str]], dict[str, str]]:
    """{(story_id, turn_id): gold answers} (main answer first, then additional_answers) and
    {story_id: source}, as read by the official script."""
    golds: dict[tuple[str, int], list[str]] = {}
    sources: dict[str, str] = {}
    for story in dataset:
        sources[story["id"]] = story["source"]
        answer_lists = [story["answers"], *story.get("additional_answers", {}).values()]
        for i, question in enumerate(story["questions"]):
            golds[(story["id"], question["turn_id"])] = [answers[i]["input_text"] for answers in answer_lists]
    return golds, sources


def coqa_evaluate(dataset: Sequence[Mapping], predictions: Sequence[Mapping]) -> dict[str, dict]:
    """The official CoQA evaluation: em/f1 (percent, one decimal) and turn counts per source,
    in-domain, out-of-domain and overall. ``predictions``: [{"id", "turn_id", "answer"}].

    A source that is not one of CoQA's (a CoQA-format file of other data, e.g. TryoCoQA) is scored
    under its own name and counted in ``overall`` (neither in- nor out-of-domain)."""
    golds, sources = coqa_gold_answers(dataset)
    predicted = {(p["id"], p["turn_id"]): p["answer"] for p in predictions}
    names = {**COQA_IN_DOMAIN, **COQA_OUT_DOMAIN}
    totals: dict[str, collections.Counter] = {name: collections.Counter() for name in names.values()}
    missing = 0
    for (story_id, turn_id), gold in golds.items():
        source = sources[story_id]
        name = names.get(source, source)  # accept reporting names as sources too
        if name in ("in_domain", "out_domain", "overall"):
            raise ValueError(f"story {story_id}: source {source!r} is the name of a summary figure")
        totals.setdefault(name, collections.Counter())["turns"] += 1
        if (story_id, turn_id) not in predicted:
            missing += 1
            continue
        turn = coqa_turn_score(gold, predicted[(story_id, turn_id)])
        totals[name]["em"] += turn["em"]
        totals[name]["f1"] += turn["f1"]
    if missing:
        print(f"warning: {missing} of {len(golds)} turns have no prediction (scored 0)", file=sys.stderr)

    def summary(counters: list[collections.Counter]) -> dict[str, float]:
        turns = sum(c["turns"] for c in counters)
        return {
            "em": round(sum(c["em"] for c in counters) / max(1, turns) * 100, 1),
            "f1": round(sum(c["f1"] for c in counters) / max(1, turns) * 100, 1),
            "turns": turns,
        }

    result = {name: summary([counter]) for name, counter in totals.items()}
    in_domain = [totals[name] for name in COQA_IN_DOMAIN.values()]
    out_domain = [totals[name] for name in COQA_OUT_DOMAIN.values()]
    other = [counter for name, counter in totals.items() if name not in names.values()]
    result["in_domain"] = summary(in_domain)
    result["out_domain"] = summary(out_domain)
    result["overall"] = summary(in_domain + out_domain + other)
    return result


# --- command line ---------------------------------------------------------------------------------


def _read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"error: {what} file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {what} file {path} is not valid JSON: {e}") from None


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m training.metrics", description="Official SQuAD 2.0 / CoQA scoring."
    )
    parser.add_argument("dataset", choices=["squad_v2", "coqa"])
    parser.add_argument("data_file", help="the official dataset JSON (dev-v2.0.json, coqa-dev-v1.0.json)")
    parser.add_argument("pred_file", help="squad_v2: {question_id: answer}; coqa: [{id, turn_id, answer}]")
    args = parser.parse_args(argv)

    data = _read_json(args.data_file, "data")
    predictions = _read_json(args.pred_file, "prediction")
    if not isinstance(data, dict) or "data" not in data:
        raise SystemExit(f"error: {args.data_file} has no top-level 'data' list: is it the official file?")
    try:
        if args.dataset == "squad_v2":
            if not isinstance(predictions, dict):
                raise SystemExit(f"error: {args.pred_file} must be a JSON object {{question_id: answer}}")
            result = squad_v2_evaluate(data["data"], predictions)
        else:
            if not isinstance(predictions, list):
                raise SystemExit(f"error: {args.pred_file} must be a JSON list of {{id, turn_id, answer}}")
            result = coqa_evaluate(data["data"], predictions)
    except (KeyError, IndexError, TypeError) as e:
        raise SystemExit(f"error: {args.data_file} or {args.pred_file} is malformed ({e!r})") from None
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
