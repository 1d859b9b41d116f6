"""ONNX export of a LongT5 checkpoint in the published three-file layout, with a parity gate, and int8.

    python -m training.export CHECKPOINT OUT [--quantize int8] [--revision REV]

CHECKPOINT is a local folder or a Hub repo id (`org/name`): a repo is fetched with huggingface_hub's
snapshot_download into the normal Hub cache, the weights (safetensors, else PyTorch .bin), configs and
tokenizer files only; with HF_HUB_OFFLINE=1 only that cache is read. For example, the published model:

    python -m training.export tryolabs/long-t5-tglobal-base-blogpost-cqa out/fast --quantize int8

OUT gets `encoder_model.onnx`, `decoder_model.onnx` (decoder + LM head), `decoder_with_past_model.onnx`
(the same decoder reading the key/value cache), config.json, generation_config.json, the tokenizer files,
parity.json (the gate's figures) and a README.md model card. Both the `cqa` runtime and optimum's
`ORTModelForSeq2SeqLM.from_pretrained(OUT, use_merged=False)` load it.

How a bad export is kept from being published: the export is written to a staging folder beside OUT
(`.OUT.staging`), the parity gate runs on it, and only when the gate passes is it moved to OUT (an older OUT
is replaced only then). A failed gate raises ParityError (the CLI exits 1) and leaves OUT as it was.

The gate, at input lengths 8, 40, 300, 1500 and 5000 tokens (around and far beyond the TGlobal block sizes):
  - the decoder logits of ONNX Runtime and PyTorch agree to a relative error (max |diff| / max |logit|)
    under 1e-4;
  - greedy answers (ONNX Runtime with the key/value cache, and PyTorch) are the same tokens.
The trace length is chosen well above 2 x global_block_size and above 3 local blocks: LongT5's
`if num_globals > 0` is a Python branch, frozen at trace time (tracing a short input bakes in "no global
tokens" and breaks every longer input).

`--quantize int8` also writes dynamic-int8 copies (onnxruntime.quantization.quantize_dynamic, with
INT8_SETTINGS) beside the fp32 files in OUT, under optimum's names (`encoder_model_quantized.onnx`, ...):
the runtime serves them by default, `--precision fp32` the fp32 ones. OUT/int8.json reports, on the same
inputs: the greedy agreement with fp32 (a fraction: quantization is allowed to change some answers), and
with fp32's tokens forced on int8, the relative logit error (`logits_close`: under 0.1 at every length)
and the fraction of steps with the same top token. The logit error is the figure that holds for any
model: an untrained one has near-tie logits, so its answers change under any perturbation.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cqa.hub import THREE_FILE_STEMS, hub_offline

log = logging.getLogger("training.export")

ONNX_FILES = tuple(f"{stem}.onnx" for stem in THREE_FILE_STEMS)  # the published three-file layout
PARITY_LENGTHS = (8, 40, 300, 1500, 5000)
MAX_RELATIVE_ERROR = (
    1e-4  # measured today: ~3e-7 on LongT5-base; a broken graph is off by orders of magnitude
)
PARITY_NEW_TOKENS = 16  # greedy tokens compared per length
# int8 vs fp32 logits (fp32's tokens forced), max |diff| / max |logit|: 1.0-2.9% measured on five smoke
# models, 42-54% with one weight scale of one layer off by 2x (bench/NOTES.md, section 6).
INT8_MAX_RELATIVE_ERROR = 0.1
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CONFIG_FILES = ("config.json", "generation_config.json")
# What a checkpoint repo download fetches besides the weights: no optimizer states, no TF/Flax weights.
CHECKPOINT_FILES = (*CONFIG_FILES, *TOKENIZER_FILES, "added_tokens.json")
SAFETENSORS_WEIGHTS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
PYTORCH_WEIGHTS = ("pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name", as the Hub spells a repo id


class ExportError(RuntimeError):
    """The checkpoint could not be exported (bad path, not a LongT5, optimum failure)."""


class ParityError(RuntimeError):
    """The exported model does not compute what the PyTorch model computes."""


@dataclass
class ParityReport:
    lengths: list[int]
    max_relative_error: list[float]  # per length: max |onnx - torch| / max |torch| over the logits
    greedy_equal: list[bool]  # per length
    tolerance: float = MAX_RELATIVE_ERROR
    new_tokens: int = PARITY_NEW_TOKENS
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)  # ONNX Runtime errors, per failed length

    @property
    def passed(self) -> bool:
        return all(e <= self.tolerance for e in self.max_relative_error) and all(self.greedy_equal)

    def summary(self) -> str:
        rows = [
            f"{n:>5} tokens: max rel err {e:.1e}, greedy {'equal' if g else 'DIFFERENT'}"
            for n, e, g in zip(self.lengths, self.max_relative_error, self.greedy_equal, strict=True)
        ]
        return "\n".join(rows + self.failures)

    def to_dict(self) -> dict:
        errors = [e if math.isfinite(e) else None for e in self.max_relative_error]  # JSON has no inf
        return {**asdict(self), "max_relative_error": errors, "passed": self.passed}


@dataclass
class Int8Report:
    settings: dict
    lengths: list[int]
    greedy_equal: list[bool]  # int8 vs fp32 ONNX, free greedy runs, per length
    # With fp32's greedy tokens forced on int8 (so one early flip does not change every later step):
    max_relative_error: list[float] = field(default_factory=list)  # max |int8 - fp32| / max |fp32| logit
    top_token_equal: list[float] = field(default_factory=list)  # fraction of steps with the same top token
    size_mb: dict = field(default_factory=dict)  # per file
    seconds: float = 0.0
    tolerance: float = INT8_MAX_RELATIVE_ERROR

    @property
    def agreement(self) -> float:
        return sum(self.greedy_equal) / len(self.greedy_equal) if self.greedy_equal else float("nan")

    @property
    def logits_close(self) -> bool:
        return bool(self.max_relative_error) and all(e <= self.tolerance for e in self.max_relative_error)

    def to_dict(self) -> dict:
        return {**asdict(self), "agreement": self.agreement, "logits_close": self.logits_close}


# ---------------------------------------------------------------------------------------------- export


def setup_logging() -> None:
    """Our progress lines at INFO; other libraries (onnxruntime's quantizer logs a line per node) quieter."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("training").setLevel(logging.INFO)


def trace_length_for(config) -> int:
    """A trace length well above 2 x global_block_size and 3 local blocks, not a multiple of either."""
    block_len = config.local_radius + 1
    return max(4 * config.global_block_size, 3 * block_len) + 7


def _attention_patch(model, fast_attention: bool):
    """The export-time rewrite of LongT5's attention into one fused block (training.onnx_patches; the
    same math), or nothing for a stock export."""
    if not fast_attention:
        return nullcontext()
    from training.onnx_patches import patch_longt5_for_export

    log.info("export: using training.onnx_patches.patch_longt5_for_export")
    return patch_longt5_for_export(model)


def _export_unchecked(checkpoint: Path, out: Path, trace_length: int | None, fast_attention: bool) -> None:
    """optimum's exporter on a model we load ourselves (so the attention patch can wrap it)."""
    from optimum.exporters.onnx import onnx_export_from_model
    from optimum.utils.save_utils import maybe_load_preprocessors
    from transformers import AutoModelForSeq2SeqLM

    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(checkpoint).eval()
    except (OSError, ValueError) as error:  # missing or unreadable weights, unknown model type
        raise ExportError(f"could not load the checkpoint {checkpoint}: {error}") from error
    if model.config.model_type != "longt5":
        raise ExportError(f"{checkpoint} is a {model.config.model_type!r} model, expected 'longt5'")
    model.config.use_cache = True  # what main_export does for "-with-past"
    length = trace_length or trace_length_for(model.config)
    with _attention_patch(model, fast_attention):
        onnx_export_from_model(
            model,
            out,
            task="text2text-generation-with-past",
            no_post_process=True,  # keep the three-file layout of the published export (no merged decoder)
            do_validation=False,  # our own gate below is stricter (several lengths, greedy outputs)
            preprocessors=maybe_load_preprocessors(str(checkpoint)),
            batch_size=1,
            sequence_length=length,
        )
    if fast_attention:
        from training.onnx_patches import finalize_encoder

        finalize_encoder(out / "encoder_model.onnx")  # the fused attention placeholders -> ONNX Attention
    for name in TOKENIZER_FILES:  # the slow-tokenizer vocabulary too, when the checkpoint has one
        if (checkpoint / name).exists() and not (out / name).exists():
            shutil.copy(checkpoint / name, out / name)


def resolve_checkpoint(checkpoint: str | Path, revision: str | None = None) -> Path:
    """The local folder of ``checkpoint``: itself when it is a folder, else the Hub repo of that id,
    fetched (or found in the Hub cache) with only the files an export needs. ExportError otherwise."""
    path = Path(checkpoint).expanduser()
    if path.is_dir() or path.exists() or not _REPO_ID.match(str(checkpoint)):
        return path  # a folder, or something that can only be meant as one (export_onnx checks it)
    return _download_checkpoint(str(checkpoint), revision)


def _download_checkpoint(repo_id: str, revision: str | None) -> Path:
    # Imported here: huggingface_hub reads HF_HUB_OFFLINE and the cache folder when first imported.
    from huggingface_hub import snapshot_download

    log.info("export: fetching %s from the Hugging Face Hub (or its cache)", repo_id)
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_patterns(True)))
        if not any(folder.glob("*.safetensors")):  # an older repo: PyTorch .bin weights only
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_patterns(False)))
    except (OSError, ValueError) as error:  # the Hub's errors (no repo, no network, cache miss) are OSErrors
        where = " (HF_HUB_OFFLINE is set: only the local Hub cache was searched)" if hub_offline() else ""
        at = f" at revision {revision!r}" if revision else ""
        raise ExportError(
            f"{repo_id!r} is not a local folder, and the Hugging Face Hub did not give it{at}{where}: "
            f"{type(error).__name__}: {str(error).strip().splitlines()[0]}. Check the repo id, or download "
            f"it where the Hub is reachable (`hf download {repo_id} --local-dir DIR`) and pass DIR."
        ) from error
    log.info("export: %s is in %s", repo_id, folder)
    return folder


