import importlib.util
import random
import re
import sys
import time
from itertools import pairwise

import pytest

from cqa.format import build_model_input, fit_model_input, neutralize_markers
from cqa.passages import (
    choose_passages,
    paragraph_spans,
    passage_spans,
    rank_passages,
    sentence_spans,
    with_neighbours,
)
from tests.conftest import REPO, shared_file

TEXT = (
    "  A title\n\nThe first sentence is here. Is this the second one? Yes!\n"
    'A line of its own\n\n\n  Another paragraph: it says "quoted." Then more (e.g. this). The end.  '
)


def test_paragraphs_and_sentences_are_trimmed_spans_in_order():
    assert [TEXT[s:e] for s, e in paragraph_spans(TEXT)] == [
        "A title",
        "The first sentence is here. Is this the second one? Yes!\nA line of its own",
        'Another paragraph: it says "quoted." Then more (e.g. this). The end.',
    ]
    assert [TEXT[s:e] for s, e in sentence_spans(TEXT)] == [
        "A title",
        "The first sentence is here.",
        "Is this the second one?",
        "Yes!",
        "A line of its own",
        'Another paragraph: it says "quoted."',
        "Then more (e.g.",
        "this).",
        "The end.",
    ]


@pytest.mark.parametrize("max_chars", [40, 80, 400])  # the longest sentence is 36
def test_passages_are_whole_sentences_covering_the_text(max_chars):
    spans = passage_spans(TEXT, max_chars=max_chars, paragraph_min_chars=0)
    sentence_starts = {s for s, _ in sentence_spans(TEXT)}
    sentence_ends = {e for _, e in sentence_spans(TEXT)}
    assert all(s in sentence_starts and e in sentence_ends for s, e in spans)
    assert all(not TEXT[a_end:b_start].strip() for (_, a_end), (b_start, _) in pairwise(spans))
    assert TEXT[: spans[0][0]].strip() == "" and TEXT[spans[-1][1] :].strip() == ""
    # Never across a paragraph break here (paragraph_min_chars=0), never over max_chars.
    paragraphs = paragraph_spans(TEXT)
    assert all(any(ps <= s and e <= pe for ps, pe in paragraphs) for s, e in spans)
    assert all(e - s <= max_chars for s, e in spans)


def test_a_short_paragraph_joins_the_next_one():
    spans = passage_spans(TEXT, max_chars=400, paragraph_min_chars=20)
    assert TEXT[spans[0][0] : spans[0][1]].startswith("A title\n\nThe first sentence")
    assert len(passage_spans(TEXT, max_chars=400, paragraph_min_chars=0)) == 3


def test_a_text_without_sentence_ends_is_cut_at_spaces():
    text = " ".join(f"w{i}" for i in range(500))
    spans = passage_spans(text, max_chars=100)
    assert len(spans) > 10 and all(e - s <= 100 for s, e in spans)
    assert " ".join(text[s:e] for s, e in spans) == text
    assert passage_spans("") == [] and passage_spans(" \n\n ") == []


@pytest.mark.parametrize(
    "hostile",
    ["a" + " " * 100_000 + "b", "." * 100_000, ".!?" * 30_000 + " x", " \n" * 50_000, '."' * 50_000],
)
def test_passages_of_hostile_text_take_linear_time(hostile):
    start = time.perf_counter()
    spans = passage_spans(hostile)
    assert time.perf_counter() - start < 2  # quadratic regexes took minutes here
    assert all(e - s <= 400 for s, e in spans)


def test_bm25_ranks_the_passage_with_the_question_words_first():
    text = "Cats purr and sleep.\n\nDogs bark at the mailman.\n\nParrots repeat words they hear."
    spans = paragraph_spans(text)
    scores = rank_passages(text, spans, "Why do dogs bark?")
    assert scores[1] > 0 and scores[0] == scores[2] == 0
    assert rank_passages(text, spans, "the of and") == [0.0, 0.0, 0.0]  # stop words only
    assert rank_passages(text, [], "dogs") == []
    assert with_neighbours([0.0, 2.0, 0.0], 0.5) == [1.0, 2.0, 1.0]


def test_choose_passages_fills_the_budget_best_first_in_document_order():
    sizes = [10, 10, 30, 10]
    assert choose_passages(sizes, [0.0, 1.0, 3.0, 2.0], budget=45) == [2, 3]  # the 0.0 one no longer fits
    assert choose_passages(sizes, [0.0, 1.0, 3.0, 2.0], budget=60) == [0, 1, 2, 3]
    assert choose_passages(sizes, [0.0, 0.0, 0.0, 0.0], budget=25) == [0, 1]  # no match: the beginning
    assert choose_passages(sizes, [0.0, 0.0, 5.0, 0.0], budget=20) == [0, 1]  # skips what cannot fit


