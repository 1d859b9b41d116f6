"""The two-stage training (training/train.py) on CPU with tiny random LongT5 models."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cqa.format import build_model_input
from training.data import build_dataset, fit_example, model_input
from training.model import add_dialogue_tokens
from training.recipe import Recipe, RecipeError, load_recipe, parse_overrides, recipe_from_dict
from training.train import bf16_supported, checkpoint_disagreement, examples_per_optimizer_step, train

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "training" / "recipes"


def smoke_recipe(name: str, out: Path, **overrides) -> Recipe:
    """A smoke recipe made quick for tests: few validation examples, short generation."""
    return load_recipe(
        RECIPES / name, output_dir=str(out), eval_max_new_tokens=6, logging_steps=50, **overrides
    )


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=0), name


# --- recipes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stage1.yaml", "stage2.yaml", "smoke_stage1.yaml", "smoke_stage2.yaml"])
def test_shipped_recipes_load(name):
    _, data, args = load_recipe(RECIPES / name)
    assert data.train_datasets and data.eval_datasets
    assert isinstance(args.learning_rate, float) and args.learning_rate > 0  # "1.0e-4" is a number


def test_real_recipes_match_the_reported_setup():
    (model1, data1, args1), (model2, data2, args2) = (load_recipe(RECIPES / f"stage{n}.yaml") for n in (1, 2))
    assert model1.model == "google/long-t5-tglobal-base" and args1.num_train_epochs == 3
    assert {d.name for d in data1.train_datasets} == {"squad_v2", "coqa"}
    assert data1.scheme in ("mixed", "sequential")
    assert model2.model == str(Path(args1.output_dir) / "best")  # stage 2 starts from stage 1's best
    assert [d.name for d in data2.train_datasets] == ["tryocoqa"] and args2.num_train_epochs == 166
    assert args1.bf16 and args2.bf16 and args2.gradient_checkpointing
    assert data2.max_input_length >= 7000  # TryoCoQA's blog posts are 2.0k-6.9k tokens
    # stage 1 runs for hours: a checkpoint every ~2,000 steps, not once an epoch; and batches of similar
    # lengths (SQuAD paragraphs, median 163 tokens, next to CoQA stories of up to ~1,300)
    assert args1.eval_steps is not None and 1000 <= args1.eval_steps <= 3000 and args1.group_by_length
    assert args1.eval_strategy == args1.save_strategy == "steps" and args1.save_steps == args1.eval_steps


def test_overrides_are_typed_and_checked(tmp_path):
    _, _, args = load_recipe(
        RECIPES / "smoke_stage1.yaml",
        **parse_overrides(["--num_train_epochs", "5", "--learning_rate=3e-4", "--bf16", "--output_dir", "x"]),
    )
    assert (args.num_train_epochs, args.learning_rate, args.bf16, args.output_dir) == (
        5.0,
        3e-4,
        True,
        "x",
    )
    with pytest.raises(RecipeError, match=r"unknown field.*'lr'"):
        load_recipe(RECIPES / "smoke_stage1.yaml", lr=1)
    with pytest.raises(RecipeError, match="learning_rate must be a number"):
        load_recipe(RECIPES / "smoke_stage1.yaml", learning_rate="fast")
    with pytest.raises(RecipeError, match="unknown dataset 'quac'"):
        load_recipe(RECIPES / "smoke_stage1.yaml", train_datasets=[{"name": "quac"}])
    with pytest.raises(RecipeError, match="scheme must be mixed or sequential"):
        load_recipe(RECIPES / "smoke_stage1.yaml", scheme="interleaved")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(broken)


def test_every_trainer_option_is_a_recipe_key():
    """The recipe is HfArgumentParser's: options the project never names (a scheduler's kwargs, torch
    compile, FSDP) are keys and overrides too, typed and checked by Seq2SeqTrainingArguments itself."""
    overrides = parse_overrides(
        [
            "--lr_scheduler_type",
            "polynomial",
            "--lr_scheduler_kwargs",
            "{power: 2.0}",
            "--torch_compile",
            "false",
        ]
    )
    _, _, args = load_recipe(RECIPES / "smoke_stage1.yaml", **overrides)
    assert args.lr_scheduler_type == "polynomial" and args.lr_scheduler_kwargs == {"power": 2.0}
    assert args.torch_compile is False
    # the project's defaults for the trainer: the best checkpoint by F1 (ties: the loss), generation
    assert args.load_best_model_at_end and args.metric_for_best_model == "selection"
    assert args.predict_with_generate and args.eval_strategy == args.save_strategy == "epoch"
    with pytest.raises(RecipeError, match=r"lr_scheduler_type: sideways is not a valid SchedulerType"):
        load_recipe(RECIPES / "smoke_stage1.yaml", lr_scheduler_type="sideways")


def test_cli_reports_a_bad_override_without_a_traceback():
    done = subprocess.run(
        [sys.executable, "-m", "training.train", str(RECIPES / "smoke_stage1.yaml"), "--epochs", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "unknown field(s) ['epochs']" in done.stderr and "Traceback" not in done.stderr


# --- tokenizer and preprocessing -------------------------------------------------------------------


def test_dialogue_tokens_added_at_the_published_ids(tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "model")
    assert add_dialogue_tokens(tokenizer) == 0  # already there: nothing added twice
    assert tokenizer.convert_tokens_to_ids(["||", "<Q>", "<A>"]) == [32100, 32101, 32102]


@pytest.mark.parametrize("vocab_size", [32100, 32128])
def test_embeddings_make_room_for_the_dialogue_tokens(tmp_path, vocab_size):
    from training.model import load_model_and_tokenizer
    from training.tiny import build_tiny_model, build_tokenizer

    # 32100 rows: T5's pieces and sentinels, no room for `||` `<Q>` `<A>` (32100-32102).
    # 32128 rows: the base model's padded matrix, already big enough: never shrunk.
    build_tiny_model(0, vocab_size=vocab_size).save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    saved = load_weights(tmp_path)["shared.weight"]

    model, tokenizer = load_model_and_tokenizer(str(tmp_path))
    assert len(tokenizer) == 32103
    rows = model.get_input_embeddings().num_embeddings
    assert rows == 32128  # resized up to a multiple of 128, like the base model
    assert model.get_output_embeddings().out_features == rows and model.config.vocab_size == rows
    assert torch.equal(model.get_input_embeddings().weight[:vocab_size], saved)  # old rows kept

    text = build_model_input("Anna lives in Paris.", [("Who?", "Anna")], "Where?")
    ids = tokenizer(text)["input_ids"]
    assert [ids.count(i) for i in (32100, 32101, 32102)] == [1, 1, 1]  # `||`, `<Q>`, `<A>` once each
    assert tokenizer.convert_ids_to_tokens([32100, 32101, 32102]) == ["||", "<Q>", "<A>"]
    embedded = model.get_input_embeddings()(torch.tensor([32100, 32101, 32102]))
    assert torch.isfinite(embedded).all() and embedded.abs().sum() > 0  # real rows, not padding
    labels = tokenizer(text_target="Paris", return_tensors="pt").input_ids
    with torch.no_grad():
        output = model(input_ids=torch.tensor([ids]), labels=labels)
    assert output.logits.shape[-1] == rows and torch.isfinite(output.loss)


def test_embeddings_stored_apart_are_tied_again_on_load(tmp_path, caplog):
    """DeepSpeed saves `shared`, `encoder.embed_tokens` and `decoder.embed_tokens` as three tensors;
    loaded as they are, they train apart and DDP fails on the unused `shared`."""
    from safetensors.torch import save_file

    from training.model import load_model_and_tokenizer
    from training.tiny import build_tiny_model, build_tokenizer

    model = build_tiny_model(0, vocab_size=32128)
    tied_parameters = sum(p.numel() for p in model.parameters())
    build_tokenizer().save_pretrained(tmp_path)
    model.config.save_pretrained(tmp_path)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}  # three copies
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})

    loaded, _ = load_model_and_tokenizer(str(tmp_path))
    assert loaded.encoder.embed_tokens.weight is loaded.shared.weight
    assert loaded.decoder.embed_tokens.weight is loaded.shared.weight
    assert sum(p.numel() for p in loaded.parameters()) == tied_parameters
    assert torch.equal(loaded.shared.weight, state["shared.weight"])

    state["decoder.embed_tokens.weight"] += 1.0  # not one tied model: said, then tied to shared
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    caplog.set_level("WARNING", logger="training")
    loaded, _ = load_model_and_tokenizer(str(tmp_path))
    assert loaded.decoder.embed_tokens.weight is loaded.shared.weight
    assert any("decoder.embed_tokens differs from shared" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("capability", "native"),
    [
        (None, False),
        ((6, 1), False),
        ((7, 0), False),
        ((7, 5), False),
        ((8, 0), True),
        ((8, 9), True),
        ((9, 0), True),
    ],
)
def test_bf16_only_on_gpus_that_run_it_natively(capability, native):
    # V100 (7.0) and T4 (7.5) emulate bf16 (torch.cuda.is_bf16_supported() says yes): fp32 there
    assert bf16_supported(capability) is native


def test_examples_per_optimizer_step_count_every_process():
    assert examples_per_optimizer_step(4, 4, 2) == 32  # stage 1 on 2 GPUs
    assert examples_per_optimizer_step(8, 1, 2) == 16


def test_a_resume_whose_ranks_disagree_on_the_checkpoint_is_refused():
    assert checkpoint_disagreement(["checkpoint-40", "checkpoint-40"]) is None
    assert checkpoint_disagreement([None, None]) is None
    message = checkpoint_disagreement(["checkpoint-40", "checkpoint-40", None, None])
    assert "rank 2: no checkpoint" in message and "shared file system" in message


def test_a_nan_loss_stops_with_a_clear_message():
    from transformers import TrainerControl, TrainerState

    from training.callbacks import non_finite_loss_callback

    callback, state = non_finite_loss_callback(), TrainerState(global_step=120)
    callback.on_log(None, state, TrainerControl(), logs={"loss": 2.5, "grad_norm": 1.0})  # fine
    with pytest.raises(
        FloatingPointError, match=r"loss is nan at step 120 \(grad_norm 812.0\).*--bf16 false"
    ):
        callback.on_log(None, state, TrainerControl(), logs={"loss": float("nan"), "grad_norm": 812.0})


def test_the_model_input_keeps_the_last_turns_of_a_structured_example(tiny_dir):
    """Examples stay structured (context, history, question); the input is built once, from them, with
    the history window of ``turns`` (what split_model_input used to recover from a frozen string)."""
    from transformers import AutoTokenizer

    from cqa.format import dialogue_part

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "model").backend_tokenizer
    history = [("who wrote it?", "Ana"), ("when?", "in 2023"), ("why?", "for fun")]
    example = {"id": "x", "context": "Some context.", "history": history, "question": "and then?"}
    for turns in (0, 1, 2, 3):
        kept = history[len(history) - turns :]
        expected = build_model_input("Some context.", kept, "and then?", turns=turns)
        assert model_input(example, turns) == expected
        assert fit_example(tokenizer, example, 1000, turns).text == expected
        assert expected.endswith(dialogue_part(kept, "and then?", turns))
    with pytest.raises(ValueError, match="example x: The question and the conversation history take"):
        fit_example(tokenizer, example, 5)


def test_long_inputs_lose_context_never_the_dialogue(tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "model")
    context = " ".join(["the model answer"] * 200)
    examples = [
        {
            "id": "long",
            "context": context,
            "history": [["what is it?", "a blog"]],
            "question": "how long is it?",
        },
        {"id": "short", "context": "hi", "history": [], "question": "q"},
    ]
    examples[0]["answers"], examples[1]["answers"] = ["long"], ["x"]
    dataset = build_dataset(examples, tokenizer, max_input_length=64, max_target_length=4, what="test")
    long_ids, short_ids = dataset[0]["input_ids"], dataset[1]["input_ids"]
    assert len(long_ids) <= 64 and long_ids[-1] == tokenizer.eos_token_id
    decoded = tokenizer.decode(long_ids, skip_special_tokens=True)
    assert decoded.startswith("the model answer")
    assert decoded.rstrip().endswith("answer the || <Q1> what is it? <A1> a blog <Q> how long is it? <A>")
    assert short_ids == tokenizer("hi || <Q> q <A> ")["input_ids"]  # short inputs untouched
    assert dataset[0]["labels"][-1] == tokenizer.eos_token_id and len(dataset[0]["labels"]) <= 4


# --- training ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_stage1_then_stage2_keeps_the_best_checkpoint_by_f1(tmp_path, caplog):
    caplog.set_level("INFO", logger="training")
    stage1 = train(smoke_recipe("smoke_stage1.yaml", tmp_path / "stage1", num_train_epochs=2))
    stage2_recipe = smoke_recipe(
        "smoke_stage2.yaml", tmp_path / "stage2", model=stage1["best_checkpoint"], num_train_epochs=3
    )
    stage2 = train(stage2_recipe)

    for result, epochs in ((stage1, 2), (stage2, 3)):
        history = result["eval_history"]
        assert len(history) == epochs and result["epochs"] == epochs
        # the highest F1; among equal F1s (a random model's 0s) the lowest validation loss
        best = min(history, key=lambda entry: (-entry["f1"], entry["loss"]))
        assert (result["best_step"], result["f1"], result["exact"]) == (
            best["step"],
            best["f1"],
            best["exact"],
        )
        best_dir = Path(result["best_checkpoint"])
        assert best_dir.name == "best" and (best_dir / "tokenizer.json").is_file()
        checkpoint = best_dir.parent / f"checkpoint-{result['best_step']}"
        assert_same_weights(load_weights(best_dir), load_weights(checkpoint))
        assert json.loads((best_dir.parent / "results.json").read_text())["best_step"] == result["best_step"]

    # stage 2 really started from stage 1's best weights, and changed them
    start, end = load_weights(Path(stage1["best_checkpoint"])), load_weights(Path(stage2["best_checkpoint"]))
    assert not torch.equal(start["shared.weight"], end["shared.weight"])
    lines = [r.getMessage() for r in caplog.records if r.name == "training.train"]
    assert any(line.startswith("epoch 3/3: eval f1=") and "(best " in line for line in lines), lines


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_final_state(tmp_path):
    from transformers import TrainerCallback

    class StopAfterFirstEpoch(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            control.should_training_stop = True

    few = {"name": "squad_v2", "file": "smoke", "split": "validation", "max_examples": 4}
    quick = {"num_train_epochs": 3, "eval_datasets": [few]}
    straight = train(smoke_recipe("smoke_stage1.yaml", tmp_path / "straight", **quick))
    stopped = train(
        smoke_recipe("smoke_stage1.yaml", tmp_path / "resumed", **quick), callbacks=[StopAfterFirstEpoch()]
    )
    assert stopped["global_step"] < straight["global_step"]
    with pytest.raises(ValueError, match="already holds checkpoints"):  # no silent mixing of two runs
        train(smoke_recipe("smoke_stage1.yaml", tmp_path / "resumed", **quick))
    resumed = train(
        smoke_recipe("smoke_stage1.yaml", tmp_path / "resumed", resume_from_checkpoint=True, **quick)
    )

    assert resumed["global_step"] == straight["global_step"]
    last = f"checkpoint-{straight['global_step']}"
    assert_same_weights(
        load_weights(tmp_path / "straight" / last), load_weights(tmp_path / "resumed" / last), 1e-6
    )
    assert [e["loss"] for e in resumed["eval_history"]] == pytest.approx(
        [e["loss"] for e in straight["eval_history"]]
    )


def stop_after_epoch(epoch: int):
    """A TrainerCallback that interrupts a run at the end of epoch ``epoch`` (its checkpoint saved)."""
    from transformers import TrainerCallback

    class StopAfterEpoch(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.epoch >= epoch

    return StopAfterEpoch()


@pytest.mark.slow
def test_resume_keeps_early_stopping_patience_and_accepts_it_added(tmp_path, caplog):
    """--resume restores the patience counter (the run stops where an uninterrupted one does), and
    --early_stopping_patience added at resume (the README suggests it) no longer fails the first save."""
    caplog.set_level("INFO", logger="training")
    few = {"name": "tryocoqa", "file": "smoke", "split": "validation", "max_examples": 2}
    quick = {"model": "tiny", "num_train_epochs": 8, "eval_datasets": [few]}
    patient = {**quick, "early_stopping_patience": 2}

    straight = train(smoke_recipe("smoke_stage2.yaml", tmp_path / "straight", **patient))
    assert straight["global_step"] < 8 * 4  # stopped early (4 steps an epoch)
    stopped = train(
        smoke_recipe("smoke_stage2.yaml", tmp_path / "resumed", **patient), callbacks=[stop_after_epoch(2)]
    )
    state = json.loads(
        (tmp_path / "resumed" / f"checkpoint-{stopped['global_step']}" / "trainer_state.json").read_text()
    )
    assert (
        state["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"]["early_stopping_patience_counter"]
        >= 1
    )
    resumed = train(
        smoke_recipe("smoke_stage2.yaml", tmp_path / "resumed", resume_from_checkpoint=True, **patient)
    )
    assert resumed["global_step"] == straight["global_step"]  # the counter went on, not from 0
    assert len(resumed["eval_history"]) == len(straight["eval_history"])

    train(smoke_recipe("smoke_stage2.yaml", tmp_path / "added", **quick), callbacks=[stop_after_epoch(1)])
    added = train(
        smoke_recipe("smoke_stage2.yaml", tmp_path / "added", resume_from_checkpoint=True, **patient)
    )
    assert added["global_step"] < 8 * 4  # early stopping works from the resume on
    lines = [r.getMessage() for r in caplog.records]
    assert "EarlyStoppingCallback was not in the checkpoint: its state starts fresh" in lines


@pytest.mark.slow
def test_sequential_scheme_trains_one_dataset_after_the_other(tmp_path):
    recipe = smoke_recipe(
        "smoke_stage1.yaml",
        tmp_path / "seq",
        scheme="sequential",
        num_train_epochs=1,
        eval_datasets=[{"name": "coqa", "file": "smoke", "split": "validation", "max_examples": 4}],
    )
    result = train(recipe)
    first, second = result["phases"]
    assert (first["dataset"], second["dataset"]) == ("squad_v2", "coqa")
    assert Path(first["best_checkpoint"]) == tmp_path / "seq" / "phase-1-squad_v2" / "best"
    assert Path(result["best_checkpoint"]) == tmp_path / "seq" / "best"
    saved = yaml.safe_load((tmp_path / "seq" / "recipe.yaml").read_text())  # every field, the trainer's too
    assert saved["learning_rate"] == recipe.training_args.learning_rate
    assert saved["model"] == first["best_checkpoint"]  # phase 2 started from phase 1's best


# --- learning is real ----------------------------------------------------------------------------


def span_copy_examples(count: int, seed: int) -> list[dict]:
    """Context: 8 random "filler" words with one word of a second vocabulary hidden among them; the
    answer is that word, copied from wherever it is (an extractive span, as in SQuAD)."""
    from training.tiny import _COMMON_WORDS

    words = [w for w in _COMMON_WORDS if w.isalpha()][:60]
    fillers, names = words[:30], words[30:]
    rng = random.Random(seed)
    examples = []
    for i in range(count):
        context, answer = rng.sample(fillers, 8), rng.choice(names)
        context.insert(rng.randrange(len(context) + 1), answer)
        example = {"id": f"{seed}-{i}", "context": " ".join(context), "history": [], "answers": [answer]}
        examples.append({**example, "question": "which word is not a filler?"})
    return examples


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def span_copy_run(tmp_path: Path, **overrides) -> tuple[Path, list[dict], Recipe]:
    """(base model dir, dev examples, recipe) for training a tiny LongT5 on the span-copy task."""
    from training.tiny import build_tiny_model, build_tokenizer

    base = tmp_path / "base"
    # A little wider than the default tiny model, with tied embeddings (T5's output scaling: a sane
    # initial loss). Seeds 0-4 all pass 50 F1 by epoch 4 of 6 and end at 95-100.
    build_tiny_model(0, d_model=64, d_ff=128, num_heads=4, tie_word_embeddings=True).save_pretrained(base)
    build_tokenizer().save_pretrained(base)
    dev = span_copy_examples(48, seed=2)
    train_file = write_jsonl(tmp_path / "train.jsonl", span_copy_examples(1280, seed=1))
    recipe = recipe_from_dict(
        {
            "model": str(base),
            "output_dir": str(tmp_path / "run"),
            "train_datasets": [{"name": "jsonl", "file": train_file}],
            "eval_datasets": [{"name": "jsonl", "file": write_jsonl(tmp_path / "dev.jsonl", dev)}],
            "max_input_length": 64,
            "max_target_length": 4,
            "eval_max_new_tokens": 3,
            "num_train_epochs": 6,
            "learning_rate": 3e-3,
            "lr_scheduler_type": "constant",
            "per_device_train_batch_size": 32,
            "per_device_eval_batch_size": 48,
            "save_total_limit": 1,
            "seed": 0,
            **overrides,
        }
    )
    return base, dev, recipe


@pytest.mark.slow
def test_a_tiny_longt5_learns_to_copy_a_span(tmp_path):
    from training.evaluation import evaluate_model

    base, dev, recipe = span_copy_run(tmp_path)
    before = evaluate_model(base, dev, max_new_tokens=3, batch_size=48)
    result = train(recipe)
    after = evaluate_model(result["best_checkpoint"], dev, max_new_tokens=3, batch_size=48)
    assert before["f1"] < 10
    assert after["f1"] > 50, result["eval_history"]
    assert after["f1"] == pytest.approx(result["f1"])  # the trainer's F1 is what evaluate.py measures


@pytest.mark.slow
def test_best_checkpoint_is_the_highest_f1_not_the_last(tmp_path):
    from transformers import TrainerCallback

    from training.evaluation import evaluate_model

    class WorseAfterThePeak(TrainerCallback):
        """A run that gets worse after it has learned something (as stage 2's 166 epochs overfit):
        after the first evaluation with F1 > 0, every later step zeroes the weights (after the
        optimizer step, before any evaluation), so later evaluations score 0; two of them, then stop."""

        def __init__(self):
            self.peak_step, self.evaluations_after = None, 0

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if self.peak_step is not None:
                self.evaluations_after += 1
                control.should_training_stop = self.evaluations_after == 2
            elif metrics["eval_f1"] > 0:
                self.peak_step = state.global_step  # its checkpoint is saved right after this

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if self.peak_step is not None:
                with torch.no_grad():
                    for parameter in model.parameters():
                        parameter.zero_()

    _, dev, recipe = span_copy_run(tmp_path, max_steps=100, eval_steps=10)
    worse = WorseAfterThePeak()
    result = train(recipe, callbacks=[worse])

    history = result["eval_history"]
    f1s = [entry["f1"] for entry in history]
    assert worse.peak_step is not None, f"F1 stayed 0 for {len(f1s)} evaluations: {history}"
    assert f1s[-2:] == [0.0, 0.0] and max(f1s) > 0  # F1 really varies
    best = history[f1s.index(max(f1s))]
    assert (result["best_step"], result["f1"], result["exact"]) == (best["step"], best["f1"], best["exact"])
    assert best["step"] == worse.peak_step < result["global_step"]  # not the last checkpoint
    # OUTPUT_DIR/best holds the weights that scored the best F1, not the final (zeroed) ones.
    rescored = evaluate_model(result["best_checkpoint"], dev, max_new_tokens=3, batch_size=48)
    assert rescored["f1"] == pytest.approx(result["f1"]) and rescored["f1"] > 0


# --- data parallel -------------------------------------------------------------------------------


def launch(launcher: list[str], recipe: str, *overrides: str) -> str:
    """Run training.train under `accelerate launch` with two CPU processes; returns the log."""
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", "2"]
    command += ["--num_machines", "1", "--dynamo_backend", "no", "-m", "training.train"]
    command += [str(RECIPES / recipe), "--eval_max_new_tokens", "4", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    return log


@pytest.mark.slow
def test_deepspeed_stage_then_data_parallel_stage_on_two_cpu_processes(tmp_path):
    """Stage 1 under the shipped DeepSpeed ZeRO-2 config, stage 2 from its best/ under DDP (gloo):
    the config follows the recipe's bf16 (false here), best/ holds fp32 weights from the ZeRO checkpoint
    with `shared` saved once, and DDP trains from it (untied copies failed it: unused `shared`)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from training.data import tryocoqa_validation_ids

    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    few = "[{name: squad_v2, file: smoke, split: validation, max_examples: 5}]"
    deepspeed = ["--config_file", str(REPO / "training" / "accelerate" / "deepspeed_zero2.yaml")]
    steps = ["--max_steps", "3", "--eval_datasets", few, "--output_dir", str(stage1)]
    log = launch(deepspeed, "smoke_stage1.yaml", *steps)
    assert "world size 2 (DistributedType.MULTI_CPU)" in log and "bf16 False" in log
    assert "fp32 weights from the ZeRO checkpoint checkpoint-3" in log
    best = load_weights(stage1 / "best")
    assert "shared.weight" in best and "encoder.embed_tokens.weight" not in best  # saved once: tied
    assert {tensor.dtype for tensor in best.values()} == {torch.float32}
    master = get_fp32_state_dict_from_zero_checkpoint(str(stage1 / "checkpoint-3"))
    assert_same_weights(best, {name: master[name] for name in best})
    # With bf16 the model DeepSpeed trains is a bfloat16 copy; best/ still gets the fp32 master weights.
    # (bf16 itself needs a GPU of compute capability >= 8.0: here the live model is cast by hand.)
    from transformers import AutoModelForSeq2SeqLM

    from training.model import write_fp32_from_zero_checkpoint

    live = AutoModelForSeq2SeqLM.from_pretrained(stage1 / "best").to(torch.bfloat16)
    write_fp32_from_zero_checkpoint(live, stage1 / "checkpoint-3", tmp_path / "from-bf16")
    assert_same_weights(load_weights(tmp_path / "from-bf16"), best)

    ddp = ["--multi_gpu", "--mixed_precision", "no"]
    model = ["--model", str(stage1 / "best")]
    log = launch(ddp, "smoke_stage2.yaml", *model, "--max_steps", "2", "--output_dir", str(stage2))
    assert "world size 2 (DistributedType.MULTI_CPU)" in log
    assert "16 examples per optimizer step" in log  # 8 per process x 2 processes
    results = json.loads((stage2 / "results.json").read_text())
    assert results["global_step"] == 2 and (results["world_size"], results["examples_per_step"]) == (2, 16)
    tryocoqa = stage2 / "smoke-data" / "smoke-tryocoqa_v1.json"
    assert results["split"] == {"seed": 42, "validation_ids": tryocoqa_validation_ids(tryocoqa)}
    assert not torch.equal(load_weights(stage2 / "best")["shared.weight"], best["shared.weight"])
