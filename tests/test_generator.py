"""The ONNX Runtime generator against transformers' PyTorch generate, on the tiny random LongT5."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cqa.generator import (
    FAST_EXPORT_COMMAND,
    Answer,
    ModelLoadError,
    Seq2SeqGenerator,
    cpu_features,
    cpu_summary,
    default_threads,
)
from cqa.hub import FAST_ATTENTION_FUNCTION, onnx_functions

REPO = Path(__file__).resolve().parents[1]
ONNX_NAMES = ("encoder_model", "decoder_model", "decoder_with_past_model")


@pytest.fixture(scope="module")
def generator(tiny_dir: Path) -> Seq2SeqGenerator:
    return Seq2SeqGenerator.load(tiny_dir / "onnx", threads=1)


@pytest.fixture(scope="module")
def torch_model(tiny_dir: Path):
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(tiny_dir / "model").eval()


def random_input_ids(n_tokens: int, seed: int) -> list[int]:
    """``n_tokens`` ids as the tokenizer makes them: ordinary pieces, then end-of-sequence (1)."""
    rng = np.random.default_rng(seed)
    return [*rng.integers(3, 32_000, size=n_tokens - 1).tolist(), 1]


def torch_greedy(model, input_ids: list[int], max_new_tokens: int, min_new_tokens: int = 0) -> list[int]:
    """transformers' greedy generate: the new ids, without the start token and the final eos."""
    import torch

    with torch.no_grad():
        output = model.generate(
            torch.tensor([input_ids]),
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            num_beams=1,
            do_sample=False,
        )
    ids = output[0, 1:].tolist()
    eos = model.generation_config.eos_token_id
    return ids[: ids.index(eos)] if eos in ids else ids


def onnx_greedy(generator: Seq2SeqGenerator, input_ids: list[int], max_new_tokens: int, min_new_tokens=0):
    hidden, mask = generator.encode(input_ids)
    return list(generator.decode_ids(hidden, mask, max_new_tokens, min_new_tokens))


# The tiny model's blocks (training.tiny.TINY_CONFIG): local blocks of 16 tokens (local_radius 15), global
# blocks of 32. Under 32 tokens there is no global block (the runtime pads such inputs to one, masked);
# 16, 17 and 49 cross local blocks, 31-33, 63 and 65 the edges of global blocks; 300 and 1100 hold many.
@pytest.mark.parametrize("n_tokens", [2, 3, 16, 17, 31, 32, 33, 49, 63, 65, 300, 1100])
def test_greedy_ids_match_transformers(generator, torch_model, n_tokens):
    input_ids = random_input_ids(n_tokens, seed=n_tokens)
    for min_new_tokens in (0, 24):
        expected = torch_greedy(torch_model, input_ids, max_new_tokens=24, min_new_tokens=min_new_tokens)
        got = onnx_greedy(generator, input_ids, max_new_tokens=24, min_new_tokens=min_new_tokens)
        assert got == expected, f"{n_tokens} input tokens, min_new_tokens={min_new_tokens}"
    # A random model can collapse into one repeated token; then the comparison would prove little.
    assert len(set(got)) > 3, got


def test_text_path_matches_transformers(generator, torch_model, tiny_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "model")
    text = "A blog post about long documents. || <Q1> What is it about? <A1> Models. <Q> Which one? <A> "
    input_ids = tokenizer(text).input_ids
    assert generator.count_tokens(text) == len(input_ids)
    expected = torch_greedy(torch_model, input_ids, max_new_tokens=16, min_new_tokens=16)

    answer = generator.generate(text, max_new_tokens=16, min_new_tokens=16)
    assert answer.text == tokenizer.decode(expected, skip_special_tokens=True)
    assert answer.done
    assert answer.input_tokens == len(input_ids)
    assert answer.output_tokens == 16
    assert 0 < answer.encoder_seconds <= answer.seconds


