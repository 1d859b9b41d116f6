"""Scorer parity with the official SQuAD 2.0 / CoQA scripts on hand-computed cases."""

import json
import random

import pytest
from conftest import shared_file
from fixtures.official_formats import coqa_file, coqa_story, squad_file, write_json

from cqa.format import NO_ANSWER
from training.data import load_examples, write_smoke_datasets
from training.metrics import (
    compute_exact,
    compute_f1,
    coqa_evaluate,
    coqa_turn_score,
    main,
    normalize_answer,
    official_predictions,
    score,
    squad_v2_evaluate,
    to_official_answer,
)


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Cat, sat!", "cat sat"),
        ("an apple a day", "apple day"),
        ("  Theater   of the\tabsurd. ", "theater of absurd"),  # "the" only as a whole word
        ("A", ""),
    ],
)
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_token_f1_hand_computed():
    # gold {cat, sat}, prediction {cat, sat, down}: precision 2/3, recall 1 -> F1 0.8
    assert compute_f1("the Cat sat", "cat sat down") == pytest.approx(0.8)
    assert compute_f1("red bike", "blue car") == 0.0


def test_exact_ignores_case_articles_and_punctuation():
    assert compute_exact("The cat.", "cat") == 1
    assert compute_exact("a cat", "cats") == 0


def test_empty_gold_is_no_answer():
    assert compute_f1("", "") == 1.0
    assert compute_exact("", "") == 1
    assert compute_f1("", "Paris") == 0.0
    assert compute_f1("Paris", "") == 0.0
    assert compute_f1("the", "") == 1.0  # normalizes to nothing, like the official script


def test_score_takes_the_max_over_golds():
    result = score(["Paris", "bike", ""], [["Rome", "in Paris"], ["red bike"], []])
    # F1: max(0, 2/3) = 2/3; 2/3; empty vs no gold = 1. Exact: 0, 0, 1.
    assert result["f1"] == pytest.approx(100 * (2 / 3 + 2 / 3 + 1) / 3)
    assert result["exact"] == pytest.approx(100 / 3)


def test_a_partial_no_answer_scores_zero_as_in_the_official_scorers(tmp_path, capsys):
    """The trainer's F1 must be the official one: "I can't answer" is not half of "I can't answer that."
    (token F1 against the text: 85.7) but a real answer against a no-answer gold: 0."""
    assert compute_f1(NO_ANSWER, "I can't answer") == pytest.approx(6 / 7)  # the text, token by token
    assert score(["I can't answer"], [[NO_ANSWER]]) == {"exact": 0.0, "f1": 0.0}
    assert score([NO_ANSWER], [[NO_ANSWER]]) == {"exact": 100.0, "f1": 100.0}
    assert score(["i can't answer that"], [[NO_ANSWER]])["exact"] == 100.0  # normalized, as mapped back
    assert score([NO_ANSWER], [["Paris"]])["f1"] == 0.0
    assert score(["I can't answer"], [[NO_ANSWER]], no_answer=None)["f1"] == pytest.approx(600 / 7)
    # the same prediction through the official SQuAD 2.0 scorer
    data = squad_file(tmp_path / "dev.json", [("Anna lives in Paris.", [("q1", "How old is Anna?", [])])])
    predictions = write_json(tmp_path / "pred.json", {"q1": "I can't answer"})
    assert main(["squad_v2", str(data), str(predictions)])["f1"] == 0.0
    capsys.readouterr()


def test_score_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score(["a", "b"], [["a"]])


def test_coqa_leave_one_out_three_golds():
    # F1 of "Paris" against each gold: 1, 2/3, 0. Leaving each out: 2/3, 1, 1 -> 8/9.
    # Exact against each: 1, 0, 0. Leaving each out: 0, 1, 1 -> 2/3.
    turn = coqa_turn_score(["Paris", "in Paris", "Rome"], "Paris")
    assert turn["f1"] == pytest.approx(8 / 9)
    assert turn["em"] == pytest.approx(2 / 3)