def _patterns(safetensors: bool) -> list[str]:
    return [*CHECKPOINT_FILES, *(SAFETENSORS_WEIGHTS if safetensors else PYTORCH_WEIGHTS)]


def _publish(staging: Path, out: Path) -> None:
    """Move a checked staging folder to ``out``, replacing an older one only now."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    fast_attention: bool = True,
    trace_length: int | None = None,
    parity_lengths: Sequence[int] = PARITY_LENGTHS,
    gate: bool = True,
    card: str | None = None,
    revision: str | None = None,
) -> Path:
    """Export ``checkpoint`` (a folder or a Hub repo id, at ``revision``) to ``out`` (three ONNX files,
    configs, tokenizer, parity.json, README.md).

    With ``gate`` (the default) the parity gate must pass before anything appears at ``out``: ParityError
    otherwise. ``card`` is the README.md text (default: the model card template with what is known here).
    """
    checkpoint, out = resolve_checkpoint(checkpoint, revision), Path(out)
    if not (checkpoint / "config.json").exists():
        raise ExportError(f"{checkpoint} is not a model checkpoint (no config.json)")
    staging = out.with_name(f".{out.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    start = time.perf_counter()
    try:
        _export_unchecked(checkpoint, staging, trace_length, fast_attention)
        log.info("export: ONNX written to %s in %.1f s", staging, time.perf_counter() - start)
        if gate:
            report = check_parity(checkpoint, staging, parity_lengths)
            (staging / "parity.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
            log.info("export: parity gate at %s\n%s", list(parity_lengths), report.summary())
            if not report.passed:
                raise ParityError(
                    f"the ONNX export of {checkpoint} does not match PyTorch "
                    f"(tolerance {report.tolerance:.0e}, greedy outputs must be equal):\n{report.summary()}"
                )
        (staging / "README.md").write_text(card if card is not None else _default_card(staging))
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("export: %s ready in %.1f s", out, time.perf_counter() - start)
    return out


def _default_card(folder: Path) -> str:
    from training.publish import render_card

    return render_card(_card_fields_from_folder(folder))


def _card_fields_from_folder(folder: Path) -> dict:
    fields: dict = {"variant": "ONNX"}
    parity = folder / "parity.json"
    if parity.exists():
        fields["parity_max_rel_error"] = f"{max(json.loads(parity.read_text())['max_relative_error']):.1e}"
    int8 = folder / "int8.json"
    if int8.exists():
        fields["variant"] = "ONNX, fp32 and dynamic int8"
        fields["int8_agreement"] = f"{json.loads(int8.read_text())['agreement']:.2f}"
    return fields


# ------------------------------------------------------------------------------------------ parity gate


def parity_inputs(length: int, seed: int = 0):
    """A deterministic input of ``length`` token ids (ordinary pieces, then </s>), shape (1, length)."""
    import torch

    generator = torch.Generator().manual_seed(seed + length)
    ids = torch.randint(3, 32_000, (1, length), generator=generator)
    ids[0, -1] = 1  # </s>, as the tokenizer would end it
    return ids


def load_ort_model(onnx_dir: str | Path, threads: int | None = None, quantized: bool = False):
    """optimum's ORTModelForSeq2SeqLM on the three-file layout (no merged decoder); ``quantized``: its
    ``*_quantized.onnx`` files."""
    import onnxruntime
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    encoder, decoder, with_past = QUANTIZED_FILES if quantized else ONNX_FILES
    return ORTModelForSeq2SeqLM.from_pretrained(
        onnx_dir,
        use_merged=False,
        session_options=options,
        encoder_file_name=encoder,
        decoder_file_name=decoder,
        decoder_with_past_file_name=with_past,
    )


def _greedy(model, input_ids, new_tokens: int):
    """Greedy tokens and the raw logits of each step, shape (steps, vocab)."""
    import torch

    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return output.sequences[0].tolist(), torch.stack(output.logits, dim=1)[0]


def _forced_logits(model, input_ids, tokens: list[int]):
    """The raw logits of each step of a greedy run made to emit ``tokens`` (another run's output, start
    token first): the same decoding path (first decoder, then the key/value cache) as a free run."""
    import torch

    def only_the_next_token(_batch: int, prefix) -> list[int]:
        return [tokens[len(prefix)]] if len(prefix) < len(tokens) else [tokens[-1]]

    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=len(tokens) - 1,
            do_sample=False,
            num_beams=1,
            prefix_allowed_tokens_fn=only_the_next_token,
            output_logits=True,  # before the processor that forces the tokens
            return_dict_in_generate=True,
        )
    return torch.stack(output.logits, dim=1)[0]


def _relative_error(got, want, steps: int) -> float:
    """max |got - want| / max |want| over the first ``steps`` decoding steps."""
    got, want = got[:steps], want[:steps]
    return float((got - want).abs().max() / want.abs().max())


def check_parity(
    checkpoint: str | Path,
    onnx_dir: str | Path,
    lengths: Sequence[int] = PARITY_LENGTHS,
    new_tokens: int = PARITY_NEW_TOKENS,
    tolerance: float = MAX_RELATIVE_ERROR,
) -> ParityReport:
    """Compare the ONNX export in ``onnx_dir`` with the PyTorch ``checkpoint`` (see the module docs).

    Greedy decoding runs on both, with the raw logits of every step: the first step exercises
    `decoder_model.onnx`, the later ones `decoder_with_past_model.onnx`. Logits are compared on the steps
    both runs share (all of them when the outputs are equal). An ONNX Runtime failure at some length
    counts as a failed length (error: inf), not as a crash.
    """
    from transformers import AutoModelForSeq2SeqLM

    start = time.perf_counter()
    reference = AutoModelForSeq2SeqLM.from_pretrained(checkpoint).eval()
    exported = load_ort_model(onnx_dir)
    errors, equal, failures = [], [], []
    for length in lengths:
        input_ids = parity_inputs(length)
        want_tokens, want_logits = _greedy(reference, input_ids, new_tokens)
        try:
            got_tokens, got_logits = _greedy(exported, input_ids, new_tokens)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidArgument types
            errors.append(float("inf"))
            equal.append(False)
            failures.append(f"{length} tokens: ONNX Runtime failed: {str(error).splitlines()[0][:300]}")
            continue
        shared = next(
            (i for i, (a, b) in enumerate(zip(got_tokens[1:], want_tokens[1:], strict=False)) if a != b),
            min(len(got_tokens), len(want_tokens)) - 1,
        )
        errors.append(_relative_error(got_logits, want_logits, shared + 1))
        equal.append(got_tokens == want_tokens)
        log.debug("parity at %d tokens: %.2e, greedy equal %s", length, errors[-1], equal[-1])
    return ParityReport(
        list(lengths),
        errors,
        equal,
        tolerance,
        new_tokens,
        round(time.perf_counter() - start, 2),
        failures,
    )


# ------------------------------------------------------------------------------------------------- int8


@dataclass(frozen=True)
class Int8Settings:
    """What onnxruntime.quantization.quantize_dynamic is told; ``keep_fp32``: node-name patterns left
    unquantized (e.g. "/lm_head/")."""

    per_channel: bool
    reduce_range: bool
    weight_type: str  # a QuantType name: "QInt8" or "QUInt8"
    op_types: tuple[str, ...] | None  # None: every op type the quantizer knows
    keep_fp32: tuple[str, ...] = ()


# The dynamic int8 settings, written once: the export and the bench both quantize with them. Measured in
# bench/NOTES.md (sections 2.2 and 7): signed int8 weights with unsigned activations (ONNX Runtime's U8S8
# VNNI/AMX kernels, so no reduce_range), per-channel scales (better accuracy, same speed); MatMul
# (projections, feed-forward, LM head) and Gather (the embedding tables, one in each file): at LongT5-base
# shapes, 7,000 tokens, peak RSS 2.25 -> 1.99 GB, same time and answer, encoder cosine to fp32 0.9990 ->
# 0.9988; on the smoke models the answer gate as with MatMul alone. keep_fp32: on four barely trained
# smoke models keeping the LM head fp32 shrank the int8 logit noise by a quarter and got the pipeline's
# answer-F1 gate from 0.49-0.85 to 0.97-1.00, but that is luck with near-tie logits, not a fix
# (bench/NOTES.md, section 6), and on LongT5-base it keeps 99 MB of fp32 weights per decoder read at
# every token: off.
INT8_SETTINGS = Int8Settings(
    per_channel=True, reduce_range=False, weight_type="QInt8", op_types=("MatMul", "Gather")
)


def quantized_name(name: str) -> str:
    """optimum's name for the int8 copy of a file: encoder_model.onnx -> encoder_model_quantized.onnx."""
    return name.removesuffix(".onnx") + "_quantized.onnx"


