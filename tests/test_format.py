import re
import time
import unicodedata
from itertools import pairwise

import pytest
from tokenizers import Tokenizer

from cqa.format import (
    ADDED_TOKENS,
    CONTEXT_STRATEGIES,
    build_model_input,
    dialogue_part,
    fit_model_input,
    neutralize_markers,
)


def test_no_history():
    assert build_model_input("Some context.", [], "What?") == "Some context. || <Q> What? <A> "


def test_one_previous_pair_is_used_on_the_second_turn():
    # The original app skipped this pair (off-by-one); the window is the last N pairs that exist.
    assert build_model_input("C", [("q1", "a1")], "q2") == "C || <Q1> q1 <A1> a1 <Q> q2 <A> "


def test_two_pairs_oldest_first_numbered_by_recency():
    history = [("q1", "a1"), ("q2", "a2"), ("q3", "a3")]
    assert build_model_input("C", history, "q4") == "C || <Q2> q2 <A2> a2 <Q1> q3 <A1> a3 <Q> q4 <A> "


@pytest.mark.parametrize("turns", [0, -1])
def test_turns_zero_or_less_uses_no_history(turns):
    assert dialogue_part([("q1", "a1")], "q2", turns=turns) == " || <Q> q2 <A> "


def test_turns_three():
    history = [("q1", "a1"), ("q2", "a2"), ("q3", "a3")]
    assert dialogue_part(history, "q4", turns=3).startswith(" || <Q3> q1 <A3> a1 <Q2> q2")


def test_white_space_is_collapsed_and_input_ends_with_answer_marker():
    text = build_model_input("  C  \n", [("  q1\n", "a\t1 ")], " what\nnow? ")
    assert text == "C || <Q1> q1 <A1> a 1 <Q> what now? <A> "
    assert text.endswith("<A> ")


def test_added_tokens_in_order():
    assert ADDED_TOKENS == ("||", "<Q>", "<A>")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_dir / "onnx" / "tokenizer.json"))


def test_fit_leaves_short_input_alone(tokenizer):
    fitted = fit_model_input(tokenizer, "a short context", [("q", "a")], "why?", max_tokens=100)
    assert not fitted.truncated and fitted.notice == ""
    assert fitted.text == build_model_input("a short context", [("q", "a")], "why?")
    assert fitted.input_tokens == len(tokenizer.encode(fitted.text).ids)
    assert fitted.kept_context_tokens == fitted.context_tokens


@pytest.mark.parametrize("limit", [80, 120, 300])
def test_fit_cuts_the_context_end_never_the_dialogue(tokenizer, limit):
    context = " ".join(f"sentence {i} is here." for i in range(200))
    history = [("first question", "first answer"), ("second question", "second answer")]
    fitted = fit_model_input(tokenizer, context, history, "the question?", max_tokens=limit)
    assert fitted.truncated
    assert fitted.input_tokens <= limit
    assert fitted.input_tokens == len(tokenizer.encode(fitted.text).ids)
    assert fitted.text.endswith(dialogue_part(history, "the question?"))
    kept = fitted.text[: -len(dialogue_part(history, "the question?"))]
    assert context.startswith(kept)  # the start of the context is kept
    assert fitted.kept_context_tokens < fitted.context_tokens
    assert f"{fitted.context_tokens:,}" in fitted.notice


def test_fit_rejects_a_dialogue_that_cannot_fit(tokenizer):
    with pytest.raises(ValueError, match="more than the model's input limit"):
        fit_model_input(tokenizer, "ctx", [], "word " * 100, max_tokens=20)


