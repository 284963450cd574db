"""Token aggregation heads for task 2 (EAO): spatial tokens ``[B, T, D]`` -> class logits ``[B, C]``.

Every head takes ``key_padding_mask`` ``[B, T]`` (True = padding) and ignores padded tokens exactly (masked
softmax, masked means), so a case's prediction does not depend on what it is batched with.

Example:
    >>> import torch
    >>> head = build_eao_head("attn-pool", dim=32, num_classes=2)
    >>> head(torch.randn(3, 10, 32), torch.zeros(3, 10, dtype=torch.bool)).shape
    torch.Size([3, 2])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ctfm.errors import ConfigError
from ctfm.probe.heads import register_head


def _valid(mask: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
    """Float weights [B, T, 1]: 1 for real tokens, 0 for padding."""
    if mask is None:
        return tokens.new_ones(tokens.shape[:-1]).unsqueeze(-1)
    return (~mask).to(tokens.dtype).unsqueeze(-1)


def masked_mean(tokens: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the real tokens of each case: [B, T, D] -> [B, D]."""
    w = _valid(key_padding_mask, tokens)
    return (tokens * w).sum(1) / w.sum(1).clamp_min(1.0)


def masked_softmax(scores: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last (token) axis with padded tokens at exactly zero weight.

    ``scores`` is [B, ..., T]; the mask [B, T] is broadcast over the middle axes.
    """
    if key_padding_mask is not None:
        shape = (key_padding_mask.shape[0],) + (1,) * (scores.dim() - 2) + (key_padding_mask.shape[1],)
        scores = scores.masked_fill(key_padding_mask.reshape(shape), float("-inf"))
    return torch.softmax(scores, dim=-1)


class CrossAttentionBlock(nn.Module):
    """Queries attend to layer-normed tokens, then a feed-forward block (both pre-norm, residual).

    The parameters are those of a standard multi-head cross-attention (q/k/v/out projections, LayerNorm on
    keys/values), but the forward pass is reordered: the key projection is folded into the queries and the
    value projection is applied after pooling. Both are exact (associativity, and softmax weights sum to one),
    and the per-token cost drops from O(D^2) to O(queries x heads x D).
    """

    def __init__(self, dim: int, num_heads: int, ffn_mult: float, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_q = nn.LayerNorm(dim)
        self.ln_kv = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        hidden = max(1, round(dim * ffn_mult))
        self.ln_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.drop = nn.Dropout(dropout)
        self._init_like_multihead_attention()

    def _init_like_multihead_attention(self) -> None:
        """``nn.MultiheadAttention``'s initialisation: xavier-uniform over the stacked q/k/v weights
        (fan-in D, fan-out 3D), zero projection biases; the head then trains like the textbook module."""
        dim = self.q_proj.in_features
        bound = math.sqrt(6.0 / (dim + 3 * dim))
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.uniform_(proj.weight, -bound, bound)
            nn.init.zeros_(proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def attend(self, q: torch.Tensor, xhat: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Cross-attention of q [B, Q, D] over normalised tokens xhat [B, T, D] (LayerNorm without affine)."""
        b, nq, d = q.shape  # b is 1 for the learnable queries of the first layer (shared by all cases)
        h = self.num_heads
        dh = d // h
        qh = self.q_proj(self.ln_q(q)).reshape(b, nq, h, dh)
        wk = self.k_proj.weight.reshape(h, dh, d)
        # score[b,q,h,t] = <Q, K_t>/sqrt(dh); K_t = (xhat_t*g + beta) Wk^T + bk; terms constant in t cancel.
        a = torch.einsum("bqhe,hed->bqhd", qh, wk) * (self.ln_kv.weight / math.sqrt(dh))
        a = a.expand(xhat.shape[0], -1, -1, -1)
        scores = torch.einsum("btd,bqhd->bqht", xhat, a)
        p = masked_softmax(scores, mask)
        pooled = torch.einsum("bqht,btd->bqhd", p, xhat) * self.ln_kv.weight + self.ln_kv.bias
        wv = self.v_proj.weight.reshape(h, dh, d)
        v = torch.einsum("bqhd,hed->bqhe", pooled, wv) + self.v_proj.bias.reshape(h, dh)
        return self.out_proj(v.reshape(-1, nq, d))

    def forward(self, q: torch.Tensor, xhat: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = q + self.drop(self.attend(q, xhat, mask))
        return q + self.drop(self.ff(self.ln_ff(q)))


class AttnPoolHead(nn.Module):
    """The reference task-2 head: learnable queries, cross-attention layers, classifier over all queries.

    Tokens whose dim is not a multiple of ``num_heads`` (e.g. 9 hand-made features) are first projected
    linearly to ``embed_dim``, by default the next multiple of ``num_heads``; otherwise they are used as is.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        num_queries: int = 2,
        num_heads: int = 4,
        num_layers: int = 2,
        ffn_mult: float = 4.0,
        dropout: float = 0.0,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        width = embed_dim or -(-dim // num_heads) * num_heads
        if width % num_heads:
            raise ConfigError(f"attn-pool: embed_dim {width} is not divisible by num_heads={num_heads}")
        self.in_proj = nn.Linear(dim, width) if width != dim else nn.Identity()
        dim = width
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(dim, num_heads, ffn_mult, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(num_queries * dim, num_classes)

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        # Parameter-free normalisation is shared by every layer; each layer folds in its own affine.
        tokens = self.in_proj(tokens)
        xhat = F.layer_norm(tokens, tokens.shape[-1:])
        q = self.queries.unsqueeze(0)  # broadcast over cases by the first residual
        for block in self.blocks:
            q = block(q, xhat, key_padding_mask)
        q = q.expand(tokens.shape[0], -1, -1)  # only when there are no layers
        return self.classifier(self.norm(q).flatten(1))


class MeanLinearHead(nn.Module):
    """Mean over the real tokens, then one linear layer: the simplest aggregation baseline."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(masked_mean(tokens, key_padding_mask))


class ABMILHead(nn.Module):
    """Gated attention multiple-instance pooling: per-token gated scores, masked softmax, weighted sum."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attn_v = nn.Linear(hidden, hidden)
        self.attn_u = nn.Linear(hidden, hidden)
        self.attn_w = nn.Linear(hidden, 1)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(tokens)
        gate = torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))
        p = masked_softmax(self.attn_w(gate).squeeze(-1), key_padding_mask)
        return self.classifier(torch.einsum("bt,bth->bh", p, h))


class MLPHead(nn.Module):
    """Mean over the real tokens, then a one-hidden-layer MLP."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp(masked_mean(tokens, key_padding_mask))


EAO_HEADS: dict[str, Callable[..., nn.Module]] = {
    "attn-pool": AttnPoolHead,
    "mean-linear": MeanLinearHead,
    "abmil": ABMILHead,
    "mlp": MLPHead,
}


for _name, _factory in EAO_HEADS.items():
    register_head(_name)(_factory)


def build_eao_head(name: str, **kwargs: object) -> nn.Module:
    """Build a token head by registry name; kwargs are the constructor's (dim, num_classes, ...)."""
    if name not in EAO_HEADS:
        raise ConfigError(f"unknown EAO head {name!r}; choose from {', '.join(EAO_HEADS)}")
    try:
        return EAO_HEADS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"EAO head {name!r}: bad options {sorted(kwargs)} ({exc})") from exc
