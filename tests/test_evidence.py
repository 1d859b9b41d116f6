"""cqa.evidence: where in the document an answer comes from.

Small documents built here (always run), then the measured goals on whole SQuAD 2.0 dev articles from
../shared/data (skipped when absent), with the documents and perturbations of bench/evidence.py.
"""

from __future__ import annotations

import importlib.util
import sys
import time

import pytest
from conftest import REPO, shared_file

from cqa.evidence import (
    MAX_QUOTE_CHARACTERS,
    NO_ANSWER,
    Evidence,
    find_evidence,
    locate_answer,
    normalize_words,
    quote_span,
)

FILLER = " ".join(f"Filler sentence number {n} talks about nothing in particular." for n in range(12))

# Two paragraphs that both hold "1911", far enough apart that each question's words are near one only.
REPEATED = (
    "The trading company was founded in Lyon by two brothers. In 1911 the company moved its offices "
    "to Paris, where the brothers opened a shop.\n\n"
    f"{FILLER}\n\n"
    "Aviation came late to the valley. In 1911 the first aeroplane flew over the lake, watched by a crowd "
    "of farmers."
)


def span_text(document: str, span: tuple[int, int] | None) -> str | None:
    return None if span is None else document[span[0] : span[1]]


# --- exact matches after normalization --------------------------------------------------------------------


def test_exact_answer_is_found_with_its_offsets():
    document = "The Normans were the people who gave their name to Normandy, a region in France."
    assert span_text(document, locate_answer(document, "Normandy")) == "Normandy"
    assert span_text(document, locate_answer(document, "a region in France")) == "a region in France"


def test_case_and_punctuation_differences_are_ignored():
    document = "The treaty was signed in Saint-Clair-sur-Epte (911), by Charles the Simple."
    assert span_text(document, locate_answer(document, "saint clair sur epte")) == "Saint-Clair-sur-Epte"
    assert span_text(document, locate_answer(document, "CHARLES THE SIMPLE!")) == "Charles the Simple"
    assert span_text(document, locate_answer(document, "(911)")) == "911"


def test_leading_article_added_or_dropped():
    document = "They were led by the Duke of Normandy. Normans settled in England."
    assert span_text(document, locate_answer(document, "Duke of Normandy")) == "Duke of Normandy"
    assert span_text(document, locate_answer(document, "the Duke of Normandy")) == "the Duke of Normandy"
    assert span_text(document, locate_answer(document, "The Normans")) == "Normans"


def test_trailing_period_and_quotes():
    document = 'The first duke was called "Rollo", a Viking leader.'
    assert span_text(document, locate_answer(document, "Rollo.")) == "Rollo"
    assert span_text(document, locate_answer(document, "a Viking leader.")) == "a Viking leader"


def test_repeated_answer_goes_to_the_passage_the_question_is_about():
    moved = locate_answer(REPEATED, "1911", "When did the company move its offices to Paris?")
    flew = locate_answer(REPEATED, "1911", "When did the first aeroplane fly over the lake?")
    assert span_text(REPEATED, moved) == span_text(REPEATED, flew) == "1911"
    assert moved[0] == REPEATED.index("1911") and flew[0] == REPEATED.rindex("1911")
    # Without a question, the first occurrence.
    assert locate_answer(REPEATED, "1911") == moved


def test_an_occurrence_the_model_saw_wins():
    second = REPEATED.rindex("1911")
    seen = [(second - 100, len(REPEATED))]  # the model was given the last passage only
    found = locate_answer(REPEATED, "1911", "When did the company move its offices to Paris?", prefer=seen)
    assert found == (second, second + 4)
    # A range that holds no occurrence changes nothing.
    assert locate_answer(REPEATED, "1911", "When did the company move?", prefer=[(0, 10)])[0] < second


# --- nothing to show --------------------------------------------------------------------------------------


def test_text_not_in_the_document_is_none():
    document = "The Normans were the people who gave their name to Normandy, a region in France."
    assert locate_answer(document, "Spain") is None
    assert locate_answer(document, "the Battle of Hastings") is None
    assert locate_answer(document, "Normand") is None  # one word: exact only, no partial word
    assert locate_answer(document, "French region") is None


