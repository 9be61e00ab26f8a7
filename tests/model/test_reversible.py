"""The reversible stack: equal to plain autograd, reconstructs its inputs, reuses the forward's buckets,
replays dropout, trains parameters without an input gradient, and never disturbs the caller's RNG
(anchors sec. 5, tests 6 and 7).
"""

from __future__ import annotations

import pytest
import torch

from reformer_retrieval import ReformerConfig, ReformerEncoder
from reformer_retrieval.model.lsh_attention import SequenceInfo


def _config(**kw) -> ReformerConfig:
    base = dict(
        d_model=32, n_layers=3, n_heads=2, d_ff=64, embedding_dim=16, chunk_size=16, max_len=1024,
        axial_pos_shape=(32, 32), n_hashes=2, dropout=0.1, attention_dropout=0.1,
    )
    base.update(kw)
    return ReformerConfig(**base)


def _pair(cfg: ReformerConfig) -> tuple[ReformerEncoder, ReformerEncoder]:
    """A reversible model and a plain-autograd twin with the same weights (state dicts load across both)."""
    torch.manual_seed(0)
    rev = ReformerEncoder(cfg.replace(reversible=True))
    plain = ReformerEncoder(cfg.replace(reversible=False))
    plain.load_state_dict(rev.state_dict(), strict=True)
    return rev, plain


