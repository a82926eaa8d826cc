"""A decode-step forward for Llama-family models over a snapshot of their effective weights.

Why: at small batches a decode step is bound by streaming the weights from memory (about 63 ms for SmolLM2 in fp32
on this project's 2-core machine), and the transformers forward adds per-module Python work on top (30 layers x a
dozen modules) and runs LoRA adapters as extra matmuls beside every base weight. The engine decodes instead
with this module:

- **merged weights**: the snapshot holds each projection's effective weight (base + every active LoRA delta,
  peft's own ``get_delta_weight``), so a LoRA policy decodes at the cost of a plain model and its adapters are
  never merged into, or unmerged from, the trained parameters (no drift; the trainer's weights stay untouched);
- **fused projections**: q/k/v in one matmul and gate/up in one, per layer;
- **oneDNN matmuls** for fp32 on CPU: torch's ``mkldnn._linear_pointwise`` on the same dense weights, 1.1-1.8x
  faster than ``F.linear`` (MKL) at 1-8 rows on a 2-core AVX2 CPU (benchmarks/gemm_kernels.py; see
  :func:`_onednn_linear_ok`);
- **int8 weights** (``precision="int8"``): per-output-channel symmetric int8 with torch's CPU kernel
  ``aten._weight_int8pack_mm`` (what torchao's int8 weight-only layout runs on CPU), a quarter of the fp32 bytes to
  stream. The sampling policy then differs from the trained one: the trainer measures and corrects the mismatch
  (training/mismatch.py).

The snapshot is taken from the live model when the engine first decodes and rebuilt when the weights change (the
engine drops it on ``clear_prefix_cache()``, which the trainer calls after every update, and checks a parameter
fingerprint). Prefill runs through the same snapshot (:meth:`DecodeWeights.prefill`, causal over the new tokens), so a
LoRA policy's prompts are not forwarded through peft's unmerged adapters either; the cached shared prefix is built
by the transformers forward, whose keys and values are the same up to rounding.

Supported: ``model_type == "llama"`` (Llama, SmolLM2, ...) without attention/MLP biases, SiLU MLP, no DoRA. For
anything else :func:`unsupported_reason` says why and the engine uses the transformers forward (recorded in
``EngineStats.decode_path``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["DecodeWeights", "effective_weight", "unsupported_reason"]

PRECISIONS = ("native", "bf16", "int8")
"""``native``: the model's own dtype (fp32 here, bf16 on a GPU); ``bf16``: bfloat16 copies of the linear layers'
weights (activations, norms and the KV cache stay in the model's dtype; on a CPU with AMX the matmuls run in
bf16); ``int8``: int8 weights, CPU only."""


def unsupported_reason(model: Any) -> str | None:
    """Why :class:`DecodeWeights` cannot run ``model`` (None when it can)."""
    base = _base_model(model)
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama":
        return f"model_type {getattr(cfg, 'model_type', None)!r} is not 'llama'"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "attention or MLP biases"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    for mod in base.modules():
        if getattr(mod, "use_dora", {}) and any(getattr(mod, "use_dora", {}).values()):
            return "DoRA adapters"
    return None


def _base_model(model: Any) -> Any:
    """The transformers model under a peft wrapper (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def effective_weight(module: Any) -> torch.Tensor:
    """The weight a forward of ``module`` applies: a plain Linear's weight, or a peft LoRA layer's base weight plus
    each active adapter's delta (unless adapters are disabled or already merged into the base)."""
    base = getattr(module, "base_layer", None)
    if base is None:
        return module.weight.detach()
    w = base.weight.detach()
    if getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return w
    deltas = [module.get_delta_weight(a).detach() for a in module.active_adapters if a in module.lora_A]
    return w + sum(deltas) if deltas else w


def _onednn_linear_ok() -> bool:
    """Whether torch's oneDNN inner-product op runs fp32 ``x @ w.T`` here and agrees with ``F.linear`` on a probe.

    Why: for the skinny GEMMs of a decode step (1-32 rows against SmolLM2's weights) ``F.linear`` goes to MKL
    sgemm, which on the project's 2-core AVX2 CPU is up to 1.8x slower than oneDNN on the same dense weights
    (benchmarks/gemm_kernels.py; at 4 rows MKL is even slower than at 8). ``mkldnn._linear_pointwise`` is the op
    torch's own inductor emits for CPU linear layers; it takes the plain weight, so no copy is made. Checked once
    per process; where it is missing or disagrees, the snapshot uses ``F.linear`` and ``DecodeWeights.kernel`` says so.
    """
    global _ONEDNN
    if _ONEDNN is None:
        _ONEDNN = False
        op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
        if op is not None and torch.backends.mkldnn.is_available():
            g = torch.Generator().manual_seed(0)
            x, w = torch.randn(3, 64, generator=g), torch.randn(40, 64, generator=g)
            try:
                _ONEDNN = bool(torch.allclose(op(x, w, None, "none", [], ""), F.linear(x, w), atol=1e-4, rtol=1e-4))
            except RuntimeError:
                _ONEDNN = False
    return _ONEDNN


_ONEDNN: bool | None = None


@dataclass
class _Linear:
    weight: torch.Tensor
    scales: torch.Tensor | None = None
    """int8: per-output-channel scales (the weight is int8)."""
    onednn: bool = False
    """fp32 on CPU through oneDNN's inner product (see :func:`_onednn_linear_ok`)."""

    @classmethod
    def build(cls, w: torch.Tensor, precision: str) -> _Linear:
        if precision == "native":
            w = w.contiguous()
            return cls(w, onednn=w.device.type == "cpu" and w.dtype == torch.float32 and _onednn_linear_ok())
        if precision == "bf16":
            return cls(w.to(torch.bfloat16).contiguous())
        w = w.float()
        scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        return cls(q, scales.contiguous())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn and x.dtype == torch.float32:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, None, "none", [], "")
        if self.scales is None:
            if self.weight.dtype != x.dtype:  # bf16 weights: the matmul in bf16, the result in the model's dtype
                return F.linear(x.to(self.weight.dtype), self.weight).to(x.dtype)
            return F.linear(x, self.weight)
        return torch.ops.aten._weight_int8pack_mm(x.contiguous(), self.weight, self.scales)

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size() + (
            0 if self.scales is None else self.scales.numel() * 4)