@pytest.mark.parametrize(
    "reply", [NO_ANSWER, "I can't answer that", "i CAN'T ANSWER THAT.", "I can’t answer that."]
)
def test_the_no_answer_reply_is_none_even_when_the_document_contains_it(reply):
    document = "When asked about the future, the minister said: I can't answer that. Then he left."
    assert locate_answer(document, reply) is None
    assert find_evidence(document, reply) is None


@pytest.mark.parametrize("answer", ["", "   ", "...", "—", "the", "of the", "it is"])
def test_empty_punctuation_and_function_word_answers_are_none(answer):
    document = "It is the end of the story, and of the book. The end... — it is."
    assert locate_answer(document, answer) is None


# --- offsets into the original characters ----------------------------------------------------------------


def test_offsets_survive_non_ascii_and_runs_of_white_space():
    document = "Zoë  moved\tto\n\nSão   Paulo in 2019 — “finally”.\r\nThen Straße\u00a0Nr. 5 in Köln."
    assert span_text(document, locate_answer(document, "Sao Paulo")) == "São   Paulo"
    assert span_text(document, locate_answer(document, "são paulo in 2019")) == "São   Paulo in 2019"
    assert span_text(document, locate_answer(document, "finally")) == "finally"
    assert span_text(document, locate_answer(document, "strasse nr 5")) == "Straße\u00a0Nr. 5"
    assert span_text(document, locate_answer(document, "KÖLN")) == "Köln"


def test_decomposed_accents_are_one_word():
    document = "The cafe\u0301 of Jose\u0301 opened early."
    assert span_text(document, locate_answer(document, "café of José")) == "cafe\u0301 of Jose\u0301"


# --- reworded answers (fuzzy) -----------------------------------------------------------------------------


def test_a_dropped_word_is_found_and_snapped_to_whole_words():
    document = f"{FILLER} Complaints go to the Committee of Independent Experts in Brussels. {FILLER}"
    assert span_text(document, locate_answer(document, "the Committee of Experts")) == (
        "the Committee of Independent Experts"
    )


def test_an_added_word_is_found():
    document = f"{FILLER} The engine was improved by Thomas Newcomen around 1712. {FILLER}"
    assert span_text(document, locate_answer(document, "Thomas about Newcomen")) == "Thomas Newcomen"
    assert span_text(document, locate_answer(document, "improved by the Thomas Newcomen")) == (
        "improved by Thomas Newcomen"
    )


def test_similar_looking_text_is_not_a_match():
    document = f"{FILLER} About 11 million people lived there in 1840, under General James. {FILLER}"
    assert locate_answer(document, "12 million people") is None  # another number
    assert locate_answer(document, "in 1640") is None
    assert locate_answer(document, "General Sejm") is None  # one content word of two
    assert locate_answer(document, "11 million soldiers") is not None  # two of three content words


# --- the quote --------------------------------------------------------------------------------------------


def test_evidence_quotes_the_sentence_holding_the_answer():
    document = "Rollo was a Viking. He became the first ruler of Normandy in 911. His son was William."
    evidence = find_evidence(document, "the first ruler of Normandy")
    assert isinstance(evidence, Evidence)
    assert evidence.quote(document) == "He became the first ruler of Normandy in 911."
    assert evidence.as_dict(document) == {
        "start": document.index("the first"),
        "end": document.index(" in 911"),
        "quote": "He became the first ruler of Normandy in 911.",
        "quote_start": document.index("He became"),
        "quote_end": document.index(" His son"),
    }


def test_quotes_do_not_end_at_abbreviations_and_stop_at_lines():
    document = "Intro line\nMr. Smith met Dr. Jones in the U.S. Army in 1950. Next sentence.\n- a list item"
    assert (
        find_evidence(document, "Jones").quote(document)
        == "Mr. Smith met Dr. Jones in the U.S. Army in 1950."
    )
    assert find_evidence(document, "list item").quote(document) == "- a list item"
    assert find_evidence(document, "Intro").quote(document) == "Intro line"


def test_an_answer_across_sentences_quotes_both():
    document = "First part. It ends here. And goes on there. Last part."
    evidence = find_evidence(document, "ends here and goes on")
    assert evidence.quote(document) == "It ends here. And goes on there."


