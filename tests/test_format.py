import pytest
from tokenizers import Tokenizer

from cqa.format import ADDED_TOKENS, build_model_input, dialogue_part, fit_model_input


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
