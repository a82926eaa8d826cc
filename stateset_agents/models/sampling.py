"""Per-row sampling for the engine: each row with its own generator, temperature and top-p (see engine docs)."""

from __future__ import annotations

from typing import Any

import torch

from ..types import SamplingParams

__all__: list[str] = []  # the engine's own


def _sample_rows(logits: torch.Tensor, reqs: list[Any]) -> list[tuple[int, float]]:
    """Sample every row at once where possible; each row uses its own request's generator (Gumbel-max:
    ``argmax(logp + G)`` with ``G = -log(-log(U))`` draws exactly from ``softmax(logp)``)."""
    temps = torch.tensor([r.sampling.temperature if r.sampling.temperature > 0 else 1.0 for r in reqs],
                         dtype=logits.dtype, device=logits.device)
    logp = torch.log_softmax(logits / temps[:, None], -1)
    out: list[tuple[int, float] | None] = [None] * len(reqs)
    rows, noise = [], []
    for i, r in enumerate(reqs):
        s = r.sampling
        if s.temperature == 0:
            token = int(torch.argmax(logits[i]))
            out[i] = (token, float(logp[i, token]))
        elif s.top_p < 1.0:
            out[i] = _sample(logits[i], s, r.generator)
        else:
            rows.append(i)
            noise.append(torch.rand(logits.shape[-1], generator=r.generator))
    if rows:
        idx = torch.tensor(rows, device=logits.device)
        u = torch.stack(noise).to(logits.device)
        tokens = torch.argmax(logp[idx] - torch.log(-torch.log(u)), -1)
        lps = logp[idx].gather(1, tokens[:, None])[:, 0]
        for j, i in enumerate(rows):
            out[i] = (int(tokens[j]), float(lps[j]))
    return out  # type: ignore[return-value]


def _sample(logits: torch.Tensor, s: SamplingParams, g: torch.Generator) -> tuple[int, float]:
    """One token from one row of logits, and its log-prob under the sampling distribution (see module doc)."""
    if s.temperature == 0:
        token = int(torch.argmax(logits))
        return token, float(torch.log_softmax(logits, -1)[token])
    logp = torch.log_softmax(logits / s.temperature, -1)
    if s.top_p < 1.0:
        sorted_lp, order = torch.sort(logp, descending=True)
        cum = sorted_lp.exp().cumsum(-1)
        drop = cum - sorted_lp.exp() >= s.top_p  # keep tokens until the mass before them reaches top_p
        sorted_lp = sorted_lp.masked_fill(drop, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(0, order, sorted_lp)
        logp = torch.log_softmax(logp, -1)
    token = int(torch.multinomial(logp.exp(), 1, generator=g))
    return token, float(logp[token])