def test_a_long_sentence_is_cut_at_word_boundaries_around_the_answer():
    words = [f"word{n}" for n in range(300)]
    document = " ".join(words[:150]) + " the hidden treasure " + " ".join(words[150:]) + "."
    evidence = find_evidence(document, "hidden treasure")
    quote = evidence.quote(document)
    assert "hidden treasure" in quote
    assert len(quote) <= MAX_QUOTE_CHARACTERS
    assert len(quote) > MAX_QUOTE_CHARACTERS - 20  # it uses the room it has
    assert evidence.quote_start <= evidence.start < evidence.end <= evidence.quote_end
    # Whole words at both ends.
    assert document[evidence.quote_start - 1] == " " and document[evidence.quote_end] == " "
    # Near the start of a sentence, the unused room goes to the other side.
    start, end = quote_span(document, document.index("word2 "), document.index("word2 ") + 5)
    assert start == 0 and end - start > MAX_QUOTE_CHARACTERS - 20


def test_the_quote_of_a_very_long_answer_is_the_answer():
    document = "x " * 10 + " ".join(f"w{n}" for n in range(200)) + " end."
    answer = " ".join(f"w{n}" for n in range(200))
    evidence = find_evidence(document, answer)
    assert (evidence.quote_start, evidence.quote_end) == (evidence.start, evidence.end)


def test_a_long_document_is_quick():
    # A generous bound against blow-ups (the measured figures are in bench/evidence.py): ~14k words.
    document = "\n\n".join(f"Paragraph {n}. " + FILLER for n in range(140))
    document += "\n\nThe Committee of Independent Experts met in Brussels."
    start = time.perf_counter()
    for n in range(20):
        assert locate_answer(document, "the Committee of Experts", f"who met? {n}") is not None
        assert (
            locate_answer(document, "sentence number talks about nothing in particular", "what?") is not None
        )
        assert locate_answer(document, "particular nothing in Lyon sentence") is None
    assert time.perf_counter() - start < 10


# --- the measured goals, on whole SQuAD 2.0 dev articles ---------------------------------------------------


def _bench():
    """bench/evidence.py as a module: the measurement's documents and perturbations, defined once."""
    name = "bench_evidence"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "evidence.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def squad_measures():
    bench = _bench()
    articles = bench.squad_articles(shared_file("squad2/dev-v2.0.reconstructed.json"))
    assert len(articles) == 35 and max(len(a.document) for a in articles) > 60_000
    return bench.measure(articles, every=3)


def test_squad_documents_have_gold_offsets():
    bench = _bench()
    articles = bench.squad_articles(shared_file("squad2/dev-v2.0.reconstructed.json"))
    for article in articles:
        for gold in article.answers:
            assert article.document[gold.start : gold.end] == gold.text


def test_squad_exact_answers_are_found(squad_measures):
    assert squad_measures["questions"] >= 1000
    assert squad_measures["exact"] >= 0.99


def test_squad_the_question_picks_the_gold_occurrence(squad_measures):
    assert squad_measures["gold occurrence (with question)"] >= 0.90
    # The question is what does it: the first occurrence alone is far from that.
    assert squad_measures["gold occurrence (first one, no question)"] < 0.85


def test_squad_reworded_answers_are_found(squad_measures):
    assert squad_measures["reworded, at the gold occurrence"] >= 0.90
    for kind, rate in squad_measures["reworded by kind"].items():
        assert rate >= 0.90, kind


def test_squad_answers_from_another_article_are_none(squad_measures):
    assert squad_measures["other article, counted"] >= 1000
    assert squad_measures["other article -> None"] >= 0.90
    assert squad_measures["other article -> None (answers of 2+ words)"] >= 0.90


def test_squad_calls_are_fast(squad_measures):
    # Generous bounds (the goal is < 50 ms per call; measured figures: bench/evidence.py).
    assert squad_measures["ms per call: mean"] < 50
    assert squad_measures["ms first call per document (index built): max"] < 2000


def test_normalization_is_squad_style():
    assert normalize_words("The  Duke, of an Épée!") == ["duke", "of", "epee"]