@dataclass
class _Layer:
    ln1: torch.Tensor
    qkv: _Linear
    o: _Linear
    ln2: torch.Tensor
    gate_up: _Linear
    down: _Linear


class DecodeWeights:
    """One decode step for a batch: ``step(input_ids (b,1), position_ids (b,1), cache, mask (b,T)) -> logits (b,V)``.

    ``cache`` is the engine's DynamicCache whose layers append with ``update(k, v)``; ``mask`` covers every cached
    position plus the new one (1 = attend).
    """

    def __init__(self, model: Any, precision: str = "native") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"fast decode does not support this model: {reason}")
        self.precision = precision
        base = _base_model(model)
        if precision == "int8" and next(base.parameters()).device.type != "cpu":
            raise ValueError("precision 'int8' runs torch's CPU int8 kernel; use 'native' on a GPU")
        cfg = base.config
        inner = base.model
        self.eps = float(cfg.rms_norm_eps)
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.q_size, self.kv_size = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.inter = cfg.intermediate_size
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.layers = []
        with torch.no_grad():
            for layer in inner.layers:
                att, mlp = layer.self_attn, layer.mlp
                qkv = torch.cat([effective_weight(att.q_proj), effective_weight(att.k_proj),
                                 effective_weight(att.v_proj)])
                gate_up = torch.cat([effective_weight(mlp.gate_proj), effective_weight(mlp.up_proj)])
                self.layers.append(_Layer(
                    layer.input_layernorm.weight.detach(), _Linear.build(qkv, precision),
                    _Linear.build(effective_weight(att.o_proj), precision),
                    layer.post_attention_layernorm.weight.detach(), _Linear.build(gate_up, precision),
                    _Linear.build(effective_weight(mlp.down_proj), precision)))
            self.norm = inner.norm.weight.detach()
            self.lm_head = _Linear.build(effective_weight(base.get_output_embeddings()), precision)

    @property
    def kernel(self) -> str:
        """The matmul the projections run: ``onednn`` (fp32 on CPU), ``linear`` (F.linear), ``int8pack``."""
        lin = self.lm_head
        return "int8pack" if lin.scales is not None else "onednn" if lin.onednn else "linear"

    @property
    def nbytes(self) -> int:
        """Bytes of the snapshot's own weight copies (norms and embeddings are shared with the model)."""
        return sum(x.nbytes for layer in self.layers for x in (layer.qkv, layer.o, layer.gate_up, layer.down)) \
            + self.lm_head.nbytes

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """LlamaRMSNorm: in float32, then back to the activations' dtype."""
        x32 = x.float()
        var = x32.pow(2).mean(-1, keepdim=True)
        y = (x32 * torch.rsqrt(var + self.eps)).to(x.dtype)
        return w * y if self.precision == "native" else w.float() * y.float()

    def step(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: Any,
             mask: torch.Tensor) -> torch.Tensor:
        """One decode step: :meth:`prefill` of one new token per row."""
        return self.prefill(input_ids, position_ids, cache, mask)

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache: Any,
                mask: torch.Tensor) -> torch.Tensor:
        """Several new tokens per row (a prompt, left-padded; ``mask`` ``[b, P + T]`` covers the cached ``P`` and the
        ``T`` new positions): fills ``cache`` (``cache.update``, so an empty DynamicCache or a prefix's views) and
        returns the logits of each row's last position. Causal within the new tokens, as the transformers forward."""
        b, t = input_ids.shape
        h = self.embed(input_ids)  # (b, t, hidden)
        if self.precision == "int8":
            h = h.float()
        cos, sin = self.rotary(h, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (b, 1, t, d)
        total = mask.shape[1]
        causal = torch.ones((t, total), dtype=torch.bool, device=mask.device).tril(total - t)
        attn_mask = mask.bool()[:, None, None, :] & causal[None, None]
        attn_mask = attn_mask | _diagonal(t, total, mask.device)[None, None]  # a pad attends to itself: no NaN
        for i, layer in enumerate(self.layers):
            x = self._norm(h, layer.ln1).reshape(b * t, -1)
            qkv = layer.qkv(x).view(b, t, -1)
            q = qkv[..., :self.q_size].view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
            k = qkv[..., self.q_size:self.q_size + self.kv_size].view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
            v = qkv[..., self.q_size + self.kv_size:].view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys, values = cache.update(k, v, i)
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask,
                                               enable_gqa=self.n_heads != self.n_kv)
            h = h + layer.o(a.transpose(1, 2).reshape(b * t, -1)).view(b, t, -1)
            x = self._norm(h, layer.ln2).reshape(b * t, -1)
            gu = layer.gate_up(x)
            h = h + layer.down(F.silu(gu[:, :self.inter]) * gu[:, self.inter:]).view(b, t, -1)
        return self.lm_head(self._norm(h[:, -1], self.norm))


def _diagonal(t: int, total: int, device: Any) -> torch.Tensor:
    """``[t, total]``: True where new token ``j`` meets its own position ``total - t + j``."""
    d = torch.zeros((t, total), dtype=torch.bool, device=device)
    d[torch.arange(t), torch.arange(total - t, total)] = True
    return d


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