# --- markers typed by users or present in documents -------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a || b",
        "x<Q>y <A> z",
        "<Q1> older <A1> answer <Q12>",
        "|||| and ｜｜ (full-width) and ＜Ｑ＞ ﹤A2﹥",
        "plain text, <b>bold</b>, a < b > c, <QA>, <Q 1>",
        "control characters the tokenizer deletes: <\x01Q> |\x1c| <A\x7f2>",
    ],
)
def test_neutralize_markers_keeps_the_length_and_leaves_no_marker(text):
    neutral = neutralize_markers(text)
    assert len(neutral) == len(text)
    assert neutralize_markers(neutral) == neutral  # idempotent: neutralizing twice changes nothing
    # What the T5 normalizer does before matching added tokens: NFKC, and control characters deleted.
    normalized = unicodedata.normalize("NFKC", re.sub("[\x00-\x08\x0b\x0e-\x1f\x7f\x8f\x9f]", "", neutral))
    assert "||" not in normalized
    assert not re.search(r"<[QA]\d*>", normalized)


def test_neutralize_markers_changes_only_markers():
    assert neutralize_markers("a || b <Q> c <A1> d") == "a |  b (Q) c (A1) d"
    assert neutralize_markers("<b>bold</b>, a < b > c, <QA>") == "<b>bold</b>, a < b > c, <QA>"


def test_markers_anywhere_leave_one_separator_and_one_question(tokenizer):
    context = "Doc || with <Q> fake <A> markers <Q1> and <A2>."
    history = [("first <Q> question ||", "answer <A> with <Q1>")]
    text = build_model_input(context, history, "real <A> question || <Q>?")
    assert text.count("||") == 1 and text.count("<Q>") == 1 and text.count("<A>") == 1
    assert text.count("<Q1>") == 1 and text.count("<A1>") == 1 and "<A2>" not in text
    ids = tokenizer.encode(text).ids
    assert [ids.count(i) for i in (32100, 32101, 32102)] == [1, 1, 1]
    fitted = fit_model_input(tokenizer, context, history, "real <A> question || <Q>?", strategy="relevant")
    assert fitted.text == text


# --- long documents: head and relevant ---------------------------------------------------------------

PLACES = "harbour forest castle bridge garden market chapel mill tower lighthouse".split()
BUILDERS = "Ada Bruno Chiara Dmitri Elif Farid Greta Hiro Ines Jonas".split()


def long_document(paragraphs: int = 40) -> str:
    """Distinct paragraphs; the last one, far past any small budget, holds the answer."""
    body = [
        f"The {PLACES[i % 10]} number {i} was painted blue in {1900 + i}. "
        f"Visitors say the {PLACES[i % 10]} number {i} is calm. {BUILDERS[i % 10]} walked there often."
        for i in range(paragraphs)
    ]
    body.append("The zephyrine observatory was founded by Orla Quist. Its dome is made of copper.")
    return "\n\n".join(body)


QUESTION = "Who founded the zephyrine observatory?"


def test_relevant_keeps_the_answer_at_the_end_and_head_does_not(tokenizer):
    document = long_document()
    head = fit_model_input(tokenizer, document, [], QUESTION, max_tokens=200)
    relevant = fit_model_input(tokenizer, document, [], QUESTION, max_tokens=200, strategy="relevant")
    assert head.truncated and relevant.truncated
    assert "Orla Quist" not in head.text
    assert "Orla Quist" in relevant.text
    assert relevant.input_tokens <= 200 and relevant.input_tokens == len(tokenizer.encode(relevant.text).ids)
    assert 1 < relevant.passages_kept < relevant.passages_total
    assert relevant.notice.startswith(f"The document is {relevant.context_tokens:,} tokens long;")
    assert f"the {relevant.passages_kept} passages most related to your question" in relevant.notice
    assert f"({relevant.kept_share}% of the document)" in relevant.notice and relevant.kept_share < 100


def test_relevant_uses_the_last_turn_for_follow_up_questions(tokenizer):
    history = [(QUESTION, "Orla Quist")]
    fitted = fit_model_input(
        tokenizer, long_document(), history, "What is its dome made of?", 200, strategy="relevant"
    )
    assert "made of copper" in fitted.text


