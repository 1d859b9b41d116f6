"""Loading by Hub repo id through the real huggingface_hub code path, offline, from a filled cache.

Each check runs in a subprocess: huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PUBLISHED_ONNX_FILES

from cqa.hub import CONFIG_FILES, DEFAULT_MODEL_ID, FAST_EXPORT_COMMAND

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache: Path, repo_id: str, files: list[Path]) -> Path:
    """Lay ``files`` out as huggingface_hub caches a download: blobs named by hash, snapshot symlinks,
    and refs/main pointing at the commit. Returns the snapshot folder."""
    repo_folder = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_folder / "snapshots" / COMMIT
    (repo_folder / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in files:
        blob = repo_folder / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_folder / "refs").mkdir()
    (repo_folder / "refs" / "main").write_text(COMMIT)
    return snapshot


def run_offline(cache: Path, script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HOME", None)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


LOAD_SCRIPT = """
import json, logging, sys
from cqa.generator import ModelLoadError, Seq2SeqGenerator
logging.basicConfig(level=logging.INFO)  # the load's log lines go to stderr, which the test reads
try:
    generator = Seq2SeqGenerator.load({model!r}, threads=1, revision={revision!r}, quantized={quantized!r})
except ModelLoadError as error:
    print(json.dumps({{"error": str(error)}}))
    sys.exit(0)
answer = generator.generate("the blog post is about the model", max_new_tokens=6, min_new_tokens=6)
print(json.dumps({{"model_id": generator.model_id, "model_dir": str(generator.model_dir),
                  "quantized": generator.files.quantized,
                  "fast_attention": generator.fast_attention, "speed_notice": generator.speed_notice,
                  "text": answer.text, "output_tokens": answer.output_tokens,
                  "heavy": [m for m in ("torch", "transformers", "optimum") if m in sys.modules]}}))
"""


def load_offline(
    cache: Path, model: str, revision: str | None = None, quantized: bool | None = False
) -> dict:
    result = run_offline(cache, LOAD_SCRIPT.format(model=model, revision=revision, quantized=quantized))
    assert result.returncode == 0, result.stderr
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "log": result.stderr}


@pytest.mark.slow
def test_loads_the_default_repo_id_from_the_hub_cache(tiny_dir, tmp_path):
    from cqa.generator import Seq2SeqGenerator

    export = tiny_dir / "onnx"
    snapshot = fill_hub_cache(tmp_path / "hub", DEFAULT_MODEL_ID, sorted(export.iterdir()))

    loaded = load_offline(tmp_path / "hub", DEFAULT_MODEL_ID)
    assert "error" not in loaded, loaded
    assert loaded["model_id"] == DEFAULT_MODEL_ID
    assert Path(loaded["model_dir"]) == snapshot
    assert loaded["output_tokens"] == 6
    assert loaded["heavy"] == []  # the Hub path stays torch-free too
    local = Seq2SeqGenerator.load(export, threads=1)
    assert loaded["text"] == local.generate("the blog post is about the model", 6, 6).text

    pinned = load_offline(tmp_path / "hub", DEFAULT_MODEL_ID, revision=COMMIT)
    assert Path(pinned["model_dir"]) == snapshot
    message = load_offline(tmp_path / "hub", DEFAULT_MODEL_ID, revision="v2")["error"]
    assert "revision 'v2'" in message and "--model DIR" in message


@pytest.mark.slow
def test_loads_the_published_repo_as_it_is(published_like_dir, tmp_path):
    """The published repo's exact file list (no generation_config.json), its stock graph and its
    December 2022 with-past decoder, from the Hub cache as a Space's build leaves it."""
    from cqa.generator import Seq2SeqGenerator, cpu_summary

    files = sorted(published_like_dir.iterdir())
    assert sorted(p.name for p in files) == sorted(PUBLISHED_ONNX_FILES)
    fill_hub_cache(tmp_path / "hub", DEFAULT_MODEL_ID, files)
    expected = Seq2SeqGenerator.load(published_like_dir, threads=1).generate(
        "the blog post is about the model", 6, 6
    )
    for quantized in (None, False):  # --precision auto (the app's default), then fp32
        loaded = load_offline(tmp_path / "hub", DEFAULT_MODEL_ID, quantized=quantized)
        assert "error" not in loaded, loaded
        assert loaded["output_tokens"] == 6 and loaded["text"] == expected.text
        assert loaded["quantized"] is False and loaded["fast_attention"] is False
        assert FAST_EXPORT_COMMAND in loaded["speed_notice"]
        assert "stock ONNX export" in loaded["log"] and FAST_EXPORT_COMMAND in loaded["log"]
        assert f"CPU: {cpu_summary()}" in loaded["log"]  # the Space's CPU flags, once, at load