QUANTIZED_FILES = tuple(quantized_name(name) for name in ONNX_FILES)


def quantize_file(src: Path, dst: Path, settings: Int8Settings = INT8_SETTINGS) -> None:
    """Dynamic-int8 copy of one ONNX file (weights int8 now, activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        Path(src),
        Path(dst),
        op_types_to_quantize=list(settings.op_types) if settings.op_types else None,
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        weight_type=QuantType[settings.weight_type],
        nodes_to_exclude=_nodes_named(Path(src), settings.keep_fp32),
    )


def quantize_folder(onnx_dir: Path, settings: Int8Settings = INT8_SETTINGS) -> list[Path]:
    """Write ``X_quantized.onnx`` beside each ``X.onnx`` of the export in ``onnx_dir`` (optimum's
    convention, which cqa.generator serves by default); returns the int8 files. Each one is written
    under a hidden name first, so a failure leaves no half-written file under the real name."""
    onnx_dir = Path(onnx_dir)
    missing = [name for name in ONNX_FILES if not (onnx_dir / name).exists()]
    if missing:
        raise ExportError(f"{onnx_dir} is not an ONNX export: missing {', '.join(missing)}")
    written = []
    for name in ONNX_FILES:
        target = onnx_dir / quantized_name(name)
        partial = onnx_dir / f".{target.name}.partial"
        try:
            quantize_file(onnx_dir / name, partial, settings)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        written.append(target)
    return written


def quantize_int8(
    onnx_dir: str | Path,
    settings: Int8Settings = INT8_SETTINGS,
    *,
    agreement_lengths: Sequence[int] = PARITY_LENGTHS,
    card: str | None = None,
) -> Int8Report:
    """Quantize the export in ``onnx_dir`` (quantize_folder) and check the int8 files against the fp32
    ones (compare_int8); the report goes to ONNX_DIR/int8.json and the model card (README.md) is
    rewritten to say the folder holds both."""
    onnx_dir = Path(onnx_dir)
    start = time.perf_counter()
    files = quantize_folder(onnx_dir, settings)
    log.info("int8: quantized %s in %.1f s", onnx_dir, time.perf_counter() - start)
    report = Int8Report(
        _settings_record(settings),
        list(agreement_lengths),
        **compare_int8(onnx_dir, agreement_lengths),
        size_mb={path.name: round(path.stat().st_size / 1e6, 2) for path in files},
        seconds=round(time.perf_counter() - start, 2),
    )
    (onnx_dir / "int8.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (onnx_dir / "README.md").write_text(card if card is not None else _default_card(onnx_dir))
    log.info("int8: %s ready, greedy agreement with fp32 %.0f%%", onnx_dir, 100 * report.agreement)
    return report


def _settings_record(settings: Int8Settings) -> dict:
    """The settings as int8.json (and the model card) record them: lists, None for every op type."""
    record = asdict(settings)
    record["op_types"] = list(settings.op_types) if settings.op_types else None
    record["keep_fp32"] = list(settings.keep_fp32)
    return record


def compare_int8(onnx_dir: str | Path, lengths: Sequence[int] = PARITY_LENGTHS) -> dict:
    """The int8 files of ``onnx_dir`` against its fp32 ones on the parity inputs, per length: whether
    free greedy runs give the same tokens (``greedy_equal``), and with fp32's tokens forced on int8
    (``max_relative_error``: max |int8 - fp32| / max |fp32| over the logits; ``top_token_equal``: the
    fraction of steps whose top token is the same).

    The logit error is the figure that does not depend on how decided the model is: a model whose top
    two logits are near-ties (an untrained one) changes answers under any perturbation, a correct int8
    copy still stays within a few percent of fp32's logits."""
    fp32, int8 = load_ort_model(onnx_dir), load_ort_model(onnx_dir, quantized=True)
    equal, errors, top_equal = [], [], []
    for length in lengths:
        input_ids = parity_inputs(length)
        int8_tokens, _ = _greedy(int8, input_ids, PARITY_NEW_TOKENS)
        fp32_tokens, fp32_logits = _greedy(fp32, input_ids, PARITY_NEW_TOKENS)
        equal.append(int8_tokens == fp32_tokens)
        int8_logits = _forced_logits(int8, input_ids, fp32_tokens)
        errors.append(round(_relative_error(int8_logits, fp32_logits, len(fp32_logits)), 5))
        top_equal.append(round(float((int8_logits.argmax(-1) == fp32_logits.argmax(-1)).float().mean()), 3))
    return {"greedy_equal": equal, "max_relative_error": errors, "top_token_equal": top_equal}


