"""EAO token heads: exact masking, the reordered attention, registry, and learning a planted local finding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctfm.core.errors import ConfigError
from ctfm.probe.eao_grid import HeadGrid, HeadSpec, StackedOptimizer
from ctfm.probe.eao_heads import EAO_HEADS, AttnPoolHead
from ctfm.probe.heads import HEADS, build_head
from ctfm.probe.tokens import TokenReader, bucketed_batches
from ctfm.probe.training import SGD_MOMENTUM
from eao_fixtures import flatten, one_thread, planted_tokens  # noqa: F401 (fixture)

SMALL = {
    "attn-pool": {"num_layers": 1, "ffn_mult": 2.0},
    "mean-linear": {},
    "abmil": {"hidden": 16},
    "mlp": {"hidden": 16},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_heads_are_in_the_shared_registry() -> None:
    assert set(EAO_HEADS) <= set(HEADS)
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
    """The reference layer's computation (explicit keys and values through nn.MultiheadAttention, post-norm
    residuals) of a one-member head (member weights are stored [1, in, out])."""

    def linear(layer: torch.nn.Module, v: torch.Tensor) -> torch.Tensor:
        return v @ layer.weight[0] + layer.bias[0]

    def norm(layer: torch.nn.Module, v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(v, v.shape[-1:], layer.weight[0], layer.bias[0])

    q = head.queries[0].unsqueeze(0).expand(x.shape[0], -1, -1)
    for b in head.blocks:
        mha = torch.nn.MultiheadAttention(x.shape[-1], b.num_heads, batch_first=True).eval()
        d = x.shape[-1]
        wk = b.k_proj.weight[0].reshape(d, d)  # [H, dh, D]: already output units (head-major) x inputs
        wv = b.v_proj.weight[0].transpose(1, 2).reshape(d, d)  # [H, D, dh] -> the same layout
        mha.in_proj_weight.data = torch.cat([b.q_proj.weight[0].T, wk, wv])
        key_bias = torch.randn(d)  # any key bias: the softmax cancels it
        mha.in_proj_bias.data = torch.cat([b.q_proj.bias[0], key_bias, b.v_proj.bias[0]])
        mha.out_proj.weight.data, mha.out_proj.bias.data = b.out_proj.weight[0].T, b.out_proj.bias[0]
        kv = norm(b.ln_kv, x)
        q = norm(b.ln_attn, q + mha(q, kv, kv, need_weights=False)[0])
        q = norm(b.ln_ff, q + linear(b.ff_out, torch.nn.functional.gelu(linear(b.ff_in, q))))
    return linear(head.classifier, norm(head.norm, q).flatten(1))


def test_reordered_attention_equals_the_textbook_one() -> None:
    torch.manual_seed(1)
    head = AttnPoolHead(16, 3, num_queries=2, num_heads=4, num_layers=2).eval()
    for p in head.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(3, 11, 16)
    with torch.no_grad():
        torch.testing.assert_close(head(x), _naive_attn_pool(head, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("name", "dim", "options"),
    [(n, 8, SMALL[n]) for n in sorted(EAO_HEADS)] + [("attn-pool", 9, {"num_layers": 2})],  # 9: in_proj
)
def test_every_member_of_a_stacked_head_is_its_own_single_head(name: str, dim: int, options: dict) -> None:
    torch.manual_seed(0)
    stacked = build_head(name, dim=dim, num_classes=3, members=3, **options).eval()
    for p in stacked.parameters():  # members differ from one another
        p.data.normal_(0, 0.5)
    x, mask = torch.randn(4, 6, dim), torch.zeros(4, 6, dtype=torch.bool)
    mask[1, 4:] = True
    together = stacked.forward_members(x, mask)
    for m in range(3):
        single = build_head(name, dim=dim, num_classes=3, **options).eval()
        single.load_state_dict({k: torch.from_numpy(v) for k, v in stacked.member_state(m).items()})
        torch.testing.assert_close(together[m], single(x, mask), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="forward_members"):
        stacked(x, mask)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_grid_members_train_exactly_like_separately_built_heads_and_stop_cleanly(optimizer: str) -> None:
    """Each member of a stacked grid follows the torch optimiser on its own head at its own lr, before and
    after another member is stopped and cut out of the stack."""
    spec = HeadSpec("attn-pool", {"num_layers": 2, "ffn_mult": 2.0, "num_heads": 2})
    lrs = [1e-3, 1e-2, 3e-2]
    grid = HeadGrid([spec], lrs, dim=8, num_classes=2, seed=3, weight_decay=0.01, optimizer=optimizer)
    first = [grid.state_of(k) for k in range(3)]
    assert not np.allclose(first[0]["queries"], first[1]["queries"])  # each member its own initial draw
    singles = []
    for k, lr in enumerate(lrs):
        head = build_head("attn-pool", dim=8, num_classes=2, **spec.kwargs)
        head.load_state_dict({name: torch.from_numpy(v) for name, v in first[k].items()})
        opt = (
            torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
            if optimizer == "adamw"
            else torch.optim.SGD(head.parameters(), lr=lr, momentum=SGD_MOMENTUM, weight_decay=0.01)
        )
        singles.append((head, opt))
    cases, y = planted_tokens(24, grids=[(2, 2, 2), (2, 2, 1)], amp=3.0, seed=1, dim=8)
    reader, yt = TokenReader(*flatten(cases)), torch.from_numpy(y)
    for step in range(6):
        if step == 3:
            grid.stop([1])
            singles[1] = None
        rows = np.arange(step * 4, step * 4 + 8) % 24
        batch = reader.batch(rows)
        grid.set_schedule(0.5)
        losses = grid.train_step(batch, yt[rows])
        for k, pair in enumerate(singles):
            if pair is None:
                continue
            head, opt = pair
            for g in opt.param_groups:
                g["lr"] = lrs[k] * 0.5
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(head(batch.tokens, batch.mask), yt[rows])
            loss.backward()
            opt.step()
            assert float(losses[k]) == pytest.approx(loss.item(), abs=1e-5)
            state = grid.state_of(k)
            for key, value in head.state_dict().items():
                np.testing.assert_allclose(state[key], value.detach().numpy(), atol=1e-5, err_msg=key)
    assert [m.index for m in grid.active] == [0, 2] and grid.stacks[0].module.members == 2
    with pytest.raises(KeyError):
        grid.state_of(1)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_stacked_optimiser_skips_a_parameter_without_gradient_as_torch_does(kind: str) -> None:
    """A parameter that gets no gradient in a step is left alone and its step count does not advance,
    as ``torch.optim`` leaves a parameter whose ``grad`` is None."""
    torch.manual_seed(0)
    lrs, shapes = [1e-2, 3e-2], [(3,), (2, 2)]
    stacked = [torch.nn.Parameter(torch.randn(len(lrs), *s)) for s in shapes]
    opt = StackedOptimizer(kind, stacked, lrs, [0.01, 0.01])
    singles = []
    for r, lr in enumerate(lrs):
        params = [torch.nn.Parameter(p.detach()[r].clone()) for p in stacked]
        ref = (
            torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
            if kind == "adamw"
            else torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, weight_decay=0.01)
        )
        singles.append((params, ref))
    for step, with_grad in enumerate([(0, 1), (0,), (0, 1), (0,)]):
        grads = [torch.randn_like(p) for p in stacked]
        for i, p in enumerate(stacked):
            p.grad = grads[i] if i in with_grad else None
        opt.step(1.0)
        for r, (params, ref) in enumerate(singles):
            for i, p in enumerate(params):
                p.grad = grads[i][r].clone() if i in with_grad else None
            ref.step()
            for i, p in enumerate(params):
                np.testing.assert_allclose(
                    stacked[i].detach()[r], p.detach(), atol=1e-6, err_msg=f"{step=} {i=}"
                )
    if kind == "adamw":
        assert opt.steps.tolist() == [[4.0, 2.0], [4.0, 2.0]]


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