# --- on ../shared/data: the real T5 tokenizer, SQuAD 2.0 dev articles, TryoCoQA -----------------------


@pytest.fixture(scope="module")
def t5_tokenizer():
    from training.tiny import build_tokenizer

    return build_tokenizer(spiece_model=shared_file("t5-tokenizer/spiece.model")).backend_tokenizer


def test_markers_reach_the_real_t5_tokenizer_once(t5_tokenizer):
    context = "A doc || with <Q> and ＜Q＞, ｜｜ and <Q1> <A2> markers."
    text = build_model_input(context, [("q <A>", "a || b")], "what <Q2> is it?")
    encoding = t5_tokenizer.encode(text)
    assert [encoding.ids.count(i) for i in (32100, 32101, 32102)] == [1, 1, 1]
    # "<Q1>" is <unk> Q 1 > for T5 (no "<" piece): only the dialogue's own history marker may look so.
    pieces = " ".join(encoding.tokens)
    assert len(re.findall(r"< [QA] \d >", pieces)) == 2  # <Q1> and <A1>, both the dialogue's
    assert {encoding.ids[i] for i, piece in enumerate(encoding.tokens) if piece == "<"} == {2}  # <unk>
    # Neutralized markers are ordinary pieces, not unknown ones.
    assert t5_tokenizer.encode("(Q1) | ").tokens == ["▁(", "Q", "1)", "▁|", "</s>"]


def test_no_marker_survives_neutralizing_for_the_real_normalizer(t5_tokenizer):
    """Random text made of marker characters, their look-alikes and the control characters T5 deletes."""
    alphabet = [*"|｜<﹤＜>﹥＞QＱA1１2 x", "\x01", "\x1c", "\x7f"]
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(200))
        neutral = neutralize_markers(text)
        assert len(neutral) == len(text)
        seen = t5_tokenizer.normalizer.normalize_str(neutral)  # what the added tokens are matched in
        assert "||" not in seen and not re.search(r"<[QA]\d*>", seen)
        assert not {32100, 32101, 32102} & set(t5_tokenizer.encode(neutral).ids)


def _bench():
    """bench/context_selection.py as a module (bench/ is no package)."""
    if "context_selection" not in sys.modules:
        path = REPO / "bench" / "context_selection.py"
        spec = importlib.util.spec_from_file_location("context_selection", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["context_selection"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["context_selection"]


GOALS = {"SQuAD": {1024: 0.95, 2048: 0.97, 7000: 0.98}, "TryoCoQA": {1024: 0.78, 2048: 0.85}}


@pytest.mark.parametrize("dataset", GOALS)
def test_relevance_selection_keeps_the_answer_as_often_as_the_goals(t5_tokenizer, dataset):
    bench = _bench()
    if dataset == "SQuAD":
        documents = bench.squad_documents(shared_file("squad2/dev-v2.0.reconstructed.json"))
    else:
        documents, _ = bench.tryocoqa_documents(shared_file("tryocoqa/tryocoqa_v1.json"))
    prepared = [bench.Prepared(t5_tokenizer, d) for d in documents]
    budgets = list(GOALS[dataset])
    rates = bench.kept_rates(
        t5_tokenizer, prepared, [bench.VARIANTS["head"], bench.VARIANTS["relevant"]], budgets
    )
    for budget, goal in GOALS[dataset].items():
        assert rates["relevant", budget] >= goal, (budget, rates)
        assert rates["relevant", budget] > rates["head", budget]


def test_the_bench_selection_is_what_fit_model_input_keeps(t5_tokenizer):
    bench = _bench()
    documents, _ = bench.tryocoqa_documents(shared_file("tryocoqa/tryocoqa_v1.json"))
    document = documents[0]
    prepared = bench.Prepared(t5_tokenizer, document)
    variant = bench.VARIANTS["relevant"]
    for question in document.questions[:5]:
        fitted = fit_model_input(
            t5_tokenizer, document.text, question.history, question.question, 1024, strategy="relevant"
        )
        dialogue_tokens = len(t5_tokenizer.encode(fitted.text[fitted.text.rindex(" || ") :]).ids)
        scores = prepared.scores(variant, question)
        assert tuple(prepared.kept_ranges(variant, scores, 1024 - dialogue_tokens)) == fitted.kept_ranges