@pytest.mark.slow
def test_real_t5_vocabulary_text_matches_transformers(tiny_real_tokenizer_dir):
    """With the genuine T5 SentencePiece vocabulary: same input ids, same answer ids, same answer text."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_real_tokenizer_dir / "model")
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_real_tokenizer_dir / "model").eval()
    generator = Seq2SeqGenerator.load(tiny_real_tokenizer_dir / "onnx", threads=1)
    text = (
        "LongT5 answers questions about long blog posts, e.g. 7,000 tokens (about 30 pages). "
        "|| <Q1> What is it? <A1> A model. <Q> How fast is it? <A> "
    )
    input_ids = tokenizer(text).input_ids
    assert generator.tokenizer.encode(text).ids == input_ids
    assert input_ids.count(32100) == 1 and input_ids.count(32101) == 1 and input_ids.count(32102) == 1
    expected = torch_greedy(model, input_ids, max_new_tokens=20, min_new_tokens=20)
    assert onnx_greedy(generator, input_ids, 20, 20) == expected
    steps = list(generator.stream(text, max_new_tokens=20, min_new_tokens=20))
    assert steps[-1].text == tokenizer.decode(expected, skip_special_tokens=True)
    assert all(step.text and steps[-1].text.startswith(step.text) for step in steps)


def test_count_tokens_includes_end_of_sequence(generator):
    assert generator.count_tokens("") == 1
    assert generator.count_tokens("the model") == 3  # "▁the", "▁model", "</s>"
    ids = generator.tokenizer.encode("x || <Q> q <A> ").ids
    assert {32100, 32101, 32102} <= set(ids) and ids[-1] == 1


def test_empty_and_short_inputs_generate(generator):
    # Shorter than one global block (32 tokens here, 16 in the real model): padded, masked, still works.
    assert generator.generate("", max_new_tokens=4, min_new_tokens=4).output_tokens == 4
    assert generator.generate("the model", max_new_tokens=4, min_new_tokens=4).input_tokens == 3


def test_stream_yields_growing_prefixes_then_the_final_answer(generator):
    steps = list(generator.stream("the blog post", max_new_tokens=12, min_new_tokens=12))
    final = steps[-1]
    assert all(isinstance(step, Answer) for step in steps)
    assert final.done and not any(step.done for step in steps[:-1])
    assert final.text == generator.generate("the blog post", max_new_tokens=12, min_new_tokens=12).text
    assert len(steps) > 2
    texts = [step.text for step in steps[:-1]]
    assert len(set(texts)) == len(texts), "a step was yielded without new text"
    for previous, current in itertools.pairwise(steps):
        assert current.text.startswith(previous.text)
        assert current.output_tokens >= previous.output_tokens
        assert current.seconds >= previous.seconds
    assert final.text.startswith(texts[-1])
    assert final.output_tokens == 12


def test_max_new_tokens_is_a_limit(generator):
    assert generator.generate("the blog post is about", max_new_tokens=3).output_tokens <= 3
    with pytest.raises(ValueError, match="max_new_tokens"):
        generator.generate("the blog post is about", max_new_tokens=0)


def test_concurrent_calls_give_the_same_answers(generator):
    texts = [f"document {i} is about the model and the data" for i in range(4)]
    expected = [generator.generate(text, 16, 16).text for text in texts]
    results: dict[int, str] = {}

    def work(i: int) -> None:
        results[i] = generator.generate(texts[i], 16, 16).text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(4)] == expected


def test_threads_are_honoured(tiny_dir):
    generator = Seq2SeqGenerator.load(tiny_dir / "onnx", threads=1)
    sessions = [generator.encoder, generator.decoder, generator.decoder_with_past]
    assert generator.threads == 1
    assert all(s.get_session_options().intra_op_num_threads == 1 for s in sessions)
    assert all(s.get_session_options().inter_op_num_threads == 1 for s in sessions)

    default = Seq2SeqGenerator.load(tiny_dir / "onnx")
    assert default.threads == default_threads() >= 1
    assert default.encoder.get_session_options().intra_op_num_threads == default.threads


def test_warmup_runs(generator):
    generator.warmup()  # both decoders run: it must not raise, and generation still works afterwards
    assert generator.generate("the blog post is about", 4, 4).output_tokens == 4


def test_warmup_runs_at_the_length_it_is_given(generator):
    """The app warms up at its longest input: its first answer then touches no memory for the first time."""
    for tokens in (300, 700):
        answer = generator.warmup(tokens)
        assert 0.85 * tokens <= answer.input_tokens <= 1.1 * tokens + 12, (tokens, answer.input_tokens)
        assert answer.output_tokens == 2


# --- layouts: merged decoder and int8 ----------------------------------------------------------------


@pytest.fixture(scope="module")
def merged_dir(tiny_dir: Path, tmp_path_factory) -> Path:
    """The tiny export in the merged layout, as optimum's post-processing writes it."""
    from optimum.onnx import merge_decoders

    out = tmp_path_factory.mktemp("merged")
    for path in (tiny_dir / "onnx").iterdir():
        if not path.name.startswith("decoder"):
            shutil.copy(path, out / path.name)
    merge_decoders(
        tiny_dir / "onnx" / "decoder_model.onnx",
        tiny_dir / "onnx" / "decoder_with_past_model.onnx",
        save_path=out / "decoder_model_merged.onnx",
        strict=False,  # seq2seq: only the first-step decoder outputs the cross-attention cache
    )
    return out


