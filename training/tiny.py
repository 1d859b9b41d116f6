"""A tiny random LongT5 with the real tokenizer layout, for tests, UI work and the smoke pipeline.

    python -m training.tiny OUT [--spiece PATH/spiece.model] [--no-onnx]

writes OUT/model (PyTorch + tokenizer) and OUT/onnx (the ONNX export the app loads); ``make demo`` does
this into out/demo and starts the app on it. Its answers are random words: it is for UI work and tests.
Without --spiece the tokenizer is a synthetic SentencePiece-style Unigram vocabulary with the same
ids as T5's where it matters: pad=0, eos=1, unk=2, <extra_id_99..0> = 32000..32099, and the three
added tokens `||`, `<Q>`, `<A>` at 32100-32102.
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

from cqa.format import ADDED_TOKENS
from training.model import ADDED_TOKEN_IDS

T5_VOCAB_SIZE = 32_000  # SentencePiece pieces; then 100 sentinels, then our 3 added tokens
MODEL_VOCAB_SIZE = 32_128  # google/long-t5-tglobal-base pads its embedding matrix to this

# The block geometry keeps the demo fast and the tests meaningful. Transient-global attention costs
# tokens x (3 x local block + tokens / global_block_size): with global blocks of 4, a 7,000-token document
# made 1,750 global tokens, and an answer (128 tokens) took 3.2 s of CPU; with 32 it makes 218, and the
# answer takes 0.5 s (encoder 2.9 -> 0.23 s; one thread, CPU time, as the machine was busy). Local blocks of
# 16 (local_radius + 1) and global blocks of 32 still let tests cross several block boundaries within a
# few dozen tokens; inputs under 32 tokens have no global block (the real model's is 16), a case the
# export must handle; and 32 is the largest size for which tests/test_export.py's 40-token input holds one.
TINY_CONFIG = dict(
    d_model=32,
    d_ff=64,
    d_kv=16,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=2,
    local_radius=15,
    global_block_size=32,
    encoder_attention_type="transient-global",
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    vocab_size=MODEL_VOCAB_SIZE,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
    tie_word_embeddings=False,
)

# Words that get whole pieces in the synthetic vocabulary, so tokenization is word-like for English.
_COMMON_WORDS = (
    "the of and to a in is it that for was on are as with by this be at from or have an they which one "
    "you had not but what all were when we there can been has more if will would who so no model answer "
    "question context document blog post chat data training stage onnx runtime speed token tokens "
    "can't i i'm how why where long t5 longt5 attention global local encoder decoder cpu gpu fast"
).split()


def build_tokenizer(spiece_model: str | Path | None = None):
    """A T5TokenizerFast with `||`, `<Q>`, `<A>` added at ids 32100-32102."""
    from transformers import T5TokenizerFast

    if spiece_model is not None:
        # add_prefix_space: without it this converter drops the leading "▁" ("Hello" -> 566 7126, not 8774).
        tokenizer = T5TokenizerFast(vocab_file=str(spiece_model), extra_ids=100, add_prefix_space=True)
    else:
        tokenizer = T5TokenizerFast(tokenizer_object=_synthetic_unigram(), extra_ids=0)
        tokenizer.add_special_tokens({"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"})
        sentinels = [f"<extra_id_{i}>" for i in range(100)]
        tokenizer.add_special_tokens({"additional_special_tokens": sentinels})
    added = tokenizer.add_tokens(list(ADDED_TOKENS))
    ids = tokenizer.convert_tokens_to_ids(list(ADDED_TOKENS))
    if added != len(ADDED_TOKENS) or ids != ADDED_TOKEN_IDS:
        raise RuntimeError(f"added tokens landed at {ids}, expected {ADDED_TOKEN_IDS}")
    return tokenizer


def _synthetic_unigram():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = {p for p, _ in pieces}

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    for word in _COMMON_WORDS:
        add("▁" + word, -5.0)
    add("▁", -6.0)
    for char in string.ascii_letters + string.digits + string.punctuation:
        add("▁" + char, -9.0)
        add(char, -10.0)
    filler = 0
    while len(pieces) < T5_VOCAB_SIZE:  # unused pieces, only there to put the sentinels at 32000+
        add(f"▁unused{filler}", -20.0)
        filler += 1
    for i in range(99, -1, -1):  # T5 puts <extra_id_99> first, at 32000
        add(f"<extra_id_{i}>", 0.0)

    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return tokenizer


def build_tiny_model(seed: int = 0, **overrides):
    """A randomly initialised LongT5ForConditionalGeneration with TINY_CONFIG (plus overrides)."""
    import torch
    from transformers import GenerationConfig, LongT5Config, LongT5ForConditionalGeneration

    torch.manual_seed(seed)
    config = LongT5Config(**{**TINY_CONFIG, **overrides})
    model = LongT5ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, max_new_tokens=128
    )
    return model


def save_tiny(
    out: str | Path, spiece_model: str | Path | None = None, seed: int = 0, onnx: bool = True
) -> Path:
    """Write OUT/model (PyTorch checkpoint + tokenizer) and, unless onnx=False, OUT/onnx."""
    out = Path(out)
    model_dir = out / "model"
    build_tiny_model(seed).save_pretrained(model_dir)
    build_tokenizer(spiece_model).save_pretrained(model_dir)
    if onnx:
        from training.export import export_onnx

        export_onnx(model_dir, out / "onnx")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--spiece", type=Path, help="a real T5 spiece.model (default: synthetic vocabulary)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-onnx", action="store_true", help="write the PyTorch checkpoint only")
    args = parser.parse_args(argv)
    save_tiny(args.out, args.spiece, args.seed, onnx=not args.no_onnx)
    print(f"tiny LongT5 written to {args.out}/model" + ("" if args.no_onnx else f" and {args.out}/onnx"))


if __name__ == "__main__":
    main()