def _nodes_named(path: Path, patterns: Sequence[str]) -> list[str]:
    """Names of the graph's nodes that contain one of ``patterns`` (weights are not loaded)."""
    if not patterns:
        return []
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [node.name for node in graph.node if any(pattern in node.name for pattern in patterns)]


# -------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="a PyTorch LongT5 checkpoint: a folder, or a Hub repo id org/name")
    parser.add_argument("out", type=Path, help="the export folder to write")
    parser.add_argument("--revision", help="with a Hub repo id: the branch, tag or commit (default: main)")
    parser.add_argument(
        "--quantize", choices=["int8"], help="also write dynamic-int8 copies, *_quantized.onnx, into OUT"
    )
    parser.add_argument(
        "--per-tensor", action="store_true", help="int8: one scale per tensor, not per channel"
    )
    parser.add_argument(
        "--op-types", nargs="+", default=list(INT8_SETTINGS.op_types or ()), help="int8: the ops to quantize"
    )
    parser.add_argument("--no-fast-attention", action="store_true", help="export the attention as is")
    parser.add_argument("--trace-length", type=int, help="tokens in the tracing input (default: automatic)")
    parser.add_argument(
        "--parity-lengths", type=int, nargs="+", default=list(PARITY_LENGTHS), help="gate input lengths"
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        export_onnx(
            args.checkpoint,
            args.out,
            fast_attention=not args.no_fast_attention,
            trace_length=args.trace_length,
            parity_lengths=args.parity_lengths,
            revision=args.revision,
        )
        if args.quantize == "int8":
            settings = replace(
                INT8_SETTINGS, per_channel=not args.per_tensor, op_types=tuple(args.op_types) or None
            )
            quantize_int8(args.out, settings, agreement_lengths=args.parity_lengths)
    except (ExportError, ParityError) as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
