"""Export-time rewrites of LongT5's transient-global attention: same math, a faster ONNX graph.

    with patch_longt5_for_export(model):
        main_export(...)  # or torch.onnx.export(model, ...)
    finalize_encoder("OUT/encoder_model.onnx")

Why: the stock forward exports its score and value products as ``Einsum`` over a (batch, block, key, head,
dim) layout, which ONNX Runtime runs ~8x slower than a plain MatMul, and it tiles the global keys and values
into every block. The rewrite (used only while exporting; the model is restored afterwards):

- token-major layout throughout: each block's keys and values are [previous, own, next block + the global
  tokens], built by one Concat, and each layer's attention is one fused node (softmax(q k^T + bias) v, heads
  split inside), so no score tensor is ever a graph value: ``com.microsoft.MultiHeadAttention`` as traced,
  ONNX ``Attention`` (opset 23) after :func:`finalize_encoder`;
- the position bias (local relative bias + local mask + side bias + side mask) and the token-to-global
  block assignment are built once in the first layer and handed to the others, as the stock model does
  with its position bias;
- the global aggregates are a block sum (reshape + ReduceSum) plus a small block-to-global MatMul instead
  of a (tokens x globals) one-hot Einsum.

It also exports inputs shorter than one global block (under 16 tokens) correctly: the stock graph fails
there in ONNX Runtime (a Reshape to a size-0 dimension, which ONNX reads as "copy this dimension").

Greedy outputs stay equal to PyTorch's; ``tests/test_onnx_patches.py`` checks the patched module against
the stock one and an export against PyTorch. Measurements: bench/NOTES.md, sections 2.1 and 5.2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers.models.longt5 import modeling_longt5 as longt5

_NEG = -1e10  # the stock model's value for masked positions


def _local_attention_mask(mask: torch.Tensor, bl: int, num_blocks, pad_len) -> torch.Tensor:
    """The stock ``_get_local_attention_mask`` without its trace-time branch (it skips padding when the
    traced length happens to be a multiple of the block length, and the export then fails on others)."""
    padded = nn.functional.pad(mask > 0, (bl, pad_len + bl)).reshape(mask.shape[0], num_blocks + 2, bl)
    center = padded[:, 1 : num_blocks + 1]
    three = torch.cat([padded[:, :num_blocks], center, padded[:, 2:]], dim=2)
    positions = torch.arange(3 * bl, device=mask.device)
    locality = (positions[None, :] - positions[bl : 2 * bl, None]).abs() < bl  # (bl, 3bl)
    return (center[..., None] & three[..., None, :] & locality)[:, None]


def _prepare(attn: longt5.LongT5TransientGlobalAttention, mask: torch.Tensor, dtype: torch.dtype):
    """Build, for this input: the block-to-global aggregation matrix and the full position bias
    (batch, heads, blocks, block_len, 3 * block_len + num_globals)."""
    batch, seq_len = mask.shape
    bl, gbs = attn.block_len, attn.global_block_size
    num_globals = seq_len // gbs
    pad_len = -seq_len % bl
    num_blocks = (seq_len + pad_len) // bl

    # -- token -> global assignment at block granularity (positions inside a global block share it)
    gpad = -seq_len % gbs
    num_gblocks = (seq_len + gpad) // gbs
    gblock_positions = torch.arange(num_gblocks, device=mask.device)
    positions = torch.arange(seq_len, device=mask.device)
    block_ends = (positions % gbs) == gbs - 1
    full_blocks = (block_ends[None, :] & (mask > 0)).sum(-1, keepdim=True) - 1  # (batch, 1)
    gblock_to_global = torch.minimum(gblock_positions[None, :], full_blocks)  # (batch, num_gblocks)
    gblock_to_global = torch.where(gblock_to_global >= 0, gblock_to_global, num_globals)
    # (batch, num_globals, num_gblocks): 1 where a global block feeds a global token
    aggregate = nn.functional.one_hot(gblock_to_global.long(), num_globals + 1)[:, :, :num_globals]
    aggregate = aggregate.transpose(1, 2).to(dtype)

    # -- local bias: relative position bias + locality and padding mask, per block
    local_bias = attn.compute_bias(bl)  # (1, 1, heads, bl, 3bl)
    local_mask = _local_attention_mask(mask, bl, num_blocks, pad_len).transpose(1, 2)  # (b, blocks, 1, ..)
    local_bias = local_bias + torch.where(local_mask > 0, 0.0, _NEG)  # (batch, blocks, heads, bl, 3bl)

    # -- side bias: relative position to each global token + which globals exist
    _, global_segment_ids = longt5._make_global_fixed_block_ids(mask, gbs)
    side_bias = attn.compute_side_bias(mask, global_segment_ids)  # (batch, heads, seq_len, num_globals)
    side_bias = nn.functional.pad(side_bias, (0, 0, 0, pad_len))
    side_bias = side_bias.reshape(batch, attn.n_heads, num_blocks, bl, -1).transpose(1, 2)
    # Block-major, as the fused attention takes it: (batch * blocks, heads, bl, 3bl + num_globals).
    position_bias = torch.cat([local_bias.to(dtype), side_bias.to(dtype)], dim=-1)
    return aggregate, position_bias.reshape(batch * num_blocks, attn.n_heads, bl, -1)


def _block_attention(query, key, value, bias, heads: int, head_mask=None):
    """softmax(q k^T + bias) v, heads split inside (shapes: :class:`_BlockAttention`); also returns the
    attention weights (blocks, heads, queries, keys), after ``head_mask`` (heads,) if one is given."""
    blocks, queries, inner = query.shape

    def split(states: torch.Tensor) -> torch.Tensor:  # (n, t, h*d) -> (n, h, t, d)
        return states.reshape(blocks, -1, heads, inner // heads).transpose(1, 2)

    scores = torch.matmul(split(query), split(key).transpose(-1, -2)) + bias
    weights = nn.functional.softmax(scores.float(), dim=-1).type_as(scores)
    if head_mask is not None:
        weights = weights * head_mask.reshape(1, -1, 1, 1)
    output = torch.matmul(weights, split(value)).transpose(1, 2).reshape(blocks, queries, inner)
    return output, weights


class _BlockAttention(torch.autograd.Function):
    """softmax(q k^T + bias) v over blocks, heads split inside: q (blocks, queries, heads * d), k and v
    (blocks, keys, heads * d), bias (blocks, heads, queries, keys) -> (blocks, queries, heads * d).

    In PyTorch it is the plain math. Exported, it is one ``com.microsoft.MultiHeadAttention`` node (ONNX
    Runtime's own operator: the export runs as it is), which :func:`finalize_encoder` then turns into
    ONNX's ``Attention`` (opset 23), whose CPU kernel is ~1.5-2x faster here (bench/NOTES.md, 5.2).
    Both are fused: the score tensors never go out to memory as graph values."""

    @staticmethod
    def forward(ctx, query, key, value, bias, heads: int):
        return _block_attention(query, key, value, bias, heads)[0]

    @staticmethod
    def symbolic(g, query, key, value, bias, heads: int):
        from torch.onnx.symbolic_helper import _optional_input_placeholder_tensor as absent

        # inputs: query, key, value, bias (of the projections: none), key_padding_mask (none), attention_bias
        return g.op(
            "com.microsoft::MultiHeadAttention",
            *(query, key, value, absent(g), absent(g), bias),
            num_heads_i=heads,
            scale_f=1.0,  # T5 does not scale its scores
        )


def _fast_forward(
    self: longt5.LongT5TransientGlobalAttention,
    hidden_states: torch.Tensor,
    mask: torch.Tensor | None = None,
    position_bias=None,
    layer_head_mask: torch.Tensor | None = None,
    output_attentions: bool = False,
):
    """Drop-in for ``LongT5TransientGlobalAttention.forward`` (same outputs). Between layers,
    ``position_bias`` is this module's own (aggregation matrix, bias) pair, and attention weights, if
    asked for, are block-major: (batch, blocks, heads, block_len, keys)."""
    batch, seq_len, d_model = hidden_states.shape
    heads, bl, gbs = self.n_heads, self.block_len, self.global_block_size
    if mask is None:
        mask = torch.ones(batch, seq_len, dtype=hidden_states.dtype, device=hidden_states.device)
    if position_bias is None:
        position_bias = _prepare(self, mask, hidden_states.dtype)
    aggregate, bias = position_bias

    # Global aggregates: sum each global block's real tokens, then map blocks to global tokens.
    gpad = -seq_len % gbs
    masked = hidden_states * mask[..., None].to(hidden_states.dtype)
    masked = nn.functional.pad(masked, (0, 0, 0, gpad))
    block_sums = masked.reshape(batch, -1, gbs, d_model).sum(2)  # (batch, num_gblocks, d_model)
    global_inputs = self.global_input_layer_norm(torch.matmul(aggregate, block_sums))

    pad_len = -seq_len % bl
    num_blocks = (seq_len + pad_len) // bl
    inner = self.inner_dim
    # Token-major throughout (no head transposes in the graph: the fused attention splits heads).
    # Pad the token axis to whole blocks; keys/values get one extra block on each side (the stock
    # _concatenate_3_blocks pads with zeros the same way).
    query = nn.functional.pad(self.q(hidden_states), (0, 0, 0, pad_len)).reshape(-1, bl, inner)
    key = nn.functional.pad(self.k(hidden_states), (0, 0, bl, pad_len + bl))
    value = nn.functional.pad(self.v(hidden_states), (0, 0, bl, pad_len + bl))

    def block_keys(states: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """(b, (blocks+2)*bl, h*d) and (b, globals, h*d) -> (b*blocks, 3bl + globals, h*d): each
        block's previous, own and next block, then all global tokens; one Concat (each extra one is a
        full copy). Tiling the few global states is cheaper than concatenating or slicing the scores.
        (-1, not sizes: in ONNX an Expand/Reshape size of 0, as num_globals under 16 tokens, means "copy".)"""
        blocks = states.reshape(batch, num_blocks + 2, bl, inner)
        tiled = side[:, None].expand(-1, num_blocks, -1, -1)
        keys = torch.cat([blocks[:, :num_blocks], blocks[:, 1 : num_blocks + 1], blocks[:, 2:], tiled], dim=2)
        return keys.reshape(batch * num_blocks, -1, inner)

    keys = block_keys(key, self.k(global_inputs))
    values = block_keys(value, self.v(global_inputs))
    if layer_head_mask is None and not output_attentions:  # always so when exporting
        output = _BlockAttention.apply(query, keys, values, bias, heads)  # (b*blocks, bl, h*d)
        weights = None
    else:  # the same math in PyTorch, with what the fused op cannot do (head mask, weights out)
        output, weights = _block_attention(query, keys, values, bias, heads, layer_head_mask)
        weights = weights.reshape(batch, num_blocks, heads, bl, -1)
    output = output.reshape(batch, num_blocks * bl, inner)[:, :seq_len]
    outputs = (self.o(output), position_bias)
    if output_attentions:
        outputs = (*outputs, weights)
    return outputs


def finalize_encoder(path: str | Path) -> int:
    """Turn an exported encoder's fused attention (``com.microsoft.MultiHeadAttention``, written by
    :class:`_BlockAttention`) into ONNX ``Attention``, in place; returns how many nodes were changed.

    ``Attention`` needs opset 23 and the TorchScript exporter writes opset 20 at most, so the file is
    converted with onnx's version converter first (the parity gate checks the result against PyTorch).
    Each node calls a model-local function, ``cqa.BlockAttention``, whose body is the ``Attention``
    node: ONNX Runtime inlines it when loading, and quantizers leave it alone (ONNX Runtime's, as
    optimum calls it by default, would take a bare ``Attention`` for its own com.microsoft one and write
    a model that does not load). Weights in external data files are left where they are.
    """
    import onnx
    import onnx.version_converter
    from onnx import helper

    def fused(model: onnx.ModelProto) -> list[onnx.NodeProto]:
        kind = ("com.microsoft", "MultiHeadAttention")
        return [node for node in model.graph.node if (node.domain, node.op_type) == kind]

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    if not fused(model):
        return 0
    # Other domains' operators (com.microsoft) are left as they are by the converter.
    model = onnx.version_converter.convert_version(model, ATTENTION_OPSET)
    nodes = fused(model)
    counts = {next(a.i for a in node.attribute if a.name == "num_heads") for node in nodes}
    if len(counts) != 1:
        raise ValueError(f"{path}: the fused attention nodes disagree on the number of heads: {counts}")
    heads = counts.pop()
    body = helper.make_node(
        "Attention",
        ["query", "key", "value", "bias"],  # Attention's attn_mask input is an additive float bias
        ["output"],
        q_num_heads=heads,
        kv_num_heads=heads,
        scale=1.0,  # T5 does not scale its scores
    )
    model.functions.append(
        helper.make_function(
            FUNCTION_DOMAIN,
            "BlockAttention",
            ["query", "key", "value", "bias"],
            ["output"],
            [body],
            [helper.make_opsetid("", ATTENTION_OPSET)],
        )
    )
    model.opset_import.append(helper.make_opsetid(FUNCTION_DOMAIN, 1))
    for node in nodes:
        query, key, value, _, _, bias = node.input
        node.domain, node.op_type = FUNCTION_DOMAIN, "BlockAttention"
        del node.input[:]
        node.input.extend([query, key, value, bias])
        del node.attribute[:]
    onnx.save(model, str(path))
    return len(nodes)


ATTENTION_OPSET = 23  # ONNX's Attention operator appeared in opset 23
FUNCTION_DOMAIN = "cqa"


@contextlib.contextmanager
def patch_longt5_for_export(model: nn.Module | None = None, *, fast_attention: bool = True) -> Iterator[None]:
    """Within the block, LongT5's transient-global attention uses the export-friendly forward.

    ``model`` is accepted for call-site clarity (the patch is on the class, so it applies to every
    LongT5 model in the process while active); ``fast_attention=False`` makes this a no-op.
    """
    del model
    if not fast_attention:
        yield
        return
    cls = longt5.LongT5TransientGlobalAttention
    original = cls.forward
    cls.forward = _fast_forward
    try:
        yield
    finally:
        cls.forward = original