def test_the_space_preloads_only_files_the_published_repo_has():
    """README's front matter: preload_from_hub names files of the published repo only (a missing one can
    fail the Space's build), and all the files the app needs from it."""
    front_matter = (REPO / "README.md").read_text(encoding="utf-8").split("---\n")[1]
    lines = front_matter.splitlines()
    entries = lines[lines.index("preload_from_hub:") + 1 :]
    preloads = {}
    for line in entries:
        if not line.startswith("  - "):
            break
        repo, _, names = line.removeprefix("  - ").partition(" ")
        preloads[repo] = names.split(",")
    assert preloads.keys() == {DEFAULT_MODEL_ID}
    names = preloads[DEFAULT_MODEL_ID]
    assert set(names) <= set(PUBLISHED_ONNX_FILES), set(names) - set(PUBLISHED_ONNX_FILES)
    needed = {*CONFIG_FILES, "encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"}
    assert needed <= set(names), needed - set(names)


@pytest.mark.slow
def test_loads_a_merged_export_from_the_hub_cache(tiny_dir, tmp_path):
    from optimum.onnx import merge_decoders

    export = tiny_dir / "onnx"
    merged = tmp_path / "merged" / "decoder_model_merged.onnx"
    merged.parent.mkdir()
    merge_decoders(
        export / "decoder_model.onnx", export / "decoder_with_past_model.onnx", save_path=merged, strict=False
    )
    files = [p for p in export.iterdir() if not p.name.startswith("decoder")] + [merged]
    fill_hub_cache(tmp_path / "hub", "someone/merged-export", files)
    loaded = load_offline(tmp_path / "hub", "someone/merged-export")
    assert loaded.get("output_tokens") == 6, loaded


@pytest.mark.slow
def test_auto_precision_from_the_hub_cache(tiny_dir, quantized_dir, tmp_path):
    # The published repo has fp32 files only: auto serves those. A repo with int8 files too: int8.
    fill_hub_cache(tmp_path / "hub", DEFAULT_MODEL_ID, sorted((tiny_dir / "onnx").iterdir()))
    fill_hub_cache(tmp_path / "hub", "someone/with-int8", sorted(quantized_dir.iterdir()))
    published = load_offline(tmp_path / "hub", DEFAULT_MODEL_ID, quantized=None)
    assert published.get("quantized") is False, published
    with_int8 = load_offline(tmp_path / "hub", "someone/with-int8", quantized=None)
    assert with_int8.get("quantized") is True, with_int8
    assert with_int8["output_tokens"] == 6


def test_repo_not_in_the_cache_is_a_clear_error(tmp_path):
    (tmp_path / "hub").mkdir()
    loaded = load_offline(tmp_path / "hub", "someone/not-in-the-cache")
    message = loaded["error"]
    assert "someone/not-in-the-cache" in message
    assert "HF_HUB_OFFLINE" in message
    assert "--model DIR" in message and "make demo" in message


def test_the_commands_the_messages_advise_exist():
    """The way out named on the error page and the fast-export notice are make targets that run what the
    messages say (make -n prints the commands without running them; -B as on a fresh clone, whatever is
    already built here)."""
    from cqa.hub import HOW_TO_FIX

    assert "`make demo`" in HOW_TO_FIX
    demo = subprocess.run(["make", "-n", "-B", "demo"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert demo.returncode == 0, demo.stderr
    assert "-m training.tiny out/demo" in demo.stdout and "app.py --model out/demo/onnx" in demo.stdout
    fast = subprocess.run(["make", "-n", "fast-model"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert fast.returncode == 0, fast.stderr
    assert FAST_EXPORT_COMMAND.removeprefix("python ") in fast.stdout


def test_incomplete_snapshot_names_the_missing_files(tiny_dir, tmp_path):
    export = tiny_dir / "onnx"
    files = [p for p in export.iterdir() if p.name != "encoder_model.onnx"]
    fill_hub_cache(tmp_path / "hub", DEFAULT_MODEL_ID, files)
    message = load_offline(tmp_path / "hub", DEFAULT_MODEL_ID)["error"]
    assert DEFAULT_MODEL_ID in message and "missing encoder_model.onnx." in message