def _inputs(cfg: ReformerConfig, lengths=(150, 90), L: int = 160):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(len(lengths), L, cfg.d_model, generator=gen)
    mask = torch.zeros(len(lengths), L, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    weights = torch.randn(2, len(lengths), L, cfg.d_model, generator=gen)
    return x, SequenceInfo.from_mask(mask), weights


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def _stack_grads(model, x, info, weights, seed=123):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    y1, y2 = model.stack(x, x, info)
    loss = (y1 * weights[0]).sum() + (y2 * weights[1]).sum()
    params = list(model.stack.parameters())
    grads = torch.autograd.grad(loss, [x, *params])
    return (y1, y2), grads[0], grads[1:]


# ---------------------------------------------------------------------------------------------- test 6


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_reversible_equals_plain_autograd_on_the_stack(mode):
    """Anchors test 6: outputs, input grads and every parameter grad, with dropout and LSH (10 chunks)."""
    cfg = _config()
    rev, plain = _pair(cfg)
    x, info, weights = _inputs(cfg)
    results = []
    for model in (rev, plain):
        model.train(mode == "train")
        results.append(_stack_grads(model, x, info, weights))
    (ry, rgx, rgp), (py, pgx, pgp) = results
    assert _close(ry[0], py[0]) and _close(ry[1], py[1])
    assert _close(rgx, pgx)
    names = [n for n, _ in rev.stack.named_parameters()]
    assert len(rgp) == len(pgp) == len(names) > 0
    for name, a, b in zip(names, rgp, pgp):
        assert a is not None and b is not None, name
        assert _close(a, b), name
    # the dropout really fired in training (else the replay would not be tested)
    if mode == "train":
        rev.train()
        x2 = x.clone()
        torch.manual_seed(5)
        with torch.no_grad():
            a = rev.stack(x2, x2, info)[0]
        torch.manual_seed(6)
        with torch.no_grad():
            b = rev.stack(x2, x2, info)[0]
        assert (a - b).abs().max().item() > 1e-4


def test_reversible_path_is_the_custom_function():
    cfg = _config()
    rev, plain = _pair(cfg)
    x, info, _ = _inputs(cfg)
    y_rev = rev.train().stack(x, x, info)[0]
    y_plain = plain.train().stack(x, x, info)[0]
    assert "Reversible" in type(y_rev.grad_fn).__name__
    assert "Reversible" not in type(y_plain.grad_fn).__name__


def test_reversible_equals_plain_autograd_through_the_encoder():
    """Same embeddings and every parameter grad (token and position embeddings included), dropout on."""
    cfg = _config()
    rev, plain = _pair(cfg)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(4, 260, (2, 150), generator=gen)
    mask = torch.ones(2, 150, dtype=torch.long)
    mask[1, 100:] = 0
    target = torch.randn(2, cfg.embedding_dim, generator=gen)
    grads = []
    for model in (rev, plain):
        model.train()
        model.zero_grad()
        torch.manual_seed(7)
        emb = model(ids, mask)
        (emb * target).sum().backward()
        grads.append((emb.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (e_rev, g_rev), (e_plain, g_plain) = grads
    assert _close(e_rev, e_plain)
    assert g_rev.keys() == g_plain.keys()
    for name in g_rev:
        assert _close(g_rev[name], g_plain[name]), name
    assert g_rev["token_embedding.weight"].abs().sum() > 0
    assert g_rev["position_embedding.weight_row"].abs().sum() > 0


def test_state_dicts_load_across_reversible_and_plain():
    cfg = _config()
    rev = ReformerEncoder(cfg)
    plain = ReformerEncoder(cfg.replace(reversible=False))
    assert rev.state_dict().keys() == plain.state_dict().keys()
    rev.load_state_dict(plain.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(rev.state_dict().values(), plain.state_dict().values()))


def test_stack_inversion_reconstructs_the_input():
    """Invert six layers from the top, reusing each layer's buckets: drift stays at float32 rounding."""
    cfg = _config(n_layers=6, dropout=0.0, attention_dropout=0.0)
    model = ReformerEncoder(cfg).eval()
    x, info, _ = _inputs(cfg)
    layers = list(model.stack.layers)
    with torch.no_grad():
        x1, x2 = x, x
        buckets = []
        for layer in layers:
            x1, x2, b = layer(x1, x2, info)
            assert b is not None  # the LSH path
            buckets.append(b)
        y1, y2 = x1, x2
        for layer, b in zip(reversed(layers), reversed(buckets)):
            prev2 = y2 - layer.feed_forward(y1)
            prev1 = y1 - layer.attention(prev2, info, b)[0]
            y1, y2 = prev1, prev2
    assert (y1 - x).abs().max().item() < 1e-4
    assert (y2 - x).abs().max().item() < 1e-4
    assert (x1 - x).abs().max().item() > 1e-2  # the stack did change its input


def test_parameters_get_gradients_when_the_input_does_not_require_grad():
    cfg = _config(dropout=0.0, attention_dropout=0.0)
    model = ReformerEncoder(cfg).train()
    x, info, weights = _inputs(cfg)
    assert not x.requires_grad
    y1, y2 = model.stack(x, x, info)
    ((y1 * weights[0]).sum() + (y2 * weights[1]).sum()).backward()
    for name, p in model.stack.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frozen_embeddings_still_train_the_stack():
    cfg = _config()
    model = ReformerEncoder(cfg).train()
    model.token_embedding.requires_grad_(False)
    model.position_embedding.requires_grad_(False)
    ids = torch.randint(4, 260, (1, 100), generator=torch.Generator().manual_seed(3))
    model(ids).sum().backward()
    assert model.token_embedding.weight.grad is None
    for name, p in model.stack.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.projection.weight.grad is not None


# ---------------------------------------------------------------------------------------------- test 7


@pytest.mark.parametrize("reversible", [True, False])
def test_backward_reuses_the_forward_buckets(monkeypatch, reversible):
    """Anchors test 7: one hash per LSH layer per forward, the backward included; re-hashing would fail."""
    cfg = _config(reversible=reversible, attention_layers=("lsh", "local", "lsh"))
    model = ReformerEncoder(cfg).train()
    ids = torch.randint(4, 260, (2, 160), generator=torch.Generator().manual_seed(4))
    for att in model.attention_layers:
        att.hash_calls = 0
    emb = model(ids)
    assert [a.hash_calls for a in model.attention_layers] == [1, 0, 1]

    def refuse(*args, **kwargs):
        raise AssertionError("the backward re-hashed instead of reusing the forward's buckets")

    for att in model.attention_layers:
        monkeypatch.setattr(att, "compute_buckets", refuse)
    emb.sum().backward()
    assert [a.hash_calls for a in model.attention_layers] == [1, 0, 1]
    assert all(p.grad is not None for p in model.stack.parameters())


# ---------------------------------------------------------------------------------------------- RNG


@pytest.mark.parametrize("reversible", [True, False])
def test_eval_forward_leaves_the_global_rng_untouched(reversible):
    cfg = _config(reversible=reversible)  # dropout configured but inactive in eval
    model = ReformerEncoder(cfg).eval()
    ids = torch.randint(4, 260, (2, 200), generator=torch.Generator().manual_seed(5))
    torch.manual_seed(11)
    state = torch.get_rng_state()
    with torch.no_grad():
        model(ids)
    model(ids).sum().backward()  # eval with grad: the reversible Function path
    assert torch.equal(torch.get_rng_state(), state)


def test_reversible_backward_leaves_the_callers_rng_untouched():
    cfg = _config()  # dropout on: the backward replays saved random states inside fork_rng
    model = ReformerEncoder(cfg).train()
    ids = torch.randint(4, 260, (2, 200), generator=torch.Generator().manual_seed(6))
    torch.manual_seed(12)
    emb = model(ids)
    state = torch.get_rng_state()
    emb.sum().backward()
    assert torch.equal(torch.get_rng_state(), state)


def test_training_without_dropout_uses_no_randomness():
    cfg = _config(dropout=0.0, attention_dropout=0.0)
    model = ReformerEncoder(cfg).train()
    ids = torch.randint(4, 260, (2, 200), generator=torch.Generator().manual_seed(7))
    torch.manual_seed(13)
    state = torch.get_rng_state()
    model(ids).sum().backward()
    assert torch.equal(torch.get_rng_state(), state)


def test_reversible_backward_recomputes_under_the_forward_autocast():
    """Forward under bfloat16 autocast, backward outside it (as a training loop does; CPU autocast here,
    CUDA's in GPU training): the reversible gradients match plain autograd's, because the backward's
    recomputation re-enters the forward's autocast state instead of redoing the layers in fp32."""
    cfg = _config(dropout=0.0, attention_dropout=0.0)
    rev, plain = _pair(cfg)
    x, info, weights = _inputs(cfg)
    grads = []
    for model in (rev.train(), plain.train()):
        xin = x.clone().requires_grad_(True)
        with torch.autocast("cpu", torch.bfloat16):
            y1, y2 = model.stack(xin, xin, info)
        loss = (y1.float() * weights[0]).sum() + (y2.float() * weights[1]).sum()
        grads.append(torch.autograd.grad(loss, [xin, *model.stack.parameters()]))
    rel = [((a - b).norm() / b.norm()).item() for a, b in zip(*grads) if b.norm() > 0]
    assert max(rel) < 0.004, rel  # recomputing in fp32 instead gives 0.0066 here