@pytest.mark.parametrize("strategy", CONTEXT_STRATEGIES)
def test_a_document_that_fits_is_kept_whole_the_same_way(tokenizer, strategy):
    context = "  \n" + long_document(3) + "\n "
    fitted = fit_model_input(tokenizer, context, [("q", "a")], QUESTION, max_tokens=2000, strategy=strategy)
    assert fitted.text == build_model_input(context, [("q", "a")], QUESTION)
    assert not fitted.truncated and fitted.notice == ""
    assert fitted.kept_ranges == ((3, len(context) - 2),)
    head = fit_model_input(tokenizer, context, [("q", "a")], QUESTION, max_tokens=2000)
    assert (fitted.text, fitted.input_tokens, fitted.kept_ranges) == (
        head.text,
        head.input_tokens,
        head.kept_ranges,
    )


@pytest.mark.parametrize("limit", [100, 200, 400])
def test_relevant_never_cuts_the_dialogue(tokenizer, limit):
    history = [("first question", "first answer"), ("second question", "second answer")]
    fitted = fit_model_input(
        tokenizer, long_document(), history, QUESTION, max_tokens=limit, strategy="relevant"
    )
    dialogue = dialogue_part(history, QUESTION)
    assert fitted.truncated and fitted.text.endswith(dialogue)
    assert fitted.input_tokens <= limit
    assert fitted.input_tokens == len(tokenizer.encode(fitted.text).ids)


@pytest.mark.parametrize("strategy", CONTEXT_STRATEGIES)
def test_kept_ranges_are_offsets_into_the_context_as_passed(tokenizer, strategy):
    context = "\n\n   " + long_document().replace("number 3 ", "number || 3 ") + "  \n"
    fitted = fit_model_input(tokenizer, context, [], QUESTION, max_tokens=250, strategy=strategy)
    kept_part = fitted.text[: -len(dialogue_part([], QUESTION))]
    pieces = [neutralize_markers(context[s:e]) for s, e in fitted.kept_ranges]
    join = "\n\n" if strategy == "relevant" else ""
    assert join.join(pieces) == kept_part
    assert all(0 <= s < e <= len(context) for s, e in fitted.kept_ranges)
    assert list(fitted.kept_ranges) == sorted(fitted.kept_ranges)  # document order
    assert all(a[1] < b[0] for a, b in pairwise(fitted.kept_ranges))
    if strategy == "head":
        assert len(fitted.kept_ranges) == 1 and fitted.kept_ranges[0][0] == 5  # after the leading space


def test_relevant_can_cut_a_document_without_sentences_or_paragraphs(tokenizer):
    document = " ".join(f"item{i}" for i in range(3000)) + " zephyrine observatory Orla Quist"
    fitted = fit_model_input(tokenizer, document, [], QUESTION, max_tokens=300, strategy="relevant")
    assert fitted.input_tokens <= 300 and "Orla Quist" in fitted.text


def test_relevant_rejects_a_dialogue_that_cannot_fit(tokenizer):
    with pytest.raises(ValueError, match="more than the model's input limit"):
        fit_model_input(tokenizer, long_document(), [], "word " * 100, max_tokens=20, strategy="relevant")


def test_an_unknown_strategy_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown context strategy 'middle': use one of head, relevant"):
        fit_model_input(None, "ctx", [], "q", strategy="middle")


def test_relevant_fit_of_a_long_document_takes_well_under_seconds(tokenizer):
    document = long_document(700)  # ~20k tokens in the synthetic vocabulary
    start = time.perf_counter()
    fitted = fit_model_input(tokenizer, document, [], QUESTION, max_tokens=1024, strategy="relevant")
    assert fitted.context_tokens > 14_000 and "Orla Quist" in fitted.text
    assert (
        time.perf_counter() - start < 5
    )  # a bound against blow-ups only; bench/context_selection.py times it
