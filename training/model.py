"""The model and tokenizer a training stage starts from, and the answers they decode.

The published model is the T5 vocabulary plus three added tokens, `||`, `<Q>`, `<A>`, at ids 32100-32102,
and LongT5's one embedding matrix ``shared`` for the encoder, the decoder and (tied or not) the LM head.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cqa.format import ADDED_TOKENS

logger = logging.getLogger("training.train")

BASE_MODEL = "google/long-t5-tglobal-base"
ADDED_TOKEN_IDS = [32100, 32101, 32102]  # where the published model has `||`, `<Q>`, `<A>`
EMBEDDING_MULTIPLE = 128  # google/long-t5-tglobal-base pads its 32,100-token vocabulary to 32,128 rows
TINY = "tiny"  # the model name that builds a tiny random LongT5 (training.tiny) for smoke runs


def resolve_model(model: str, out_dir: str | Path, seed: int) -> str:
    """The checkpoint to load: ``model`` itself, or for "tiny" a tiny random LongT5 saved to
    OUT_DIR/tiny-base."""
    if model != TINY:
        return model
    from training.tiny import save_tiny

    return str(save_tiny(Path(out_dir) / "tiny-base", seed=seed, onnx=False) / "model")


def add_dialogue_tokens(tokenizer) -> int:
    """Add `||`, `<Q>`, `<A>` when the tokenizer lacks them; they must land at ids 32100-32102."""
    vocabulary = tokenizer.get_vocab()
    missing = [token for token in ADDED_TOKENS if token not in vocabulary]
    added = tokenizer.add_tokens(missing) if missing else 0
    ids = tokenizer.convert_tokens_to_ids(list(ADDED_TOKENS))
    if ids != ADDED_TOKEN_IDS:
        raise ValueError(
            f"the tokenizer has {ADDED_TOKENS} at ids {ids}, expected {ADDED_TOKEN_IDS}: it is not the T5 "
            "vocabulary (32,000 pieces + 100 sentinels) the published model uses"
        )
    return added


def tie_shared_embeddings(model) -> int:
    """Make the encoder's and decoder's ``embed_tokens`` the model's ``shared`` matrix again.

    T5 models embed with one matrix, ``shared``. A checkpoint that stores it three times (DeepSpeed's
    ``save_model`` does) loads as three separate matrices: ~25M parameters more for LongT5-base, which
    train apart, and ``shared`` itself is then unused, which DDP with ``find_unused_parameters=False``
    rejects ("Expected to have finished reduction in the prior iteration"). Returns how many were
    re-tied; a copy that differs from ``shared`` is replaced all the same, with a warning.
    """
    import torch

    shared = model.get_input_embeddings()
    retied = 0
    for name in ("encoder", "decoder"):
        stack = getattr(model, name)
        embed = stack.embed_tokens
        if embed is shared or embed.weight is shared.weight:
            continue
        if embed.weight.shape != shared.weight.shape or not torch.equal(embed.weight, shared.weight):
            logger.warning(
                "%s.embed_tokens differs from shared (the checkpoint was not saved from one tied "
                "model): using shared for both",
                name,
            )
        stack.set_input_embeddings(shared)
        retied += 1
    if retied:
        logger.info("re-tied %d embedding matrices to shared (the checkpoint stored them apart)", retied)
    return retied


def load_model_and_tokenizer(model_name: str, tokenizer_name: str | None = None):
    """The checkpoint and its tokenizer, with the dialogue tokens and room for them in the embeddings."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name or model_name)
    if not tokenizer.is_fast:
        raise ValueError(f"{tokenizer_name or model_name}: a fast tokenizer (tokenizer.json) is needed")
    added = add_dialogue_tokens(tokenizer)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_name)
    tie_shared_embeddings(model)
    rows = model.get_input_embeddings().num_embeddings
    if rows < len(tokenizer):  # never shrink: the base model already pads to 32,128 rows
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=EMBEDDING_MULTIPLE)
        logger.info(
            "embeddings resized from %d to %d rows", rows, model.get_input_embeddings().num_embeddings
        )
    if added:
        logger.info("added %d dialogue tokens %s to the tokenizer", added, list(ADDED_TOKENS))
    return model, tokenizer


def decode(tokenizer, sequences) -> list[str]:
    """Token ids -> answer texts, exactly as the ONNX app decodes them (no clean-up of spaces)."""
    import numpy as np

    sequences = np.where(np.asarray(sequences) < 0, tokenizer.pad_token_id, sequences)  # -100 padding
    texts = tokenizer.batch_decode(sequences, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [text.strip() for text in texts]


def write_fp32_from_zero_checkpoint(model, checkpoint: str | Path, out: str | Path) -> None:
    """The fp32 weights of a DeepSpeed ZeRO checkpoint, saved as a transformers model like ``model``."""
    import copy

    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))
    config = copy.deepcopy(model.config)
    fp32 = type(model)(config).to(torch.float32)
    tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    missing, unexpected = fp32.load_state_dict(state, strict=False)
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"{checkpoint}: the ZeRO checkpoint does not match the model (missing "
            f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)})"
        )
    if "lm_head.weight" in missing and not config.tie_word_embeddings:
        raise RuntimeError(f"{checkpoint}: the ZeRO checkpoint has no lm_head.weight")
    tie_shared_embeddings(fp32)
    fp32.generation_config = copy.deepcopy(model.generation_config)
    fp32.save_pretrained(str(out))
    logger.info("%s: fp32 weights from the ZeRO checkpoint %s", out, Path(checkpoint).name)
