"""EAO token heads: exact masking, the reordered attention, registry, and learning a planted local finding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctfm.errors import ConfigError
from ctfm.probe.eao import HeadGrid, HeadSpec, TokenReader, bucketed_batches
from ctfm.probe.eao_heads import EAO_HEADS, AttnPoolHead
from ctfm.probe.heads import build_head, head_names
from eao_fixtures import flatten, planted_tokens

SMALL = {
    "attn-pool": {"num_layers": 1, "ffn_mult": 2.0},
    "mean-linear": {},
    "abmil": {"hidden": 16},
    "mlp": {"hidden": 16},
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is fastest, and immune to a busy machine's oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_heads_are_in_the_shared_registry() -> None:
    assert set(EAO_HEADS) <= set(head_names())
    head = build_head("attn-pool", dim=8, num_classes=3, num_queries=3, num_heads=2, num_layers=1)
    assert head(torch.randn(2, 5, 8), torch.zeros(2, 5, dtype=torch.bool)).shape == (2, 3)


def test_bad_head_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        build_head("attn-pool", dim=10, num_classes=2, num_heads=4, embed_dim=10)
    # a token dim that is not a multiple of num_heads is projected to the next multiple, not refused
    odd = build_head("attn-pool", dim=9, num_classes=2, num_heads=4, num_layers=1)
    assert odd(torch.randn(2, 5, 9), torch.zeros(2, 5, dtype=torch.bool)).shape == (2, 2)
    with pytest.raises(ConfigError, match="unknown head"):
        build_head("no-such-head", dim=8, num_classes=2)


@pytest.mark.parametrize("name", sorted(EAO_HEADS))
def test_padding_never_changes_a_prediction(name: str) -> None:
    torch.manual_seed(0)
    head = build_head(name, dim=8, num_classes=2, **SMALL[name]).eval()
    for p in head.parameters():  # make every path matter
        p.data.normal_(0, 0.5)
    short, long = torch.randn(1, 4, 8), torch.randn(1, 9, 8)
    alone = head(short, torch.zeros(1, 4, dtype=torch.bool))
    padded = torch.zeros(2, 9, 8)
    padded[0, :4], padded[1] = short[0], long[0]
    padded[0, 4:] = 123.0  # garbage in the padding must be ignored
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 4:] = True
    batched = head(padded, mask)
    torch.testing.assert_close(batched[0:1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1:2], head(long, None), atol=1e-5, rtol=1e-5)


def _naive_attn_pool(head: AttnPoolHead, x: torch.Tensor) -> torch.Tensor:
    """The textbook computation (explicit keys and values through nn.MultiheadAttention)."""
    q = head.queries.unsqueeze(0).expand(x.shape[0], -1, -1)
    for b in head.blocks:
        mha = torch.nn.MultiheadAttention(x.shape[-1], b.num_heads, batch_first=True).eval()
        mha.in_proj_weight.data = torch.cat([b.q_proj.weight, b.k_proj.weight, b.v_proj.weight])
        mha.in_proj_bias.data = torch.cat([b.q_proj.bias, b.k_proj.bias, b.v_proj.bias])
        mha.out_proj.load_state_dict(b.out_proj.state_dict())
        kv = b.ln_kv(x)
        q = q + mha(b.ln_q(q), kv, kv, need_weights=False)[0]
        q = q + b.ff(b.ln_ff(q))
    return head.classifier(head.norm(q).flatten(1))


def test_reordered_attention_equals_the_textbook_one() -> None:
    torch.manual_seed(1)
    head = AttnPoolHead(16, 3, num_queries=2, num_heads=4, num_layers=2).eval()
    for p in head.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(3, 11, 16)
    with torch.no_grad():
        torch.testing.assert_close(head(x), _naive_attn_pool(head, x), atol=1e-5, rtol=1e-4)


def _train_grid(names: list[str], epochs: int = 12) -> dict[str, float]:
    """Train each head (lr grid of 2) on the planted data; best val accuracy per head name."""
    torch.manual_seed(0)
    cases, y = planted_tokens(240, grids=[(3, 3, 3), (2, 3, 3), (3, 3, 2)], amp=4.0, seed=0)
    reader = TokenReader(*flatten(cases))
    train, val = np.arange(160), np.arange(160, 240)
    specs = [HeadSpec(n, SMALL[n]) for n in names]
    grid = HeadGrid(specs, [1e-3, 3e-3], dim=16, num_classes=2, seed=0)
    rng = np.random.default_rng(0)
    best: dict[str, float] = dict.fromkeys(names, 0.0)
    yt = torch.from_numpy(y)
    for _ in range(epochs):
        for rows in bucketed_batches(rng.permutation(train), reader.lengths, 32, rng):
            grid.train_step(reader.batch(rows), yt[rows])
        logits = grid.logits(reader, val, 64)
        for m in grid.members:
            acc = float((logits[m.index].argmax(1) == y[val]).mean())
            best[m.spec.name] = max(best[m.spec.name], acc)
    return best


@pytest.mark.slow
def test_every_head_learns_a_planted_local_finding_and_attention_wins() -> None:
    best = _train_grid(sorted(EAO_HEADS))
    for name, acc in best.items():
        assert acc > 0.6, f"{name} did not learn the planted finding: {best}"
    assert best["attn-pool"] > best["mean-linear"] + 0.05, best