@pytest.mark.slow
def test_merged_layout_gives_the_same_ids(generator, merged_dir):
    merged = Seq2SeqGenerator.load(merged_dir, threads=1)
    assert merged.files.merged and merged.files.decoder.name == "decoder_model_merged.onnx"
    for n_tokens in (9, 300):
        input_ids = random_input_ids(n_tokens, seed=n_tokens)
        for min_new_tokens in (0, 20):
            assert onnx_greedy(merged, input_ids, 20, min_new_tokens) == onnx_greedy(
                generator, input_ids, 20, min_new_tokens
            )


def _has_int8_weights(path: Path) -> bool:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return any(init.data_type == onnx.TensorProto.INT8 for init in model.graph.initializer)


@pytest.mark.slow
def test_quantized_picks_the_quantized_files(quantized_dir, tmp_path):
    int8 = Seq2SeqGenerator.load(quantized_dir, threads=1, quantized=True)
    files = [int8.files.encoder, int8.files.decoder, int8.files.decoder_with_past]
    assert [f.name for f in files] == [f"{name}_quantized.onnx" for name in ONNX_NAMES]
    assert all(_has_int8_weights(f) for f in files)
    answer = int8.generate("the blog post is about", max_new_tokens=8, min_new_tokens=8)
    assert answer.output_tokens == 8 and answer.text

    fp32 = Seq2SeqGenerator.load(quantized_dir, threads=1)
    assert fp32.files.encoder.name == "encoder_model.onnx"
    assert not _has_int8_weights(fp32.files.encoder)

    # A folder whose files are int8 under the plain names loads normally.
    plain = tmp_path / "int8-plain"
    plain.mkdir()
    for path in quantized_dir.iterdir():
        if not path.name.endswith(".onnx"):
            shutil.copy(path, plain / path.name)
    for name in ONNX_NAMES:
        shutil.copy(quantized_dir / f"{name}_quantized.onnx", plain / f"{name}.onnx")
    loaded = Seq2SeqGenerator.load(plain, threads=1)
    assert loaded.generate("the blog post is about", 8, 8).text == answer.text


def test_auto_precision_takes_int8_only_when_the_export_has_it(quantized_dir, tiny_dir):
    auto = Seq2SeqGenerator.load(quantized_dir, threads=1, quantized=None)
    assert auto.files.quantized and auto.files.encoder.name == "encoder_model_quantized.onnx"
    plain = Seq2SeqGenerator.load(tiny_dir / "onnx", threads=1, quantized=None)
    assert not plain.files.quantized and plain.files.encoder.name == "encoder_model.onnx"


# --- other exporters: the published stock export (December 2022 optimum), int32 ids ------------------


def test_stock_export_is_known_and_says_how_to_get_a_fast_one(generator, stock_dir, quantized_dir):
    assert generator.fast_attention and generator.speed_notice is None
    int8 = Seq2SeqGenerator.load(quantized_dir, threads=1, quantized=True)
    assert int8.fast_attention, "the quantizer must keep the fused attention (and its mark)"
    stock = Seq2SeqGenerator.load(stock_dir, threads=1)
    assert not stock.fast_attention and not stock.files.fast_attention
    assert FAST_EXPORT_COMMAND in stock.speed_notice and stock.model_id in stock.speed_notice
    assert "python -m training.export" in FAST_EXPORT_COMMAND and "--quantize int8" in FAST_EXPORT_COMMAND


