"""The release export: three-file ONNX layout, the parity gate (seen passing and failing), int8."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cqa.format import build_model_input
from training import export

REPO = Path(__file__).resolve().parents[1]
CONTEXT = "The blog post explains how a long model reads a long document and answers questions about it."
QUESTION = "What does the model read?"


def _hf_tokens(model, tokenizer, text: str, new_tokens: int) -> list[int]:
    """transformers' greedy generate (PyTorch or optimum's ORT model), start and </s> removed."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    output = model.generate(input_ids=ids, max_new_tokens=new_tokens, do_sample=False, num_beams=1)
    return [t for t in output[0].tolist()[1:] if t != tokenizer.eos_token_id]


def test_export_layout_and_both_loaders_agree_with_pytorch(tiny_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    onnx_dir = tiny_dir / "onnx"
    for name in [*export.ONNX_FILES, "config.json", "generation_config.json", "tokenizer.json", "README.md"]:
        assert (onnx_dir / name).is_file(), name
    assert not (onnx_dir / "decoder_model_merged.onnx").exists()
    assert not list(tiny_dir.glob(".*staging*")), "the staging folder was left behind"

    parity = json.loads((onnx_dir / "parity.json").read_text())
    assert 8 in parity["lengths"] and len(parity["lengths"]) >= 3  # all 5 by default (the pipeline test)
    assert parity["passed"] and all(parity["greedy_equal"])
    assert max(parity["max_relative_error"]) < export.MAX_RELATIVE_ERROR
    card = (onnx_dir / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: text2text-generation" in card
    assert f"{max(parity['max_relative_error']):.1e}" in card  # the real figure, not a placeholder

    text = build_model_input(CONTEXT, [("Who wrote it?", "A team.")], QUESTION)
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    reference = _hf_tokens(AutoModelForSeq2SeqLM.from_pretrained(tiny_dir / "model"), tokenizer, text, 12)
    optimum_model = export.load_ort_model(onnx_dir)
    assert not optimum_model.use_merged
    assert _hf_tokens(optimum_model, tokenizer, text, 12) == reference
    assert len(reference) > 0

    from cqa.generator import Seq2SeqGenerator

    generator = Seq2SeqGenerator.load(onnx_dir, threads=1)
    answer = generator.generate(text, max_new_tokens=12)
    assert answer.text == generator.tokenizer.decode(reference, skip_special_tokens=True)


def _corrupt_biggest_initializer(path: Path) -> str:
    """Scale the largest float weight of an ONNX file by 1.5 (a silently wrong export)."""
    model = onnx.load(str(path))
    weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    target = max(weights, key=lambda i: np.prod(i.dims))
    array = numpy_helper.to_array(target) * 1.5
    target.CopyFrom(numpy_helper.from_array(array.astype(np.float32), target.name))
    onnx.save(model, str(path))
    return target.name


@pytest.mark.slow
def test_parity_gate_catches_a_corrupted_encoder_weight(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir / "onnx", broken)
    _corrupt_biggest_initializer(broken / "encoder_model.onnx")

    report = export.check_parity(tiny_dir / "model", broken, lengths=(40, 300))
    assert not report.passed
    assert min(report.max_relative_error) > 100 * export.MAX_RELATIVE_ERROR
    assert "max rel err" in report.summary()

    intact = export.check_parity(tiny_dir / "model", tiny_dir / "onnx", lengths=(40,))
    assert intact.passed


@pytest.mark.slow
def test_short_trace_export_fails_the_gate_and_publishes_nothing(tiny_dir, tmp_path, capsys):
    # The old TGlobal bug: tracing with fewer tokens than global_block_size (4 in the tiny model) bakes
    # `num_globals == 0` into the graph, which breaks every longer input.
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "previous-release.txt").write_text("an older, good export")
    code = export.main(
        [str(tiny_dir / "model"), str(out), "--trace-length", "3", "--parity-lengths", "8", "40"]
    )
    assert code == 1
    assert "export failed" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["previous-release.txt"], "the old release must stay as it was"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx"], "no staging folder left behind"


def test_export_refuses_a_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    assert export.main([str(tmp_path / "nothing"), str(tmp_path / "out")]) == 1
    assert "not a model checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_export_with_int8(tiny_dir, tmp_path):
    from cqa.generator import Seq2SeqGenerator

    out = tmp_path / "release" / "onnx"
    code = export.main(
        [str(tiny_dir / "model"), str(out), "--quantize", "int8", "--parity-lengths", "8", "300", "1500"]
    )
    assert code == 0
    int8_dir = out  # the int8 files beside the fp32 ones, under optimum's names
    for name in [*export.ONNX_FILES, *export.QUANTIZED_FILES, "config.json", "tokenizer.json", "int8.json"]:
        assert (int8_dir / name).is_file(), name
    assert sorted(p.name for p in (tmp_path / "release").iterdir()) == ["onnx"]  # no OUT-int8 any more

    ops = {node.op_type for node in onnx.load(str(int8_dir / "encoder_model_quantized.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops and ("MatMulInteger" in ops or "MatMulIntegerToFloat" in ops)
    report = json.loads((int8_dir / "int8.json").read_text())
    assert report["lengths"] == [8, 300, 1500]
    assert 0.0 <= report["agreement"] <= 1.0
    assert report["agreement"] == sum(report["greedy_equal"]) / 3
    assert report["settings"]["weight_type"] == "QInt8"
    assert "dynamic int8" in (int8_dir / "README.md").read_text()
    # With fp32's tokens forced: logits within a few percent (the figure that holds on an untrained model).
    assert len(report["max_relative_error"]) == len(report["top_token_equal"]) == 3
    assert all(0 < e <= export.INT8_MAX_RELATIVE_ERROR for e in report["max_relative_error"])
    assert report["logits_close"] and all(0.0 <= t <= 1.0 for t in report["top_token_equal"])

    # The runtime serves the int8 files of the folder by default, and knows they are int8.
    generator = Seq2SeqGenerator.load(int8_dir, threads=1, quantized=None)  # the app's --precision auto
    assert generator.files.quantized and not Seq2SeqGenerator.load(out, threads=1).files.quantized
    answer = generator.generate(build_model_input(CONTEXT, [], QUESTION), 8)
    assert answer.done and answer.output_tokens > 0

    # A wrong quantization (one weight scale of one layer off by 2x) is far outside the tolerance.
    broken = tmp_path / "broken-int8"
    shutil.copytree(int8_dir, broken)
    for name in ("decoder_model_quantized.onnx", "decoder_with_past_model_quantized.onnx"):
        _double_weight_scale(broken / name, "block.0/layer.2/DenseReluDense/wo")
    figures = export.compare_int8(broken, lengths=(8, 300))
    assert min(figures["max_relative_error"]) > 2 * export.INT8_MAX_RELATIVE_ERROR, figures


def test_quantize_folder_writes_optimums_names_beside_the_fp32_files(tiny_dir, tmp_path):
    folder = tmp_path / "onnx"
    shutil.copytree(tiny_dir / "onnx", folder)
    written = export.quantize_folder(folder)
    assert [p.name for p in written] == list(export.QUANTIZED_FILES)
    assert not list(folder.glob(".*partial*")), "a partial file was left behind"
    for name in export.ONNX_FILES:  # the fp32 files are untouched, each int8 copy is quantized
        assert (folder / name).read_bytes() == (tiny_dir / "onnx" / name).read_bytes()
    ops = {n.op_type for n in onnx.load(str(folder / "decoder_model_quantized.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops
    with pytest.raises(export.ExportError, match=r"not an ONNX export: missing encoder_model\.onnx"):
        export.quantize_folder(tmp_path / "empty")


def _double_weight_scale(path: Path, node_name_part: str) -> None:
    """Double the int8 weight scale of the quantized MatMul whose name contains ``node_name_part``."""
    model = onnx.load(str(path))
    initializers = {i.name: i for i in model.graph.initializer}
    node = next(
        n for n in model.graph.node if node_name_part in n.name and n.op_type != "DynamicQuantizeLinear"
    )
    scale = next(initializers[x] for x in node.input if x.endswith("_scale") and x in initializers)
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 2, scale.name))
    onnx.save(model, str(path))


@pytest.mark.slow
def test_gate_catches_the_stock_export_failing_below_one_global_block(tmp_path):
    # The released model has global_block_size 16: an 8-token input has no global block at all. The
    # stock LongT5 graph fails there in ONNX Runtime; the gate must say so, and publish nothing.
    from training.tiny import build_tiny_model, build_tokenizer

    checkpoint = tmp_path / "model"
    build_tiny_model(0, global_block_size=16, local_radius=8).save_pretrained(checkpoint)
    build_tokenizer().save_pretrained(checkpoint)
    with pytest.raises(export.ParityError, match="8 tokens: ONNX Runtime failed"):
        export.export_onnx(checkpoint, tmp_path / "stock", fast_attention=False, parity_lengths=(8, 40))
    assert not (tmp_path / "stock").exists()

    export.export_onnx(checkpoint, tmp_path / "patched", parity_lengths=(8, 15, 17, 40))
    assert json.loads((tmp_path / "patched" / "parity.json").read_text())["passed"]


# --- a Hub repo id as the checkpoint (offline, from a filled Hub cache) --------------------------------


def _export_offline(cache: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m training.export ARGS` with only the Hub cache ``cache`` (huggingface_hub reads these
    variables when imported, so a fresh process)."""
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "training.export", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_export_takes_a_hub_repo_id(tiny_dir, tmp_path):
    from test_hub_loading import fill_hub_cache

    files = sorted(p for p in (tiny_dir / "model").iterdir() if p.is_file())
    assert any(p.suffix == ".safetensors" for p in files)
    fill_hub_cache(tmp_path / "hub", "org/tiny-cqa", files)

    out = tmp_path / "onnx"
    done = _export_offline(tmp_path / "hub", "org/tiny-cqa", str(out), "--parity-lengths", "8", "40")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fetching org/tiny-cqa" in done.stderr
    assert all((out / name).is_file() for name in [*export.ONNX_FILES, "config.json", "tokenizer.json"])
    assert json.loads((out / "parity.json").read_text())["passed"]


@pytest.mark.slow
def test_export_of_a_repo_id_missing_from_the_offline_cache_says_what_to_do(tmp_path):
    (tmp_path / "hub").mkdir()
    done = _export_offline(tmp_path / "hub", "org/not-cached", str(tmp_path / "onnx"))
    assert done.returncode == 1
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("export failed: 'org/not-cached' is not a local folder")
    assert "HF_HUB_OFFLINE is set" in message and "hf download org/not-cached --local-dir DIR" in message
    assert not (tmp_path / "onnx").exists()


def test_a_repo_download_fetches_weights_configs_and_tokenizer_only():
    from huggingface_hub.utils import filter_repo_objects

    repo = [  # a checkpoint repo as the Hub holds one, weights in several formats
        *("config.json", "generation_config.json", "spiece.model", "tokenizer.json", "tokenizer_config.json"),
        *("special_tokens_map.json", "added_tokens.json", "README.md", ".gitattributes"),
        *("model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "rust_model.ot"),
        *("optimizer.pt", "scheduler.pt", "training_args.bin", "onnx/encoder_model.onnx"),
    ]
    safetensors = set(filter_repo_objects(repo, allow_patterns=export._patterns(safetensors=True)))
    pytorch = set(filter_repo_objects(repo, allow_patterns=export._patterns(safetensors=False)))
    wanted = {*export.CONFIG_FILES, *export.TOKENIZER_FILES, "added_tokens.json"}
    assert safetensors == wanted | {"model.safetensors"}
    assert pytorch == wanted | {"pytorch_model.bin"}
    sharded = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = "model.safetensors.index.json"
    kept = set(filter_repo_objects([*sharded, index], allow_patterns=export._patterns(True)))
    assert kept == {*sharded, index}


def test_a_local_folder_is_never_taken_for_a_repo_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert export.resolve_checkpoint("org/name") == Path("org/name")
    assert export.resolve_checkpoint(tmp_path / "missing") == tmp_path / "missing"  # not "org/name"-shaped


def test_int8_integer_products_are_exact_on_this_cpu():
    # int8 answers can only differ between CPUs (VNNI, AMX...) if ONNX Runtime's u8 x s8 products do:
    # they must equal the exact integer products (no int16 saturation: what reduce_range works around).
    import onnxruntime
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    for m, k, n in [(7, 32, 32), (300, 32, 64), (16, 32, 32_128), (64, 768, 2048)]:  # tiny model, LM head
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "b", "a_zero"], ["y"])],
            "matmul_integer",
            [
                helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k]),
                helper.make_tensor_value_info("b", TensorProto.INT8, [k, n]),
                helper.make_tensor_value_info("a_zero", TensorProto.UINT8, []),
            ],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        a = rng.integers(0, 256, (m, k), dtype=np.uint8)
        b = rng.integers(-128, 128, (k, n), dtype=np.int8)
        zero = np.array(131, dtype=np.uint8)
        (got,) = session.run(None, {"a": a, "b": b, "a_zero": zero})
        np.testing.assert_array_equal(got, (a.astype(np.int64) - 131) @ b.astype(np.int64))