def test_coqa_leave_one_out_four_golds():
    # F1 of "bike": 2/3, 2/3, 1, 0. Leaving each out: 1, 1, 2/3, 1 -> 11/12. Exact: 1, 1, 0, 1 -> 3/4.
    turn = coqa_turn_score(["red bike", "a red bike", "bike", "blue car"], "bike")
    assert turn["f1"] == pytest.approx(11 / 12)
    assert turn["em"] == pytest.approx(3 / 4)


def test_coqa_single_gold_is_plain_score():
    assert coqa_turn_score(["in Paris"], "Paris") == {"em": 0.0, "f1": pytest.approx(2 / 3)}


def test_to_official_answer():
    assert to_official_answer(NO_ANSWER, "squad_v2") == ""
    assert to_official_answer("I can't answer that", "squad_v2") == ""  # same normalized text
    assert to_official_answer(NO_ANSWER, "coqa") == "unknown"
    assert to_official_answer(NO_ANSWER, "tryocoqa") == NO_ANSWER
    assert to_official_answer("Paris", "squad_v2") == "Paris"
    assert to_official_answer("No idea", "coqa", no_answer="no idea.") == "unknown"
    with pytest.raises(ValueError, match="unknown dataset"):
        to_official_answer(NO_ANSWER, "quac")


def test_official_predictions_formats():
    assert official_predictions("squad_v2", ["q1", "q2"], ["Paris", NO_ANSWER]) == {"q1": "Paris", "q2": ""}
    assert official_predictions("coqa", ["3dr2_1", "3dr2_12"], ["yes", NO_ANSWER]) == [
        {"id": "3dr2", "turn_id": 1, "answer": "yes"},
        {"id": "3dr2", "turn_id": 12, "answer": "unknown"},
    ]


def _tiny_squad(tmp_path):
    return squad_file(
        tmp_path / "dev.json",
        [
            (
                "Anna lives in the city of Paris and rides a red bike.",
                [
                    ("q1", "Where does Anna live?", ["Paris", "the city of Paris"]),
                    ("q2", "What does Anna ride?", ["red bike"]),
                    ("q3", "How old is Anna?", []),
                    ("q4", "Where was Anna born?", []),
                ],
            )
        ],
    )


def test_squad_v2_cli_hand_computed(tmp_path, capsys):
    data = _tiny_squad(tmp_path)
    # q1 exact (punctuation), q2 F1 2/3, q3 correct no-answer, q4 wrong answer to an unanswerable one.
    predictions = write_json(tmp_path / "pred.json", {"q1": "Paris.", "q2": "bike", "q3": "", "q4": "Rome"})
    result = main(["squad_v2", str(data), str(predictions)])
    expected = {
        "exact": 50.0,
        "f1": 100 * (1 + 2 / 3 + 1 + 0) / 4,
        "total": 4,
        "HasAns_exact": 50.0,
        "HasAns_f1": 100 * (1 + 2 / 3) / 2,
        "HasAns_total": 2,
        "NoAns_exact": 50.0,
        "NoAns_f1": 50.0,
        "NoAns_total": 2,
    }
    printed = json.loads(capsys.readouterr().out)
    assert list(printed) == list(expected)  # the official script's keys, in its order
    assert printed == pytest.approx(expected)
    assert result == printed


def test_squad_v2_missing_predictions_count_as_wrong(tmp_path, capsys):
    data = _tiny_squad(tmp_path)
    predictions = write_json(tmp_path / "pred.json", {"q1": "Paris", "q3": ""})
    result = main(["squad_v2", str(data), str(predictions)])
    assert result["total"] == 4
    assert result["exact"] == 50.0
    assert "2 of 4 questions have no prediction" in capsys.readouterr().err


def test_squad_v2_cli_bad_file_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SystemExit, match=r"broken\.json is not valid JSON"):
        main(["squad_v2", str(broken), str(broken)])


def test_coqa_cli_hand_computed(tmp_path, capsys):
    data = coqa_file(
        tmp_path / "coqa-dev.json",
        [
            coqa_story(
                "s1",
                "Anna lives in Paris.",
                [("Where does Anna live?", "Paris"), ("How old is she?", "unknown")],
                source="mctest",
                additional=[["in Paris", "unknown"], ["Rome", "unknown"]],
            ),
            coqa_story("s2", "Ben has a blue car.", [("What color is it?", "blue")], source="reddit"),
        ],
    )
    # s1 turn 1: em 2/3, f1 8/9 (leave-one-out); s1 turn 2: 1, 1; s2 turn 1: missing -> 0.
    predictions = write_json(
        tmp_path / "pred.json",
        [{"id": "s1", "turn_id": 1, "answer": "Paris"}, {"id": "s1", "turn_id": 2, "answer": "unknown"}],
    )
    result = main(["coqa", str(data), str(predictions)])
    assert json.loads(capsys.readouterr().out) == result
    assert result["children_stories"] == {"em": 83.3, "f1": 94.4, "turns": 2}
    assert result["reddit"] == {"em": 0.0, "f1": 0.0, "turns": 1}
    assert result["in_domain"] == result["children_stories"]
    assert result["out_domain"] == result["reddit"]
    assert result["overall"] == {"em": 55.6, "f1": 63.0, "turns": 3}
    assert result["news"] == {"em": 0.0, "f1": 0.0, "turns": 0}
    assert set(result) == {
        "children_stories",
        "literature",
        "mid-high_school",
        "news",
        "wikipedia",
        "reddit",
        "science",
        "in_domain",
        "out_domain",
        "overall",
    }


def test_coqa_format_files_of_other_sources_are_scored_under_their_own_name(tmp_path, capsys):
    data = coqa_file(
        tmp_path / "tryocoqa-as-coqa.json",
        [
            coqa_story(
                "t1", "Ana wrote a post.", [("Who wrote it?", "Ana"), ("When?", "unknown")], "tryocoqa"
            ),
            coqa_story("s2", "Ben has a blue car.", [("What color is it?", "blue")], source="reddit"),
        ],
    )
    predictions = write_json(
        tmp_path / "pred.json",
        [
            {"id": "t1", "turn_id": 1, "answer": "Ana"},
            {"id": "t1", "turn_id": 2, "answer": "yesterday"},
            {"id": "s2", "turn_id": 1, "answer": "blue"},
        ],
    )
    result = main(["coqa", str(data), str(predictions)])
    capsys.readouterr()
    assert result["tryocoqa"] == {"em": 50.0, "f1": 50.0, "turns": 2}
    assert result["out_domain"] == {"em": 100.0, "f1": 100.0, "turns": 1}
    assert result["in_domain"]["turns"] == 0
    assert result["overall"] == {"em": 66.7, "f1": 66.7, "turns": 3}  # counted in the overall figure


def test_gold_predictions_score_100_on_smoke_dev_files(tmp_path):
    paths = write_smoke_datasets(tmp_path)
    squad = json.loads(paths["squad_v2_dev"].read_text())["data"]
    golds = {
        qa["id"]: (qa["answers"][0]["text"] if qa["answers"] else "")
        for article in squad
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    }
    result = squad_v2_evaluate(squad, golds)
    assert (result["exact"], result["f1"], result["total"]) == (100.0, 100.0, len(golds))

    coqa = json.loads(paths["coqa_dev"].read_text())["data"]
    predictions = [
        {"id": story["id"], "turn_id": answer["turn_id"], "answer": answer["input_text"]}
        for story in coqa
        for answer in story["answers"]
    ]
    assert coqa_evaluate(coqa, predictions)["overall"] == {
        "em": 100.0,
        "f1": 100.0,
        "turns": len(predictions),
    }