def test_onnx_functions_reads_what_onnx_reads(tiny_dir, stock_dir, tmp_path):
    import onnx

    for path in [*(tiny_dir / "onnx").glob("*.onnx"), stock_dir / "encoder_model.onnx"]:
        expected = {(f.domain, f.name) for f in onnx.load(str(path), load_external_data=False).functions}
        assert onnx_functions(path) == expected, path
    assert FAST_ATTENTION_FUNCTION in onnx_functions(tiny_dir / "onnx" / "encoder_model.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"\xff\xff\xff")  # unreadable: no functions, no crash
    assert onnx_functions(tmp_path / "broken.onnx") == set()


@pytest.mark.parametrize("n_tokens", [5, 40, 300])
def test_the_published_export_layout_matches_transformers(published_like_dir, torch_model, n_tokens):
    """Stock graph (fails unpadded under one global block), no generation_config.json, and a with-past
    decoder that declares encoder_hidden_states and outputs the cross-attention cache."""
    generator = Seq2SeqGenerator.load(published_like_dir, threads=1, quantized=None)
    assert "encoder_hidden_states" in {i.name for i in generator.decoder_with_past.get_inputs()}
    assert not generator.fast_attention and not generator.files.quantized
    input_ids = random_input_ids(n_tokens, seed=n_tokens)
    for min_new_tokens in (0, 24):
        expected = torch_greedy(torch_model, input_ids, max_new_tokens=24, min_new_tokens=min_new_tokens)
        assert onnx_greedy(generator, input_ids, 24, min_new_tokens) == expected


def _int32_inputs(path: Path, names: set[str]) -> None:
    """Make the graph inputs ``names`` int32, cast back to int64 where they are read."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    for graph_input in [i for i in graph.input if i.name in names]:
        as_int64 = graph_input.name + "_as_int64"
        for node in graph.node:
            node.input[:] = [as_int64 if name == graph_input.name else name for name in node.input]
        graph.node.insert(0, helper.make_node("Cast", [graph_input.name], [as_int64], to=TensorProto.INT64))
        graph_input.type.tensor_type.elem_type = TensorProto.INT32
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def int32_dir(tiny_dir: Path, tmp_path_factory) -> Path:
    """The tiny export with int32 ids in every session and an int32 mask in the decoders only (so the
    encoder's int64 mask must be converted for them)."""
    out = tmp_path_factory.mktemp("int32")
    for path in (tiny_dir / "onnx").iterdir():
        shutil.copy(path, out / path.name)
    _int32_inputs(out / "encoder_model.onnx", {"input_ids"})
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        _int32_inputs(out / name, {"input_ids", "encoder_attention_mask"})
    return out


def test_int32_inputs_are_fed_as_declared(generator, int32_dir):
    int32 = Seq2SeqGenerator.load(int32_dir, threads=1)
    types = {i.name: i.type for s in (int32.encoder, int32.decoder_with_past) for i in s.get_inputs()}
    assert types["input_ids"] == "tensor(int32)" and types["encoder_attention_mask"] == "tensor(int32)"
    assert types["attention_mask"] == "tensor(int64)"
    for n_tokens in (5, 40, 300):  # 5: padded to one global block, so the mask has zeros
        input_ids = random_input_ids(n_tokens, seed=n_tokens)
        assert onnx_greedy(int32, input_ids, 20, 20) == onnx_greedy(generator, input_ids, 20, 20)


def test_an_input_the_runtime_cannot_feed_is_named(tiny_dir, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    for path in (tiny_dir / "onnx").iterdir():
        shutil.copy(path, tmp_path / path.name)
    model = onnx.load(str(tmp_path / "decoder_model.onnx"))
    model.graph.input.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, [1, None]))
    onnx.save(model, str(tmp_path / "decoder_model.onnx"))
    with pytest.raises(ModelLoadError, match=r"decoder_model\.onnx declares inputs .*\(token_type_ids\)"):
        Seq2SeqGenerator.load(tmp_path, threads=1)


def test_a_decoder_without_the_cache_outputs_is_named(tiny_dir, tmp_path):
    import onnx

    for path in (tiny_dir / "onnx").iterdir():
        shutil.copy(path, tmp_path / path.name)
    model = onnx.load(str(tmp_path / "decoder_with_past_model.onnx"))
    outputs = [o for o in model.graph.output if o.name != "present.0.decoder.key"]
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    onnx.save(model, str(tmp_path / "decoder_with_past_model.onnx"))
    with pytest.raises(
        ModelLoadError, match=r"decoder_with_past_model\.onnx lacks .*present\.0\.decoder\.key"
    ):
        Seq2SeqGenerator.load(tmp_path, threads=1)


# --- the CPU --------------------------------------------------------------------------------------------


def test_cpu_features_read_proc_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n\n"
        "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
    )
    features = cpu_features(cpuinfo)
    assert features == {
        "avx2": True,
        "avx512f": True,
        "avx512_vnni": True,
        "avx512_bf16": False,
        "amx_tile": False,
        "amx_int8": False,
    }
    summary = cpu_summary(cpuinfo)
    assert "avx2 avx512f avx512_vnni (no avx512_bf16 amx_tile amx_int8)" in summary
    assert f"{default_threads()} core(s)" in summary
    assert not any(cpu_features(tmp_path / "missing").values())  # macOS, Windows: no crash
    assert "CPU flags unknown" in cpu_summary(tmp_path / "missing")
    assert set(cpu_features()) == set(features)  # this machine's, whatever they are


