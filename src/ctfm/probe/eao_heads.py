"""Token aggregation heads for task 2 (EAO): spatial tokens ``[B, T, D]`` -> class logits.

Every head carries a leading *member* axis on all its parameters: ``members`` independent copies (one per
learning rate of a grid) run as one module, so the tokens are read, normalised and attended over once per
batch for all of them and each layer is one batched matrix product instead of one small one per copy.
A head built with ``members=1`` is an ordinary head (``forward`` gives ``[B, C]``); that is what checkpoints
hold (:meth:`MemberHead.member_state` cuts one member out of a trained grid).

Every head takes ``key_padding_mask`` ``[B, T]`` (True = padding) and ignores padded tokens exactly (masked
softmax, masked means), so a case's prediction does not depend on what it is batched with.

Example:
    >>> import torch
    >>> from ctfm.probe.heads import build_head
    >>> head = build_head("attn-pool", dim=32, num_classes=2)
    >>> head(torch.randn(3, 10, 32), torch.zeros(3, 10, dtype=torch.bool)).shape
    torch.Size([3, 2])
    >>> grid = build_head("attn-pool", dim=32, num_classes=2, members=4)
    >>> grid.forward_members(torch.randn(3, 10, 32), None).shape
    torch.Size([4, 3, 2])
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctfm.core.errors import ConfigError


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

    The mask must broadcast against ``scores`` (aligned on the trailing axes), e.g. [B, T] for [M, B, T].
    """
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def _per_member(param: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-member vector [M, D] shaped to broadcast over a [M, ..., D] tensor of ``ndim`` axes."""
    return param.reshape(param.shape[0], *([1] * (ndim - 2)), param.shape[-1])


class MemberLinear(nn.Module):
    """``members`` independent linear layers as one batched product: x [M or 1, ..., I] -> [M, ..., O].

    Weights are stored ``[M, in, out]``; each member gets its own draw of ``nn.Linear``'s default
    initialisation, as the heads of the reference's grid, built one after another from one seeded stream, do.
    """

    def __init__(self, members: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(members, out_features)) if bias else None
        bound = 1.0 / math.sqrt(in_features)
        self.init_uniform(bound, bound if bias else None)

    def init_uniform(self, weight_bound: float, bias_bound: float | None) -> None:
        """Uniform weights (and biases; 0 bound = zeros), drawn independently for every member."""
        with torch.no_grad():
            self.weight.uniform_(-weight_bound, weight_bound)
            if self.bias is not None and bias_bound is not None:
                self.bias.uniform_(-bias_bound, bias_bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        members, (n_in, n_out) = self.weight.shape[0], self.weight.shape[1:]
        flat = x.reshape(x.shape[0], -1, n_in).expand(members, -1, -1)
        if self.bias is None:
            out = torch.bmm(flat, self.weight)
        else:
            out = torch.baddbmm(self.bias.unsqueeze(1), flat, self.weight)
        return out.reshape(members, *x.shape[1:-1], n_out)


class MemberLayerNorm(nn.Module):
    """LayerNorm with a per-member affine: x [M or 1, ..., D] -> [M, ..., D]."""

    def __init__(self, members: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, dim))
        self.bias = nn.Parameter(torch.zeros(members, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xhat = F.layer_norm(x, x.shape[-1:])
        return xhat * _per_member(self.weight, x.dim()) + _per_member(self.bias, x.dim())


class MemberHeadProjection(nn.Module):
    """Per-attention-head key or value projections of ``members`` layers, stored head-major so the folded
    attention reads them in place, as one batched product over (member, head): values ``[M, H, D, head_dim]``
    (tokens into a head), keys ``[M, H, head_dim, D]`` (a head's queries back into token space). Neither the
    weights nor their gradients are ever copied into another layout. Values carry a bias ``[M, D]``.
    """

    def __init__(self, members: int, dim: int, num_heads: int, bound: float, keys: bool) -> None:
        super().__init__()
        head_dim = dim // num_heads
        shape = (members, num_heads, head_dim, dim) if keys else (members, num_heads, dim, head_dim)
        self.weight = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        self.bias = None if keys else nn.Parameter(torch.zeros(members, dim))

    def by_head(self) -> torch.Tensor:
        """The weights as a batch of matrices [M * H, rows, cols] (a view)."""
        return self.weight.flatten(0, 1)


class MemberHead(nn.Module, abc.ABC):
    """A token head with a member axis on every parameter (see the module docstring)."""

    @property
    def members(self) -> int:
        return int(next(self.parameters()).shape[0])

    @abc.abstractmethod
    def forward_members(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Logits of every member: tokens [B, T, D] -> [M, B, C]."""

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, C] of a single-member head."""
        if self.members != 1:
            raise ValueError(f"this head holds {self.members} members: call forward_members")
        return self.forward_members(tokens, key_padding_mask)[0]

    def member_state(self, member: int) -> dict[str, np.ndarray]:
        """One member's weights as the state of a ``members=1`` head (numpy copies, for checkpoints)."""
        return {k: v[member : member + 1].detach().cpu().numpy().copy() for k, v in self.state_dict().items()}

    @torch.no_grad()
    def keep_members(self, rows: Sequence[int]) -> None:
        """Drop every member not in ``rows`` (stopped grid members stop costing compute)."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=next(self.parameters()).device)
        for p in self.parameters():
            p.data = p.data.index_select(0, index)


class CrossAttentionBlock(nn.Module):
    """The reference cross-attention layer: the queries attend to layer-normed tokens, then a feed-forward
    block; each is residual and followed by a LayerNorm (post-norm), as in the reference trainer's head.

    The parameters are those of a standard multi-head cross-attention (q/k/v/out projections, LayerNorm on
    keys/values), but the forward pass is reordered: the key projection is folded into the queries and the
    value projection is applied after pooling. Both are exact (associativity, and softmax weights sum to one),
    and the per-token cost drops from O(D^2) to O(queries x heads x D). Tokens shared by all members are
    attended over in one product whose query axis holds every member's queries.
    """

    def __init__(self, members: int, dim: int, num_heads: int, ffn_mult: float, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_kv = MemberLayerNorm(members, dim)
        # nn.MultiheadAttention's initialisation: xavier-uniform over the stacked q/k/v weights (fan-in D,
        # fan-out 3D) and zero projection biases, so the head trains like the textbook module. The key bias
        # is left out: it adds the same score to every token, which the softmax cancels.
        bound = _xavier_bound(dim, 3 * dim)
        self.q_proj = MemberLinear(members, dim, dim)
        self.q_proj.init_uniform(bound, 0.0)
        self.k_proj = MemberHeadProjection(members, dim, num_heads, bound, keys=True)
        self.v_proj = MemberHeadProjection(members, dim, num_heads, bound, keys=False)
        self.out_proj = MemberLinear(members, dim, dim)
        self.ln_attn = MemberLayerNorm(members, dim)
        hidden = max(1, round(dim * ffn_mult))
        self.ff_in = MemberLinear(members, dim, hidden)
        self.ff_out = MemberLinear(members, hidden, dim)
        self.ln_ff = MemberLayerNorm(members, dim)
        self.drop = nn.Dropout(dropout)
        nn.init.zeros_(self.out_proj.bias)

    def attend(self, q: torch.Tensor, xhat: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Cross-attention of q [M, Bq, Q, D] (Bq = 1: the learnable queries, shared by all cases) over
        tokens normalised without affine, xhat [Mx, B, T, D] (Mx = 1: shared by all members): [M, B, Q, D]."""
        m, bq, nq, d = q.shape
        mx, b = xhat.shape[:2]
        h = self.num_heads
        dh, g = d // h, m // mx
        # score[m,b,q,h,t] = <Q, K_t>/sqrt(dh); K_t = (xhat_t*g + beta) Wk: terms constant in t cancel, so each
        # head's query is carried into token space, a = Q_h Wk_h^T * g / sqrt(dh), one product per (m, h).
        qh = self.q_proj(q).reshape(m, bq * nq, h, dh).transpose(1, 2).reshape(m * h, bq * nq, dh)
        a = torch.bmm(qh, self.k_proj.by_head()).reshape(m, h, bq, nq, d)
        a = a.permute(0, 2, 3, 1, 4) * _per_member(self.ln_kv.weight / math.sqrt(dh), 5)  # [m, bq, nq, h, d]
        a = a.reshape(mx, g, bq, nq * h, d).transpose(1, 2).reshape(mx, bq, g * nq * h, d)
        scores = torch.matmul(a, xhat.transpose(-1, -2))  # [Mx, B, g*Q*H, T]
        p = masked_softmax(scores, None if mask is None else mask.unsqueeze(1))
        pooled = torch.matmul(p, xhat).reshape(mx, b, g, nq, h, d).transpose(1, 2).reshape(m, b, nq, h, d)
        pooled = pooled * _per_member(self.ln_kv.weight, 5) + _per_member(self.ln_kv.bias, 5)
        pooled = pooled.permute(0, 3, 1, 2, 4).reshape(m * h, b * nq, d)
        v = torch.bmm(pooled, self.v_proj.by_head()).reshape(m, h, b, nq, dh)
        v = v.permute(0, 2, 3, 1, 4).reshape(m, b, nq, d)
        return self.out_proj(v + _per_member(self.v_proj.bias, 4))

    def forward(self, q: torch.Tensor, xhat: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = self.ln_attn(q + self.drop(self.attend(q, xhat, mask)))
        return self.ln_ff(q + self.drop(self.ff_out(self.drop(F.gelu(self.ff_in(q))))))


class AttnPoolHead(MemberHead):
    """The reference task-2 head: learnable queries, cross-attention layers, classifier over all queries.

    Defaults follow the reference trainer (2 queries, 4 heads, 2 layers, feed-forward width 1x, no dropout,
    xavier-initialised queries and classifier). Tokens whose dim is not a multiple of ``num_heads`` (e.g. 9
    hand-made features) are first projected linearly to ``embed_dim``, by default the next multiple of
    ``num_heads``; otherwise they are used as is.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        num_queries: int = 2,
        num_heads: int = 4,
        num_layers: int = 2,
        ffn_mult: float = 1.0,
        dropout: float = 0.0,
        embed_dim: int | None = None,
        members: int = 1,
    ) -> None:
        super().__init__()
        width = embed_dim or -(-dim // num_heads) * num_heads
        if width % num_heads:
            raise ConfigError(f"attn-pool: embed_dim {width} is not divisible by num_heads={num_heads}")
        bound = _xavier_bound(num_queries, width)
        self.queries = nn.Parameter(torch.empty(members, num_queries, width).uniform_(-bound, bound))
        self.in_proj = MemberLinear(members, dim, width) if width != dim else None
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(members, width, num_heads, ffn_mult, dropout) for _ in range(num_layers)
        )
        self.norm = MemberLayerNorm(members, width)
        self.drop = nn.Dropout(dropout)
        self.classifier = MemberLinear(members, num_queries * width, num_classes)
        self.classifier.init_uniform(_xavier_bound(num_queries * width, num_classes), 0.0)

    def forward_members(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        x = tokens.unsqueeze(0)  # one copy of the tokens for every member
        if self.in_proj is not None:
            x = self.in_proj(x)
        # Parameter-free normalisation is shared by every layer; each layer folds in its own affine.
        xhat = F.layer_norm(x, x.shape[-1:])
        q = self.queries.unsqueeze(1)  # [M, 1, Q, D]: broadcast over cases by the first residual
        for block in self.blocks:
            q = block(q, xhat, key_padding_mask)
        q = q.expand(-1, tokens.shape[0], -1, -1)  # only when there are no layers
        return self.classifier(self.drop(self.norm(q).flatten(2)))


def attn_pool_reference_state(state: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """One attn-pool member's weights (:meth:`MemberHead.member_state`) under the reference head's parameter
    names and layouts (``MultiLayersCrossAttentionPooling``: ``class_query``, ``layers.<i>.mha.*`` with
    ``nn.MultiheadAttention``'s stacked q/k/v projection, ``nn.Linear``'s ``[out, in]`` weights, ``norm_*``,
    ``ffn.0``/``ffn.3``, ``final_norm``, ``classifier``). The key bias, which ctfm leaves out because the
    softmax cancels it, is zero. A head with an input projection (tokens whose dim is not a multiple of the
    attention heads) has no reference counterpart: ``ValueError``."""
    t = {k: torch.as_tensor(np.asarray(v))[0] for k, v in state.items()}  # drop the member axis
    if "in_proj.weight" in t:
        raise ValueError("an attn-pool head with an input projection has no reference counterpart")
    out = {"class_query": t["queries"]}
    layers = sorted({int(k.split(".")[1]) for k in t if k.startswith("blocks.")})
    for i in layers:
        b = {k.removeprefix(f"blocks.{i}."): v for k, v in t.items() if k.startswith(f"blocks.{i}.")}
        dim = b["q_proj.bias"].shape[0]
        w_k = b["k_proj.weight"].reshape(dim, dim)  # [H, dh, D]: head h's rows of W_k
        w_v = b["v_proj.weight"].transpose(1, 2).reshape(dim, dim)  # [H, D, dh] -> head h's rows of W_v
        layer = {
            "mha.in_proj_weight": torch.cat([b["q_proj.weight"].T, w_k, w_v]),
            "mha.in_proj_bias": torch.cat([b["q_proj.bias"], torch.zeros(dim), b["v_proj.bias"]]),
            "mha.out_proj.weight": b["out_proj.weight"].T,
            "mha.out_proj.bias": b["out_proj.bias"],
            "norm_attn.weight": b["ln_attn.weight"],
            "norm_attn.bias": b["ln_attn.bias"],
            "ffn.0.weight": b["ff_in.weight"].T,
            "ffn.0.bias": b["ff_in.bias"],
            "ffn.3.weight": b["ff_out.weight"].T,
            "ffn.3.bias": b["ff_out.bias"],
            "norm_ffn.weight": b["ln_ff.weight"],
            "norm_ffn.bias": b["ln_ff.bias"],
            "norm_kv.weight": b["ln_kv.weight"],
            "norm_kv.bias": b["ln_kv.bias"],
        }
        out.update({f"layers.{i}.{k}": v for k, v in layer.items()})
    out.update(
        {
            "final_norm.weight": t["norm.weight"],
            "final_norm.bias": t["norm.bias"],
            "classifier.weight": t["classifier.weight"].T,
            "classifier.bias": t["classifier.bias"],
        }
    )
    return {k: v.float().contiguous().clone() for k, v in out.items()}


def _xavier_bound(fan_a: int, fan_b: int) -> float:
    """Bound of xavier-uniform initialisation for a weight joining ``fan_a`` and ``fan_b`` units."""
    return math.sqrt(6.0 / (fan_a + fan_b))


class MeanLinearHead(MemberHead):
    """Mean over the real tokens, then one linear layer: the simplest aggregation baseline."""

    def __init__(self, dim: int, num_classes: int, members: int = 1) -> None:
        super().__init__()
        self.linear = MemberLinear(members, dim, num_classes)

    def forward_members(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        return self.linear(masked_mean(tokens, key_padding_mask).unsqueeze(0))


class ABMILHead(MemberHead):
    """Gated attention multiple-instance pooling: per-token gated scores, masked softmax, weighted sum."""

    def __init__(
        self, dim: int, num_classes: int, hidden: int = 128, dropout: float = 0.0, members: int = 1
    ) -> None:
        super().__init__()
        self.embed = MemberLinear(members, dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.attn_v = MemberLinear(members, hidden, hidden)
        self.attn_u = MemberLinear(members, hidden, hidden)
        self.attn_w = MemberLinear(members, hidden, 1)
        self.classifier = MemberLinear(members, hidden, num_classes)

    def forward_members(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        h = self.drop(F.relu(self.embed(tokens.unsqueeze(0))))  # [M, B, T, hidden]
        gate = torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))
        p = masked_softmax(self.attn_w(gate).squeeze(-1), key_padding_mask)
        return self.classifier(torch.einsum("mbt,mbth->mbh", p, h))


class MLPHead(MemberHead):
    """Mean over the real tokens, then a one-hidden-layer MLP."""

    def __init__(
        self, dim: int, num_classes: int, hidden: int = 256, dropout: float = 0.0, members: int = 1
    ) -> None:
        super().__init__()
        self.norm = MemberLayerNorm(members, dim)
        self.fc_in = MemberLinear(members, dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc_out = MemberLinear(members, hidden, num_classes)

    def forward_members(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.norm(masked_mean(tokens, key_padding_mask).unsqueeze(0))
        return self.fc_out(self.drop(F.gelu(self.fc_in(x))))


EAO_HEADS: dict[str, Callable[..., MemberHead]] = {
    "attn-pool": AttnPoolHead,
    "mean-linear": MeanLinearHead,
    "abmil": ABMILHead,
    "mlp": MLPHead,
}
