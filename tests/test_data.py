"""Dataset converters on small files written in the official formats, and on the shared copies."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, shared_file
from fixtures.official_formats import (
    coqa_file,
    coqa_story,
    squad_file,
    tryocoqa_conversation,
    tryocoqa_file,
    write_json,
)

from cqa.format import NO_ANSWER
from training.data import (
    DataFormatError,
    DataUnavailableError,
    coqa_hub_examples,
    download_tryocoqa,
    load_examples,
    model_input,
    split_conversations,
    squad_hub_example,
    tryocoqa_validation_ids,
    write_smoke_datasets,
)

KEYS = {"id", "context", "history", "question", "answers"}
CONTEXT = "Anna lives in Paris. She rides a red bike."


def _run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "training.data", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


# --- SQuAD 2.0 ------------------------------------------------------------------------------------


@pytest.fixture
def squad_path(tmp_path):
    return squad_file(
        tmp_path / "dev-v2.0.json",
        [
            (
                CONTEXT,
                [
                    ("q1", "Where does Anna live?", ["Paris", "in Paris"]),
                    ("q2", "How old is Anna?", []),
                ],
            )
        ],
    )


def test_squad_answerable_and_impossible(squad_path):
    answerable, impossible = load_examples("squad_v2", squad_path)
    assert answerable == {
        "id": "q1",
        "context": CONTEXT,
        "history": [],
        "question": "Where does Anna live?",
        "answers": ["Paris", "in Paris"],
    }
    assert model_input(answerable) == f"{CONTEXT} || <Q> Where does Anna live? <A> "
    assert impossible["id"] == "q2"
    assert impossible["answers"][0] == NO_ANSWER
    assert impossible["answers"] == [NO_ANSWER]


def test_squad_custom_no_answer(squad_path):
    examples = load_examples("squad_v2", squad_path, no_answer="unanswerable")
    assert [e["answers"][0] for e in examples] == ["Paris", "unanswerable"]


def test_squad_hub_rows_match_the_official_file(squad_path):
    rows = [
        {
            "id": "q1",
            "title": "Test_article",
            "context": CONTEXT,
            "question": "Where does Anna live?",
            "answers": {"text": ["Paris", "in Paris"], "answer_start": [14, 11]},
        },
        {
            "id": "q2",
            "title": "Test_article",
            "context": CONTEXT,
            "question": "How old is Anna?",
            "answers": {"text": [], "answer_start": []},
        },
    ]
    assert [squad_hub_example(row) for row in rows] == load_examples("squad_v2", squad_path)


# --- CoQA -----------------------------------------------------------------------------------------


@pytest.fixture
def coqa_path(tmp_path):
    turns = [
        ("Who?", "Anna"),
        ("Where?", "Paris"),
        ("Her age?", "unknown"),
        ("What does she ride?", "a red bike"),
    ]
    return coqa_file(
        tmp_path / "coqa-dev.json",
        [coqa_story("s1", CONTEXT, turns, additional=[["Anna", "in Paris", "unknown", "bike"]])],
    )


def test_coqa_history_window_holds_the_two_previous_turns(coqa_path):
    examples = load_examples("coqa", coqa_path)
    assert [e["id"] for e in examples] == ["s1_1", "s1_2", "s1_3", "s1_4"]
    assert model_input(examples[0]) == f"{CONTEXT} || <Q> Who? <A> "
    assert model_input(examples[1]) == f"{CONTEXT} || <Q1> Who? <A1> Anna <Q> Where? <A> "
    # Turn 4 sees turns 2 and 3 only; turn 3's "unknown" appears as the no-answer text.
    assert model_input(examples[3]) == (
        f"{CONTEXT} || <Q2> Where? <A2> Paris <Q1> Her age? <A1> {NO_ANSWER} <Q> What does she ride? <A> "
    )


def test_coqa_turns_is_configurable(coqa_path):
    last = load_examples("coqa", coqa_path)[3]
    assert model_input(last, turns=3).startswith(f"{CONTEXT} || <Q3> Who? <A3> Anna <Q2> Where?")
    assert model_input(last, turns=0) == f"{CONTEXT} || <Q> What does she ride? <A> "


def test_coqa_targets_unknown_and_additional_answers(coqa_path):
    examples = load_examples("coqa", coqa_path)
    assert [e["answers"][0] for e in examples] == ["Anna", "Paris", NO_ANSWER, "a red bike"]
    assert examples[1]["answers"] == ["Paris", "in Paris"]
    assert examples[2]["answers"] == [NO_ANSWER, NO_ANSWER]
    assert examples[3]["answers"] == ["a red bike", "bike"]


def test_coqa_hub_row_mapping():
    row = {
        "source": "mctest",
        "story": CONTEXT,
        "questions": ["Who?", "Her age?", "Where?"],
        "answers": {
            "input_text": ["Anna", "unknown", "Paris"],
            "answer_start": [0, -1, 14],
            "answer_end": [4, -1, 19],
        },
    }
    examples = coqa_hub_examples(row, "validation-7", no_answer="n/a")
    assert [e["id"] for e in examples] == ["validation-7_1", "validation-7_2", "validation-7_3"]
    assert [e["answers"][0] for e in examples] == ["Anna", "n/a", "Paris"]
    assert (
        model_input(examples[2]) == f"{CONTEXT} || <Q2> Who? <A2> Anna <Q1> Her age? <A1> n/a <Q> Where? <A> "
    )


# --- TryoCoQA -------------------------------------------------------------------------------------


def test_tryocoqa_split_is_by_conversation_deterministic_and_85_15(tmp_path):
    path = tryocoqa_file(tmp_path / "tryocoqa_v1.json", n_conversations=15)
    train = load_examples("tryocoqa", path, "train")
    validation = load_examples("tryocoqa", path, "validation")
    train_ids = {e["id"].split("_")[0] for e in train}
    validation_ids = {e["id"].split("_")[0] for e in validation}
    assert not train_ids & validation_ids
    assert train_ids | validation_ids == {str(c) for c in range(15)}
    assert len(validation_ids) == 2  # round(15 * 0.15)
    assert load_examples("tryocoqa", path, "validation") == validation  # same seed, same split
    other_seeds = {
        frozenset(e["id"].split("_")[0] for e in load_examples("tryocoqa", path, "validation", split_seed=s))
        for s in range(5)
    }
    assert len(other_seeds) > 1  # the split seed matters
    assert validation_ids == set(tryocoqa_validation_ids(path))  # what results.json records


def test_tryocoqa_split_is_the_same_for_every_training_seed(tmp_path):
    """A seed sweep (seed 42, 0, 1) must compare models on one validation set: only split_seed moves it."""
    from training.data import load_dataset_examples
    from training.recipe import load_recipe

    path = tryocoqa_file(tmp_path / "tryocoqa_v1.json", n_conversations=15)
    recipe = Path(__file__).resolve().parents[1] / "training" / "recipes" / "smoke_stage2.yaml"
    spec = {"name": "tryocoqa", "file": str(path), "split": "validation"}

    def validation_conversations(**overrides) -> frozenset[str]:
        _, data, _ = load_recipe(recipe, eval_datasets=[spec], **overrides)
        examples = load_dataset_examples(data.eval_datasets[0], data.no_answer, data.split_seed)
        return frozenset(e["id"].split("_")[0] for e in examples)

    assert len({validation_conversations(seed=seed) for seed in (42, 0, 1)}) == 1
    assert validation_conversations(seed=0) == validation_conversations()
    assert validation_conversations(split_seed=1) != validation_conversations(split_seed=0)


def test_a_recorded_split_is_used_as_recorded(tmp_path):
    path = tryocoqa_file(tmp_path / "tryocoqa_v1.json", n_conversations=15)
    validation = load_examples("tryocoqa", path, "validation", validation_ids=["3", "11"])
    train = load_examples("tryocoqa", path, "train", validation_ids=["3", "11"])
    assert {e["id"].split("_")[0] for e in validation} == {"3", "11"}
    assert {e["id"].split("_")[0] for e in train} == {str(c) for c in range(15)} - {"3", "11"}
    with pytest.raises(DataFormatError, match=r"\['99'\] are not in this TryoCoQA file"):
        load_examples("tryocoqa", path, "validation", validation_ids=["3", "99"])


def test_split_conversations_sizes():
    conversations = [{"conversation_id": str(i)} for i in range(8)]
    validation = split_conversations(conversations, "validation", seed=0)
    train = split_conversations(conversations, "train", seed=0)
    assert (len(train), len(validation)) == (7, 1)
    with pytest.raises(ValueError, match="unknown split"):
        split_conversations(conversations, "test")


def test_tryocoqa_examples(tmp_path):
    path = tryocoqa_file(tmp_path / "tryocoqa_v1.json", n_conversations=3)
    examples = [
        e for s in ("train", "validation") for e in load_examples("tryocoqa", path, s, no_answer="n/a")
    ]
    by_id = {e["id"]: e for e in examples}
    assert len(by_id) == 3 + 4 + 5
    first = by_id["0_1"]  # turn indexes count from 1
    assert (
        model_input(first)
        == "Post 0. The answer to question 0 is word0. || <Q> Conversation 0 question 0? <A> "
    )
    assert first["answers"][0] == "word0 0"
    assert by_id["0_3"]["answers"][0] == "n/a"  # TryoCoQA's "I can't answer that." -> the configured text
    assert "<A1> n/a <Q> Conversation 1 question 3?" in model_input(by_id["1_4"])


def test_tryocoqa_no_answer_variants_get_the_configured_target(tmp_path):
    # The real file also writes "I can't answer that" without the period (conversation 12).
    story = "Post. Anna wrote it in Paris."
    turns = [
        ("Who wrote it?", "Anna"),
        ("When?", "I can't answer that"),
        ("Why?", "  i can't answer THAT!  "),
        ("Where?", "Paris"),
        ("Can you answer that?", "I can't answer that one, sorry."),  # an answer, not the convention
    ]
    conversations = [tryocoqa_conversation(str(c), "0", story, turns) for c in range(2)]
    path = write_json(tmp_path / "tryocoqa_v1.json", conversations)
    examples = load_examples("tryocoqa", path, "train", no_answer="n/a") + load_examples(
        "tryocoqa", path, "validation", no_answer="n/a"
    )
    assert len(examples) == 10
    for example in examples:
        turn = int(example["id"].split("_")[1])
        expected = "n/a" if turn in (2, 3) else turns[turn - 1][1]
        assert example["answers"][0] == expected and example["answers"] == [expected], example
    fourth = next(e for e in examples if e["id"].endswith("_4"))
    assert "<Q2> When? <A2> n/a <Q1> Why? <A1> n/a <Q> Where? <A> " in model_input(fourth)  # history too


def test_tryocoqa_is_downloaded_once_and_cached(tmp_path):
    source = tryocoqa_file(tmp_path / "tryocoqa_v1.json", n_conversations=4)
    cache = tmp_path / "cache"
    cached = download_tryocoqa(cache, url=source.as_uri())
    assert cached == cache / "tryocoqa_v1.json"
    assert json.loads(cached.read_text()) == json.loads(source.read_text())
    source.unlink()
    assert download_tryocoqa(cache, url=source.as_uri()) == cached  # no second download
    with pytest.raises(DataUnavailableError, match="pass it with --file"):
        download_tryocoqa(tmp_path / "empty-cache", url=source.as_uri())


def test_tryocoqa_without_a_file_uses_the_cache(tmp_path, monkeypatch):
    tryocoqa_file(tmp_path / "tryocoqa_v1.json", n_conversations=4)
    monkeypatch.setenv("BLOGPOST_CQA_CACHE", str(tmp_path))
    assert len(load_examples("tryocoqa", None, "validation")) > 0


# --- Malformed input ------------------------------------------------------------------------------


def test_malformed_squad_names_file_record_and_field(tmp_path, squad_path):
    content = json.loads(squad_path.read_text())
    del content["data"][0]["paragraphs"][0]["qas"][1]["question"]
    bad = write_json(tmp_path / "bad-squad.json", content)
    with pytest.raises(DataFormatError) as error:
        load_examples("squad_v2", bad)
    message = str(error.value)
    assert "bad-squad.json" in message
    assert "question #1 (id q2)" in message
    assert "missing field 'question'" in message


def test_malformed_coqa_names_story_and_field(tmp_path, coqa_path):
    content = json.loads(coqa_path.read_text())
    del content["data"][0]["answers"][2]["input_text"]
    bad = write_json(tmp_path / "bad-coqa.json", content)
    with pytest.raises(
        DataFormatError, match=r"bad-coqa\.json: story #0 \(id s1\), answer #2: missing field 'input_text'"
    ):
        load_examples("coqa", bad)


def test_malformed_tryocoqa_names_conversation_and_field(tmp_path):
    path = tryocoqa_file(tmp_path / "tryocoqa_v1.json", n_conversations=15)
    content = json.loads(path.read_text())
    for conversation in content:
        del conversation["story"]
    write_json(path, content)
    with pytest.raises(
        DataFormatError,
        match=r"tryocoqa_v1\.json: conversation #\d+ \(conversation_id \d+\): missing field 'story'",
    ):
        load_examples("tryocoqa", path)


def test_wrong_file_and_broken_json(tmp_path):
    not_squad = write_json(tmp_path / "list.json", [1, 2])
    with pytest.raises(DataFormatError, match=r"list\.json.*expected a JSON object"):
        load_examples("squad_v2", not_squad)
    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [')
    with pytest.raises(DataFormatError, match=r"broken\.json is not valid JSON"):
        load_examples("coqa", broken)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.json"):
        load_examples("coqa", tmp_path / "nowhere.json")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_examples("quac", broken)


# --- Command line ---------------------------------------------------------------------------------


def test_cli_writes_jsonl_with_exactly_the_structured_keys(tmp_path, coqa_path):
    from training.data import read_jsonl_examples

    out = tmp_path / "out" / "coqa.jsonl"
    result = _run_cli("prepare", "--dataset", "coqa", "--file", str(coqa_path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Wrote 4 examples (1 unanswerable)" in result.stdout
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4
    assert all(set(row) == KEYS for row in rows)
    assert rows == load_examples("coqa", coqa_path)
    assert read_jsonl_examples(out) == rows  # what a recipe's {name: jsonl, file: ...} reads back


def test_a_jsonl_file_of_another_shape_says_what_a_line_needs(tmp_path):
    from training.data import read_jsonl_examples

    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"input": "c || <Q> q <A> ", "target": "a"}) + "\n")
    with pytest.raises(DataFormatError, match=r'old.jsonl:1: each line needs "context", "question"'):
        read_jsonl_examples(old)
    bare = tmp_path / "bare.jsonl"
    bare.write_text(
        json.dumps({"context": "Anna lives in Paris.", "question": "Where?", "answers": ["Paris"]})
    )
    (example,) = read_jsonl_examples(bare)
    assert example == {
        "id": "bare-1",
        "context": "Anna lives in Paris.",
        "history": [],
        "question": "Where?",
        "answers": ["Paris"],
    }


def test_cli_reports_bad_input_without_traceback(tmp_path):
    bad = write_json(tmp_path / "bad.json", {"data": [{"paragraphs": [{"qas": []}]}]})
    result = _run_cli(
        "prepare", "--dataset", "squad_v2", "--file", str(bad), "--out", str(tmp_path / "o.jsonl")
    )
    assert result.returncode == 2
    assert "bad.json: article #0, paragraph #0: missing field 'context'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_without_hub_access_says_to_pass_a_file(tmp_path):
    result = _run_cli(
        "prepare",
        "--dataset",
        "squad_v2",
        "--out",
        str(tmp_path / "o.jsonl"),
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 2
    assert "could not load rajpurkar/squad_v2" in result.stderr
    assert "--file" in result.stderr
    assert "Traceback" not in result.stderr


# --- Smoke datasets -------------------------------------------------------------------------------


def test_smoke_datasets_are_small_learnable_and_official(tmp_path):
    paths = write_smoke_datasets(tmp_path)
    assert set(paths) == {"squad_v2", "squad_v2_dev", "coqa", "coqa_dev", "tryocoqa"}
    for key in ("squad_v2", "squad_v2_dev", "coqa", "coqa_dev"):
        examples = load_examples(key.removesuffix("_dev"), paths[key])
        unanswerable = [e for e in examples if e["answers"][0] == NO_ANSWER]
        assert 10 <= len(examples) <= 40, key
        assert 1 <= len(unanswerable) < len(examples) / 3, key
        for e in examples:
            context = model_input(e).split(" || ")[0]
            assert e["answers"][0] == NO_ANSWER or e["answers"][0] in context, (key, e)  # answers are spans
    squad = json.loads(paths["squad_v2"].read_text())
    for qa in squad["data"][0]["paragraphs"][0]["qas"]:
        for answer in qa["answers"]:
            context = squad["data"][0]["paragraphs"][0]["context"]
            assert context[answer["answer_start"] :].startswith(answer["text"])

    train = load_examples("tryocoqa", paths["tryocoqa"], "train")
    validation = load_examples("tryocoqa", paths["tryocoqa"], "validation")
    assert len(json.loads(paths["tryocoqa"].read_text())) == 8
    assert len({e["id"].split("_")[0] for e in validation}) == 1
    assert 20 <= len(train) + len(validation) <= 40
    assert any(e["answers"][0] == NO_ANSWER for e in train)


def test_smoke_cli(tmp_path):
    result = _run_cli("smoke", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert len(list(Path(tmp_path).glob("*.json"))) == 5


# --- The shared copies of the real datasets (skipped without ../shared/data) ----------------------


def test_shared_squad_dev_counts():
    examples = load_examples("squad_v2", shared_file("squad2/dev-v2.0.reconstructed.json"))
    assert len(examples) == 11873
    assert sum(e["answers"][0] == NO_ANSWER for e in examples) == 5945
    assert len({e["id"] for e in examples}) == 11873
    assert examples[0]["id"] == "56ddde6b9a695914005b9628"  # official question ids
    assert model_input(examples[0]).endswith(" || <Q> In what country is Normandy located? <A> ")


def test_shared_squad_train_counts():
    examples = load_examples("squad_v2", shared_file("squad2/train-v2.0.first10articles.json"))
    assert len(examples) == 4719
    assert sum(e["answers"][0] == NO_ANSWER for e in examples) == 348


def test_shared_tryocoqa_split():
    path = shared_file("tryocoqa/tryocoqa_v1.json")
    train = load_examples("tryocoqa", path, "train")
    validation = load_examples("tryocoqa", path, "validation")
    assert len(train) + len(validation) == 145
    train_conversations = {e["id"].split("_")[0] for e in train}
    validation_conversations = {e["id"].split("_")[0] for e in validation}
    assert len(validation_conversations) == 2
    assert len(train_conversations) == 13
    assert not train_conversations & validation_conversations
    # 5 unanswerable turns: four "I can't answer that." and one without the period
    assert sum(e["answers"][0] == NO_ANSWER for e in train + validation) == 5