# --- end of sequence ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eos_dir(tiny_dir: Path, tmp_path_factory) -> Path:
    """A tiny model that says end-of-sequence after a few tokens: its eos output row is a copy (x1.01)
    of the row of a token it emits at step 3, so greedy decoding picks eos there instead."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from training.export import export_onnx

    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_dir / "model").eval()
    fourth_token = torch_greedy(model, random_input_ids(40, seed=40), 8, 8)[3]
    with torch.no_grad():
        model.lm_head.weight[1] = model.lm_head.weight[fourth_token] * 1.01
    out = tmp_path_factory.mktemp("eos")
    model.save_pretrained(out / "model")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny_dir / "model" / name, out / "model" / name)
    export_onnx(out / "model", out / "onnx")
    return out


@pytest.mark.slow
def test_end_of_sequence_and_min_new_tokens_match_transformers(eos_dir):
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(eos_dir / "model").eval()
    generator = Seq2SeqGenerator.load(eos_dir / "onnx", threads=1)
    input_ids = random_input_ids(40, seed=40)
    stopped = torch_greedy(model, input_ids, max_new_tokens=24)
    assert 0 < len(stopped) < 24, "the fixture model should stop early"
    assert onnx_greedy(generator, input_ids, 24) == stopped
    for min_new_tokens in (len(stopped) + 1, 24):
        forced = torch_greedy(model, input_ids, 24, min_new_tokens)
        assert len(forced) >= min_new_tokens
        assert onnx_greedy(generator, input_ids, 24, min_new_tokens) == forced


# --- bad models --------------------------------------------------------------------------------------


def test_missing_files_are_named(tiny_dir, tmp_path):
    for path in (tiny_dir / "onnx").iterdir():
        if path.name not in ("decoder_with_past_model.onnx", "tokenizer.json"):
            shutil.copy(path, tmp_path / path.name)
    with pytest.raises(ModelLoadError) as error:
        Seq2SeqGenerator.load(tmp_path)
    message = str(error.value)
    assert "decoder_with_past_model.onnx" in message and "tokenizer.json" in message
    assert str(tmp_path) in message and "--model" in message
    missing = message.split("missing ")[1].split(". Expected")[0]
    assert missing == "tokenizer.json, decoder_with_past_model.onnx"


def test_quantized_without_quantized_files_says_so(tiny_dir):
    with pytest.raises(ModelLoadError, match=r"encoder_model_quantized\.onnx.*--precision fp32"):
        Seq2SeqGenerator.load(tiny_dir / "onnx", quantized=True)


def test_folder_that_does_not_exist(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no such folder.*--model DIR"):
        Seq2SeqGenerator.load(tmp_path / "not" / "there")


def test_broken_onnx_file_is_a_model_load_error(tiny_dir, tmp_path):
    for path in (tiny_dir / "onnx").iterdir():
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "decoder_model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ModelLoadError, match=r"decoder_model\.onnx"):
        Seq2SeqGenerator.load(tmp_path)


def test_config_without_token_ids(tiny_dir, tmp_path):
    for path in (tiny_dir / "onnx").iterdir():
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "generation_config.json").unlink()
    config = json.loads((tmp_path / "config.json").read_text())
    del config["eos_token_id"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="eos_token_id"):
        Seq2SeqGenerator.load(tmp_path)


# --- the serving path stays lean ---------------------------------------------------------------------


def test_generation_never_imports_torch_or_transformers(tiny_dir):
    script = (
        "import sys\n"
        "from cqa.generator import Seq2SeqGenerator\n"
        f"g = Seq2SeqGenerator.load({str(tiny_dir / 'onnx')!r}, threads=1)\n"
        "a = g.generate('the blog post || <Q> what? <A> ', max_new_tokens=4, min_new_tokens=4)\n"
        "assert a.output_tokens == 4, a\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'optimum') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout
