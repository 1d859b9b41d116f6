"""SQuAD 2.0, CoQA and TryoCoQA as structured training examples, and the one function that makes
them model inputs.

    python -m training.data prepare --dataset coqa --file coqa-dev-v1.0.json --out coqa-dev.jsonl
    python -m training.data prepare --dataset squad_v2 --split validation --out dev.jsonl  # Hub
    python -m training.data smoke OUT_DIR   # the tiny built-in datasets used by `--smoke` and tests

Every example is a dict ``{"id", "context", "history", "question", "answers"}``:

- ``history``: the conversation's previous GOLD question/answer pairs, oldest first, all of them (the
  model input keeps the last ``turns``, default 2, when it is built). SQuAD questions have none.
- ``answers``: every gold answer, the one to learn first (SQuAD: the first answer text; CoQA: the
  free-form ``input_text``, its dev files adding ``additional_answers``; TryoCoQA: its answer).
- Unanswerable questions (SQuAD 2.0 ``is_impossible`` or empty answers, CoQA "unknown", TryoCoQA
  "I can't answer that.") all get ONE no-answer text, ``no_answer`` (default ``cqa.format.NO_ANSWER``),
  as answer and in later turns' history. ``training.metrics.to_official_answer`` maps it back for the
  official scorers.

Examples stay structured until ``fit_example`` builds the model input and cuts it to the length limit
with ``cqa.format.fit_model_input`` (the app's rule: the context loses its end, never the dialogue);
``preprocess`` is that step for a batch of a ``datasets.Dataset.map``, as the trainer sees it, and
``training.evaluation`` uses ``fit_example`` itself. ``prepare`` writes the structured examples as JSONL,
which a recipe reads back as ``{name: jsonl, file: ...}``.

Ids: SQuAD: the official question id. CoQA: ``f"{story_id}_{turn_id}"`` (Hub rows have no story id:
``f"{split}-{row_index}_{turn_id}"``). TryoCoQA: ``f"{conversation_id}_{turn_index}"``, turn_index
counting from 1 like CoQA's turn_id.

Splits: a SQuAD or CoQA file IS a split (train-v2.0.json, dev-v2.0.json...), so ``split`` only picks
the Hub split when no file is given. TryoCoQA has one file of 15 conversations: it is split 85% train /
15% validation BY CONVERSATION (all turns of a conversation stay on one side; with 15 conversations
that is 13 / 2), by a shuffle seeded with ``split_seed`` (``TRYOCOQA_SPLIT_SEED``, 42), so the split is
the same on every machine. That seed is not the training seed: a seed sweep keeps one validation set.
``training.train`` records the validation conversation ids in each stage's results.json, and
``training.evaluation`` reads them back (``validation_ids``) to score exactly those conversations.
Without a file, TryoCoQA is downloaded once from GitHub into ``~/.cache/blogpost-cqa/`` (override
with the BLOGPOST_CQA_CACHE environment variable).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cqa.format import DEFAULT_TURNS, NO_ANSWER, FittedInput, build_model_input, fit_model_input
from training.metrics import COQA_UNKNOWN, normalize_answer

logger = logging.getLogger(__name__)

DATASETS = ("squad_v2", "coqa", "tryocoqa")  # read from their official formats
JSONL = "jsonl"  # a file of structured examples, one JSON object a line (what `prepare` writes)
SPLITS = ("train", "validation")
HUB_DATASETS = {"squad_v2": "rajpurkar/squad_v2", "coqa": "stanfordnlp/coqa"}
TRYOCOQA_URL = "https://raw.githubusercontent.com/tryolabs/TryoCoQA/main/tryocoqa_v1.json"
TRYOCOQA_VALIDATION_FRACTION = 0.15
TRYOCOQA_SPLIT_SEED = 42  # the split's own seed (never the training seed)


class DataFormatError(ValueError):
    """A dataset file or record does not have the expected official format."""


class DataUnavailableError(RuntimeError):
    """A dataset could not be fetched (no network, no Hub access)."""


def _field(record: Any, key: str, where: str) -> Any:
    """``record[key]``, or a DataFormatError saying which file, record and field."""
    if not isinstance(record, Mapping):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise DataFormatError(f"{where}: missing field {key!r} (has {sorted(record)})")
    return record[key]


def _list_field(record: Any, key: str, where: str) -> list:
    value = _field(record, key, where)
    if not isinstance(value, list):
        raise DataFormatError(f"{where}: field {key!r} should be a list, got {type(value).__name__}")
    return value


def make_example(
    example_id: str,
    context: str,
    history: Sequence[tuple[str, str]],
    question: str,
    answers: Sequence[str],
) -> dict:
    """One structured example; ``answers[0]`` is the one to learn."""
    return {
        "id": example_id,
        "context": context,
        "history": [[q, a] for q, a in history],
        "question": question,
        "answers": list(answers),
    }


def model_input(example: Mapping, turns: int = DEFAULT_TURNS) -> str:
    """The example as one model input string, whole (what ``prepare``'s reader sees the model get)."""
    return build_model_input(example["context"], _pairs(example), example["question"], turns)


def fit_example(
    tokenizer, example: Mapping, max_input_length: int, turns: int = DEFAULT_TURNS
) -> FittedInput:
    """The example's model input under the app's length rule (``tokenizer``: a ``tokenizers.Tokenizer``):
    a longer input loses the end of its context, never the dialogue."""
    try:
        return fit_model_input(
            tokenizer, example["context"], _pairs(example), example["question"], max_input_length, turns
        )
    except ValueError as error:  # the dialogue alone is too long
        raise ValueError(f"example {example.get('id', '?')}: {error}") from None


def _pairs(example: Mapping) -> list[tuple[str, str]]:
    return [(q, a) for q, a in example["history"]]


def preprocess(
    batch: dict, tokenizer, max_input_length: int, max_target_length: int, turns: int = DEFAULT_TURNS
) -> dict:
    """A batch of structured examples (a ``datasets.Dataset.map`` with ``batched=True``) -> input_ids,
    attention_mask (the input built and fitted by ``fit_example``), labels (the first answer, cut at
    ``max_target_length`` tokens, end-of-sequence included) and truncated (whether the context was cut)."""
    examples = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    fitted = [fit_example(tokenizer.backend_tokenizer, e, max_input_length, turns) for e in examples]
    inputs = tokenizer([f.text for f in fitted])
    targets = [e["answers"][0] for e in examples]
    labels = tokenizer(text_target=targets, max_length=max_target_length, truncation=True)
    return {
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
        "labels": labels["input_ids"],
        "truncated": [f.truncated for f in fitted],
    }


def read_json(path: str | Path) -> Any:
    """A JSON file's content, with a clear error for a missing or broken file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path} is not valid JSON: {e}") from None


# --- SQuAD 2.0 --------------------------------------------------------------------------------------


def squad_examples(
    articles: Iterable[Mapping], *, no_answer: str = NO_ANSWER, source: str = "SQuAD file"
) -> list[dict]:
    """Examples from the official SQuAD 2.0 JSON's ``data`` list (articles > paragraphs > qas)."""
    examples = []
    for a, article in enumerate(tqdm(articles, desc="SQuAD articles", unit="article", leave=False)):
        for p, paragraph in enumerate(_list_field(article, "paragraphs", f"{source}: article #{a}")):
            where = f"{source}: article #{a}, paragraph #{p}"
            context = _field(paragraph, "context", where)
            for q, qa in enumerate(_list_field(paragraph, "qas", where)):
                qid = qa.get("id", "?") if isinstance(qa, Mapping) else "?"
                qa_where = f"{where}, question #{q} (id {qid})"
                texts = [_field(answer, "text", qa_where) for answer in _list_field(qa, "answers", qa_where)]
                if qa.get("is_impossible", False):
                    texts = []
                examples.append(
                    make_example(
                        _field(qa, "id", qa_where),
                        context,
                        [],
                        _field(qa, "question", qa_where),
                        texts or [no_answer],
                    )
                )
    return examples


def squad_hub_example(row: Mapping, *, no_answer: str = NO_ANSWER) -> dict:
    """An example from a row of the Hub's ``rajpurkar/squad_v2``
    (id, title, context, question, answers {text: [...], answer_start: [...]})."""
    where = f"{HUB_DATASETS['squad_v2']} row {row.get('id', '?')}"
    texts = _list_field(_field(row, "answers", where), "text", where)
    return make_example(
        _field(row, "id", where),
        _field(row, "context", where),
        [],
        _field(row, "question", where),
        list(texts) or [no_answer],
    )


# --- Conversations (CoQA, TryoCoQA) -----------------------------------------------------------------


def conversation_examples(
    conversation_id: str, context: str, turns_qa: Sequence[tuple[int, str, Sequence[str]]]
) -> list[dict]:
    """Examples for one conversation: ``turns_qa`` holds (turn_id, question, gold answers) in order.

    Each turn's history is the previous questions with their gold targets (the first gold answer).
    """
    examples, history = [], []
    for turn_id, question, answers in turns_qa:
        examples.append(make_example(f"{conversation_id}_{turn_id}", context, history, question, answers))
        history.append((question, answers[0]))
    return examples


def _coqa_answer(text: str, no_answer: str) -> str:
    return no_answer if text.strip().lower() == COQA_UNKNOWN else text


def coqa_examples(
    stories: Iterable[Mapping], *, no_answer: str = NO_ANSWER, source: str = "CoQA file"
) -> list[dict]:
    """Examples from the official CoQA JSON's ``data`` list; dev files add ``additional_answers``."""
    examples = []
    for s, story in enumerate(tqdm(stories, desc="CoQA stories", unit="story", leave=False)):
        where = f"{source}: story #{s}"
        story_id = _field(story, "id", where)
        where = f"{where} (id {story_id})"
        questions = _list_field(story, "questions", where)
        answer_lists = [_list_field(story, "answers", where)]
        answer_lists += list(story.get("additional_answers", {}).values())
        for answers in answer_lists:
            if len(answers) != len(questions):
                raise DataFormatError(
                    f"{where}: {len(questions)} questions but an answer list of {len(answers)}"
                )
        turns_qa = []
        for i, question in enumerate(questions):
            q_where = f"{where}, question #{i}"
            golds = [_field(answers[i], "input_text", f"{where}, answer #{i}") for answers in answer_lists]
            turns_qa.append(
                (
                    _field(question, "turn_id", q_where),
                    _field(question, "input_text", q_where),
                    [_coqa_answer(g, no_answer) for g in golds],
                )
            )
        examples += conversation_examples(story_id, _field(story, "story", where), turns_qa)
    return examples


def coqa_hub_examples(row: Mapping, story_id: str, *, no_answer: str = NO_ANSWER) -> list[dict]:
    """Examples from a row of the Hub's ``stanfordnlp/coqa`` (source, story, questions: [str],
    answers {input_text: [...], answer_start, answer_end}); the row has no id, so pass one."""
    where = f"{HUB_DATASETS['coqa']} row {story_id}"
    questions = _list_field(row, "questions", where)
    answers = _list_field(_field(row, "answers", where), "input_text", where)
    if len(answers) != len(questions):
        raise DataFormatError(f"{where}: {len(questions)} questions but {len(answers)} answers")
    turns_qa = [
        (i + 1, q, [_coqa_answer(a, no_answer)])
        for i, (q, a) in enumerate(zip(questions, answers, strict=True))
    ]
    return conversation_examples(story_id, _field(row, "story", where), turns_qa)


def split_conversations(
    conversations: Sequence[Mapping],
    split: str,
    seed: int = TRYOCOQA_SPLIT_SEED,
    validation_fraction: float = TRYOCOQA_VALIDATION_FRACTION,
    validation_ids: Sequence[str] | None = None,
) -> list[Mapping]:
    """The conversations of one split: a seeded shuffle, then the first ~15% go to validation.

    ``validation_ids``: the validation conversations as recorded by an earlier run (results.json's
    ``split``); the seed is then not used. An id the file does not have is an error.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if validation_ids is not None:
        ids = [str(c["conversation_id"]) for c in conversations]
        unknown = sorted(set(map(str, validation_ids)) - set(ids))
        if unknown:
            raise DataFormatError(
                f"the recorded validation conversations {unknown} are not in this TryoCoQA file: "
                "is it the file the model was trained on?"
            )
        wanted = set(map(str, validation_ids))
        in_validation = [i in wanted for i in ids]
        return [c for c, v in zip(conversations, in_validation, strict=True) if v == (split == "validation")]
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_validation = max(1, round(len(order) * validation_fraction)) if len(order) > 1 else 0
    chosen = order[:n_validation] if split == "validation" else order[n_validation:]
    return [conversations[i] for i in sorted(chosen)]  # keep file order within a split


def tryocoqa_validation_ids(
    file: str | Path | None = None, split_seed: int = TRYOCOQA_SPLIT_SEED
) -> list[str]:
    """The conversation ids of TryoCoQA's validation split (what results.json records)."""
    path = Path(file) if file is not None else download_tryocoqa()
    conversations = read_json(path)
    _check_conversation_ids(conversations, str(path))
    return [str(c["conversation_id"]) for c in split_conversations(conversations, "validation", split_seed)]


def tryocoqa_examples(
    conversations: Iterable[Mapping], *, no_answer: str = NO_ANSWER, source: str = "TryoCoQA file"
) -> list[dict]:
    """Examples from TryoCoQA conversations (conversation_id, context_id, story, questions: [str],
    answers {input_text: [...]}); its "I can't answer that." becomes ``no_answer``."""
    # Compared after SQuAD normalization: the file also writes it without the final period.
    unanswerable = normalize_answer(NO_ANSWER)
    examples = []
    for c, conversation in enumerate(conversations):
        where = f"{source}: conversation #{c}"
        conversation_id = str(_field(conversation, "conversation_id", where))
        where = f"{where} (conversation_id {conversation_id})"
        questions = _list_field(conversation, "questions", where)
        answers = _list_field(_field(conversation, "answers", where), "input_text", where)
        if len(answers) != len(questions):
            raise DataFormatError(f"{where}: {len(questions)} questions but {len(answers)} answers")
        turns_qa = [
            (i + 1, q, [no_answer if normalize_answer(a) == unanswerable else a])
            for i, (q, a) in enumerate(zip(questions, answers, strict=True))
        ]
        examples += conversation_examples(conversation_id, _field(conversation, "story", where), turns_qa)
    return examples


def _check_conversation_ids(conversations: Any, source: str) -> None:
    if not isinstance(conversations, list):
        raise DataFormatError(f"{source}: expected a JSON list of conversations (is it tryocoqa_v1.json?)")
    seen = set()
    for c, conversation in enumerate(conversations):
        conversation_id = str(_field(conversation, "conversation_id", f"{source}: conversation #{c}"))
        if conversation_id in seen:
            raise DataFormatError(f"{source}: conversation #{c}: duplicate conversation_id {conversation_id}")
        seen.add(conversation_id)


# --- Loading ---------------------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("BLOGPOST_CQA_CACHE", Path.home() / ".cache" / "blogpost-cqa"))


def download_tryocoqa(directory: str | Path | None = None, url: str = TRYOCOQA_URL) -> Path:
    """The TryoCoQA file, downloaded from ``url`` the first time and cached in ``directory``."""
    path = Path(directory or cache_dir()) / Path(url).name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Downloading TryoCoQA from %s to %s", url, path)
    partial = path.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            partial.write_bytes(response.read())
    except OSError as e:
        raise DataUnavailableError(
            f"could not download TryoCoQA from {url} ({e}); download tryocoqa_v1.json yourself and "
            f"pass it with --file (or put it at {path})"
        ) from None
    partial.replace(path)  # only a complete download lands in the cache
    return path


def _load_hub(dataset: str, split: str) -> Any:
    import datasets

    name = HUB_DATASETS[dataset]
    logger.info("Loading %s (%s) from the Hugging Face Hub", name, split)
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # network, auth and cache errors come as many types
        raise DataUnavailableError(
            f"could not load {name} ({split}) from the Hugging Face Hub ({type(e).__name__}: {e}); "
            f"without Hub access pass the official JSON file with --file"
        ) from None


def load_examples(
    dataset: str,
    file: str | Path | None = None,
    split: str = "train",
    *,
    no_answer: str = NO_ANSWER,
    split_seed: int = TRYOCOQA_SPLIT_SEED,
    validation_ids: Sequence[str] | None = None,
) -> list[dict]:
    """Structured examples ({id, context, history, question, answers}) of ``dataset`` from its official
    ``file``, or from its home (the Hub; GitHub for TryoCoQA) when no file is given. See the module
    docstring.

    ``split_seed`` and ``validation_ids`` (a recorded split) choose TryoCoQA's split only."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    options = {"no_answer": no_answer}

    if dataset == "tryocoqa":
        path = Path(file) if file is not None else download_tryocoqa()
        conversations = read_json(path)
        _check_conversation_ids(conversations, str(path))
        chosen = split_conversations(conversations, split, split_seed, validation_ids=validation_ids)
        examples = tryocoqa_examples(chosen, source=str(path), **options)
    elif file is not None:
        content = read_json(file)
        data = _field(content, "data", f"{file} (is it the official {dataset} JSON?)")
        convert = squad_examples if dataset == "squad_v2" else coqa_examples
        examples = convert(data, source=str(file), **options)
    else:
        rows = _load_hub(dataset, split)
        if dataset == "squad_v2":
            examples = [
                squad_hub_example(row, **options) for row in tqdm(rows, desc="SQuAD rows", leave=False)
            ]
        else:
            examples = []
            for index, row in enumerate(tqdm(rows, desc="CoQA rows", leave=False)):
                examples += coqa_hub_examples(row, f"{split}-{index}", **options)

    unanswerable = sum(example["answers"][0] == no_answer for example in examples)
    logger.info("%s %s: %d examples (%d unanswerable)", dataset, split, len(examples), unanswerable)
    return examples


# --- What a recipe names: dataset specs, JSONL files, the tokenized dataset --------------------------


@dataclass
class DatasetSpec:
    """One dataset split to train or evaluate on (an item of a recipe's train_datasets / eval_datasets)."""

    # squad_v2 | coqa | tryocoqa (their official formats), or jsonl: a file of structured examples, one
    # JSON object a line with context, question, answers (optional id, history), as `prepare` writes.
    name: str
    # A local file in the dataset's official format. None: the dataset's official home (Hugging Face
    # Hub / GitHub). "smoke": the tiny built-in file (write_smoke_datasets).
    file: str | None = None
    split: str = "train"  # train | validation
    max_examples: int | None = None  # keep only the first N examples (e.g. a quicker validation)


def read_jsonl_examples(path: str | Path) -> list[dict]:
    """Structured examples from a JSONL file: context, question, answers; optional id and history."""
    examples = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFormatError(f"{path}:{number}: not valid JSON ({error})") from None
            if not isinstance(record, dict) or not {"context", "question", "answers"} <= set(record):
                raise DataFormatError(
                    f'{path}:{number}: each line needs "context", "question" and "answers" '
                    '(and may have "id" and "history"), as `python -m training.data prepare` writes them'
                )
            answers = record["answers"]
            if isinstance(answers, str) or not answers:
                raise DataFormatError(f'{path}:{number}: "answers" must be a non-empty list of strings')
            examples.append(
                make_example(
                    str(record.get("id", f"{Path(path).stem}-{number}")),
                    record["context"],
                    record.get("history") or [],
                    record["question"],
                    answers,
                )
            )
    return examples


def load_dataset_examples(
    spec: DatasetSpec, no_answer: str = NO_ANSWER, split_seed: int = TRYOCOQA_SPLIT_SEED
) -> list[dict]:
    """The structured examples of one DatasetSpec (its first max_examples)."""
    if spec.name == JSONL:
        if not spec.file:
            raise ValueError("a jsonl dataset needs a file")
        examples = read_jsonl_examples(spec.file)
    else:
        examples = load_examples(spec.name, spec.file, spec.split, no_answer=no_answer, split_seed=split_seed)
    if spec.max_examples is not None:
        examples = examples[: spec.max_examples]
    if not examples:
        raise ValueError(f"dataset {spec.name} ({spec.file or 'official'}, {spec.split}) has no examples")
    return examples


def resolve_smoke_files(specs: Sequence[DatasetSpec], out_dir: str | Path) -> list[DatasetSpec]:
    """The specs with ``file: smoke`` turned into the built-in tiny files, written to OUT_DIR/smoke-data."""
    if not any(spec.file == "smoke" for spec in specs):
        return list(specs)
    files = write_smoke_datasets(Path(out_dir) / "smoke-data")

    def smoke_file(spec: DatasetSpec) -> str | None:
        if spec.file != "smoke":
            return spec.file
        # one file per split for SQuAD and CoQA; TryoCoQA's one file is split by load_examples
        key = spec.name + ("_dev" if spec.split == "validation" and spec.name != "tryocoqa" else "")
        if key not in files:
            raise ValueError(
                f"no built-in smoke file for {spec.name} {spec.split}; there are {sorted(files)}"
            )
        return str(files[key])

    return [replace(spec, file=smoke_file(spec)) for spec in specs]


def build_dataset(
    examples: Sequence[dict],
    tokenizer,
    *,
    max_input_length: int,
    max_target_length: int,
    turns: int = DEFAULT_TURNS,
    what: str = "training",
):
    """The tokenized datasets.Dataset the trainer reads (input_ids, attention_mask, labels): one
    ``preprocess`` map over the structured examples."""
    import datasets

    dataset = datasets.Dataset.from_list(list(examples))
    dataset = dataset.map(
        preprocess,
        batched=True,
        remove_columns=dataset.column_names,
        fn_kwargs={
            "tokenizer": tokenizer,
            "max_input_length": max_input_length,
            "max_target_length": max_target_length,
            "turns": turns,
        },
        desc=f"tokenizing {what} examples",
    )
    cut = sum(dataset["truncated"])
    if cut:
        logger.info(
            "%s: %d of %d inputs longer than %d tokens lost the end of their context",
            what,
            cut,
            len(dataset),
            max_input_length,
        )
    return dataset.remove_columns(["truncated"])


def write_jsonl(examples: Iterable[Mapping], path: str | Path) -> Path:
    """One JSON object per line (UTF-8, not ASCII-escaped)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(example, ensure_ascii=False) + "\n")
    return path


# --- Smoke datasets ---------------------------------------------------------------------------------
# Tiny stories with span answers a tiny model can learn to copy, in the official file formats.

_PEOPLE = [  # name, subject pronoun, city, job, color, vehicle, animal, pet name
    ("Anna", "she", "Paris", "baker", "red", "bike", "dog", "Max"),
    ("Ben", "he", "Rome", "teacher", "blue", "car", "cat", "Luna"),
    ("Carla", "she", "Lima", "doctor", "green", "boat", "bird", "Kiwi"),
    ("David", "he", "Oslo", "pilot", "yellow", "van", "horse", "Storm"),
    ("Emma", "she", "Cairo", "farmer", "black", "truck", "rabbit", "Coco"),
    ("Felix", "he", "Tokyo", "painter", "white", "scooter", "fish", "Bubbles"),
    ("Grace", "she", "Berlin", "nurse", "orange", "kayak", "goat", "Pepper"),
    ("Hugo", "he", "Madrid", "chef", "purple", "bus", "turtle", "Shelly"),
    ("Iris", "she", "Dublin", "singer", "pink", "train", "parrot", "Rio"),
]
_UNANSWERABLE = ["How old is {name}?", "What is {name}'s favorite food?", "When was {name} born?"]


def _story(person: tuple) -> str:
    name, pronoun, city, job, color, vehicle, animal, pet = person
    she, her = pronoun.capitalize(), ("Her" if pronoun == "she" else "His")
    article = "an" if color[0] in "aeiou" else "a"
    return (
        f"{name} lives in {city}. {she} works as a {job}. "
        f"{she} has {article} {color} {vehicle}. {her} {animal} is called {pet}."
    )


def _smoke_squad(people: Sequence[tuple], id_prefix: str) -> dict:
    paragraphs = []
    for p, person in enumerate(people):
        name, _, city, job, color, vehicle, animal, pet = person
        context = _story(person)
        questions = [
            (f"Where does {name} live?", city),
            (f"What is {name}'s job?", job),
            (f"What color is {name}'s {vehicle}?", color),
            (f"What is the name of {name}'s {animal}?", pet),
        ]
        qas = [
            {
                "question": question,
                "id": f"{id_prefix}{p}q{q}",
                "answers": [{"text": answer, "answer_start": context.index(answer)}],
                "is_impossible": False,
            }
            for q, (question, answer) in enumerate(questions)
        ]
        if p % 2 == 0:
            qas.append(
                {
                    "question": _UNANSWERABLE[p % 3].format(name=name),
                    "id": f"{id_prefix}{p}q{len(qas)}",
                    "answers": [],
                    "plausible_answers": [{"text": city, "answer_start": context.index(city)}],
                    "is_impossible": True,
                }
            )
        paragraphs.append({"context": context, "qas": qas})
    return {"version": "v2.0", "data": [{"title": "Smoke_people", "paragraphs": paragraphs}]}


def _conversation(person: tuple, variant: int) -> list[tuple[str, str | None]]:
    """(question, answer span or None for unanswerable) for one conversation about ``person``."""
    name, pronoun, city, job, color, vehicle, animal, pet = person
    possessive = "her" if pronoun == "she" else "his"
    if variant == 0:
        return [
            ("Who is this about?", name),
            (f"Where does {pronoun} live?", city),
            (f"What does {pronoun} work as?", job),
            (f"How old is {pronoun}?", None),
            (f"What color is {possessive} {vehicle}?", color),
        ]
    return [
        (f"What is {name}'s {animal} called?", pet),
        (f"What does {name} ride?", vehicle),
        ("What color is it?", color),
        (f"What is {possessive} favorite song?", None),
    ]


def _smoke_coqa(people: Sequence[tuple], id_prefix: str, sources: Sequence[str], dev: bool) -> dict:
    stories = []
    for s, person in enumerate(people):
        story = _story(person)
        questions, answers = [], []
        for t, (question, span) in enumerate(_conversation(person, s % 2), start=1):
            questions.append({"input_text": question, "turn_id": t})
            if span is None:
                answers.append(
                    {
                        "span_start": -1,
                        "span_end": -1,
                        "span_text": "unknown",
                        "input_text": "unknown",
                        "turn_id": t,
                    }
                )
            else:
                start = story.index(span)
                answers.append(
                    {
                        "span_start": start,
                        "span_end": start + len(span),
                        "span_text": span,
                        "input_text": span,
                        "turn_id": t,
                    }
                )
        record = {
            "source": sources[s % len(sources)],
            "id": f"{id_prefix}{s}",
            "filename": f"smoke_{s}.txt",
            "story": story,
            "questions": questions,
            "answers": answers,
        }
        if dev:
            # Three more annotators: the same answers, one phrased differently, as in CoQA's dev set.
            variants = [dict(a, input_text=a["input_text"].lower()) for a in answers]
            record["additional_answers"] = {"0": answers, "1": variants, "2": answers}
        stories.append(record)
    return {"version": "1.0", "data": stories}


def _smoke_tryocoqa(people: Sequence[tuple]) -> list[dict]:
    conversations = []
    for context_id, person in enumerate(people):
        post = f"A day with {person[0]}\n\n{_story(person)}"
        for variant in (0, 1):
            turns = _conversation(person, variant)
            conversations.append(
                {
                    "conversation_id": str(len(conversations)),
                    "context_id": str(context_id),
                    "story": post,
                    "questions": [question for question, _ in turns],
                    "answers": {"input_text": [span or NO_ANSWER for _, span in turns]},
                }
            )
    return conversations


def write_smoke_datasets(out_dir: str | Path) -> dict[str, Path]:
    """Write tiny built-in datasets in the official formats; returns their paths under the keys
    "squad_v2", "squad_v2_dev", "coqa", "coqa_dev" (train and dev files) and "tryocoqa" (one file,
    8 conversations: the 85/15 split leaves 1 for validation)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "squad_v2": ("smoke-squad-train-v2.0.json", _smoke_squad(_PEOPLE[:6], "squadtrain")),
        "squad_v2_dev": ("smoke-squad-dev-v2.0.json", _smoke_squad(_PEOPLE[6:], "squaddev")),
        "coqa": (
            "smoke-coqa-train-v1.0.json",
            _smoke_coqa(_PEOPLE[:6], "coqatrain", ["mctest", "race"], False),
        ),
        "coqa_dev": (
            "smoke-coqa-dev-v1.0.json",
            _smoke_coqa(_PEOPLE[3:], "coqadev", ["cnn", "reddit"], True),
        ),
        "tryocoqa": ("smoke-tryocoqa_v1.json", _smoke_tryocoqa(_PEOPLE[:4])),
    }
    paths = {}
    for key, (name, content) in files.items():
        paths[key] = out_dir / name
        paths[key].write_text(json.dumps(content, indent=1, ensure_ascii=False), encoding="utf-8")
    return paths


# --- command line -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser(
        "prepare", help="convert a dataset to JSONL {id, context, history, question, answers}"
    )
    prepare.add_argument("--dataset", required=True, choices=DATASETS)
    prepare.add_argument("--file", help="the official JSON file (default: download from the Hub / GitHub)")
    prepare.add_argument("--split", default="train", choices=SPLITS)
    prepare.add_argument("--out", required=True, help="output .jsonl")
    prepare.add_argument(
        "--no-answer", default=NO_ANSWER, help=f"target for unanswerable (default {NO_ANSWER!r})"
    )
    prepare.add_argument(
        "--split-seed",
        type=int,
        default=TRYOCOQA_SPLIT_SEED,
        help=f"TryoCoQA train/validation split seed (default {TRYOCOQA_SPLIT_SEED})",
    )
    smoke = commands.add_parser("smoke", help="write the tiny built-in datasets")
    smoke.add_argument("out_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "smoke":
        for key, path in write_smoke_datasets(args.out_dir).items():
            print(f"{key}: {path}")
        return 0
    try:
        examples = load_examples(
            args.dataset,
            args.file,
            args.split,
            no_answer=args.no_answer,
            split_seed=args.split_seed,
        )
    except (DataFormatError, DataUnavailableError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_jsonl(examples, args.out)
    unanswerable = sum(example["answers"][0] == args.no_answer for example in examples)
    print(f"Wrote {len(examples)} examples ({unanswerable} unanswerable) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
