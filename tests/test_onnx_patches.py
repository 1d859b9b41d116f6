"""The export-time attention rewrite keeps LongT5's math: module outputs and an ONNX export match PyTorch."""

from __future__ import annotations

import pytest
import torch

from training.onnx_patches import finalize_encoder, patch_longt5_for_export
from training.tiny import build_tiny_model

# Tiny shapes with the base model's structure: block_len = local_radius + 1 = 8, global blocks of 4.
# Lengths: shorter than a global block, exact multiples, > 2 x global_block_size, not a multiple of
# either block size, and > 1000 tokens (hundreds of global tokens, as at 4-7k with the real sizes).
LENGTHS = (3, 8, 9, 16, 37, 130, 1203)


def _encoder(seed: int = 0):
    return build_tiny_model(seed, local_radius=7, global_block_size=4).encoder


def _stock_and_patched(encoder, input_ids, attention_mask):
    with torch.no_grad():
        stock = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        with patch_longt5_for_export(encoder, fast_attention=True):
            patched = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return stock, patched


@pytest.mark.parametrize("length", LENGTHS)
def test_patched_encoder_matches_stock(length):
    encoder = _encoder()
    generator = torch.Generator().manual_seed(length)
    input_ids = torch.randint(3, 32_000, (1, length), generator=generator)
    stock, patched = _stock_and_patched(encoder, input_ids, torch.ones_like(input_ids))
    torch.testing.assert_close(patched, stock, rtol=1e-4, atol=1e-5)


def test_patched_encoder_matches_stock_with_padding():
    # A batch of two, the second right-padded: orphan tokens, padded global blocks and masked keys.
    encoder = _encoder(seed=1)
    input_ids = torch.randint(3, 32_000, (2, 53), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 30:] = 0
    stock, patched = _stock_and_patched(encoder, input_ids, attention_mask)
    torch.testing.assert_close(patched, stock, rtol=1e-4, atol=1e-5)


def test_unfused_path_for_attention_weights_matches_stock():
    # output_attentions takes the PyTorch path that the fused export op cannot (it returns the weights).
    encoder = _encoder(seed=2)
    input_ids = torch.randint(3, 32_000, (1, 37), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        stock = encoder(input_ids=input_ids).last_hidden_state
        with patch_longt5_for_export(encoder):
            patched = encoder(input_ids=input_ids, output_attentions=True)
    torch.testing.assert_close(patched.last_hidden_state, stock, rtol=1e-4, atol=1e-5)
    weights = patched.attentions[0]  # (batch, blocks, heads, block_len, keys), rows sum to 1
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


def test_patch_is_undone_after_the_block():
    from transformers.models.longt5.modeling_longt5 import LongT5TransientGlobalAttention

    original = LongT5TransientGlobalAttention.forward
    with patch_longt5_for_export(None):
        assert LongT5TransientGlobalAttention.forward is not original
    assert LongT5TransientGlobalAttention.forward is original
    with patch_longt5_for_export(None, fast_attention=False):
        assert LongT5TransientGlobalAttention.forward is original


@pytest.mark.slow
def test_patched_export_matches_pytorch(tmp_path):
    import onnxruntime as ort

    model = build_tiny_model(2, local_radius=7, global_block_size=4)
    encoder_path = tmp_path / "encoder.onnx"
    input_ids = torch.randint(3, 32_000, (1, 40), generator=torch.Generator().manual_seed(1))
    with patch_longt5_for_export(model), torch.no_grad():
        torch.onnx.export(
            model.encoder,
            (input_ids, torch.ones_like(input_ids)),
            encoder_path,
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in ("input_ids", "attention_mask")},
            opset_version=17,
            dynamo=False,
        )
    assert finalize_encoder(encoder_path) == model.config.num_layers  # one fused Attention per layer
    session = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    for length in (3, 40, 301, 1203):
        ids = torch.randint(3, 32_000, (1, length), generator=torch.Generator().manual_seed(length))
        with torch.no_grad():
            expected = model.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        (actual,) = session.run(
            None, {"input_ids": ids.numpy(), "attention_mask": torch.ones_like(ids).numpy()}
        )
        torch.testing.assert_close(torch.from_numpy(actual), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_project_export_with_patch_passes_parity_gate(tmp_path):
    """The release export wraps its trace in the patch: logits close to PyTorch's and greedy answers equal
    (its parity gate), including below 16 tokens, where the stock graph has no global token and fails."""
    import json

    from training.export import export_onnx

    checkpoint = tmp_path / "model"
    build_tiny_model(3, local_radius=7, global_block_size=4).save_pretrained(checkpoint)
    out = export_onnx(checkpoint, tmp_path / "onnx", fast_attention=True, parity_lengths=(3, 8, 40, 1203))
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"], report