def test_model_targets_mapped_back_score_100_officially(tmp_path):
    # The training examples' targets, through official_predictions, are perfect answers for the
    # official scorers: the no-answer round trip works.
    paths = write_smoke_datasets(tmp_path)
    for dataset, key in (("squad_v2", "squad_v2_dev"), ("coqa", "coqa_dev")):
        examples = load_examples(dataset, paths[key])
        predictions = official_predictions(
            dataset, [e["id"] for e in examples], [e["answers"][0] for e in examples]
        )
        data = json.loads(paths[key].read_text())["data"]
        if dataset == "squad_v2":
            assert squad_v2_evaluate(data, predictions)["f1"] == 100.0
        else:
            assert coqa_evaluate(data, predictions)["overall"]["f1"] == 100.0


def test_shared_squad_dev_gold_and_empty_predictions():
    dev = shared_file("squad2/dev-v2.0.reconstructed.json")
    data = json.loads(dev.read_text())["data"]
    questions = [qa for article in data for paragraph in article["paragraphs"] for qa in paragraph["qas"]]

    gold = {qa["id"]: (qa["answers"][0]["text"] if qa["answers"] else "") for qa in questions}
    result = squad_v2_evaluate(data, gold)
    assert (result["exact"], result["f1"], result["total"]) == (100.0, 100.0, 11873)

    empty = squad_v2_evaluate(data, {qa["id"]: "" for qa in questions})
    assert empty["NoAns_exact"] == 100.0
    assert empty["NoAns_total"] == 5945
    assert empty["HasAns_exact"] == 0.0
    assert empty["exact"] == pytest.approx(5945 / 11873 * 100)

    examples = load_examples("squad_v2", dev)
    assert score([e["answers"][0] for e in examples], [e["answers"] for e in examples]) == {
        "exact": 100.0,
        "f1": 100.0,
    }


def _parity_squad_file(path) -> dict:
    """SQuAD 2.0 data of its own for the parity test: the smoke files' articles (span answers, unanswerable
    questions with plausible answers) and a paragraph whose questions have several, noisy gold answers."""
    smoke = write_smoke_datasets(path.parent / "smoke")
    articles = [json.loads(smoke[key].read_text())["data"][0] for key in ("squad_v2", "squad_v2_dev")]
    context = (
        "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
        "a region in France. They descended from Norse raiders and pirates from Denmark, Iceland and Norway."
    )
    qas = [
        ("n1", "In what country is Normandy located?", ["France", "France", "a region in France"]),
        ("n2", "When were the Normans in Normandy?", ["10th and 11th centuries", "in the 10th and 11th"]),
        ("n3", "From which countries did the Norse originate?", ["Denmark, Iceland and Norway", "Norway"]),
        ("n4", "Who gave their name to Normandy in the 1000's?", []),
        ("n5", "What is France a region of?", []),
    ]
    extra = json.loads(squad_file(path, [(context, qas)]).read_text())["data"][0]
    content = {"version": "v2.0", "data": [*articles, extra]}
    write_json(path, content)
    return content


@pytest.mark.slow  # imports transformers (~4 s of CPU)
def test_squad_v2_parity_with_transformers_copy_of_the_official_script(tmp_path):
    # transformers ships the official SQuAD 2.0 scoring (squad_metrics); compare on noisy predictions.
    from transformers.data.metrics.squad_metrics import squad_evaluate
    from transformers.data.processors.squad import SquadV2Processor

    content = _parity_squad_file(tmp_path / "dev.json")
    rng = random.Random(0)
    predictions = {}
    for article in content["data"]:
        for paragraph in article["paragraphs"]:
            words = paragraph["context"].split()
            for qa in paragraph["qas"]:
                gold = rng.choice(
                    [a["text"] for a in qa["answers"] + qa.get("plausible_answers", [])] or [""]
                )
                candidates = [
                    gold,
                    "",
                    f"{gold} {rng.choice(words)}",
                    " ".join(gold.split()[1:]),
                    rng.choice(words),
                ]
                predictions[qa["id"]] = rng.choice(candidates)

    ours = squad_v2_evaluate(content["data"], predictions)
    reference = squad_evaluate(SquadV2Processor().get_dev_examples(str(tmp_path), "dev.json"), predictions)
    assert 0 < ours["f1"] < 100
    assert ours == pytest.approx({key: reference[key] for key in ours})
