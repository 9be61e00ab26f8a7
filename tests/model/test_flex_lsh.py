"""The FlexAttention kernel of LSH / local attention against the float64 brute-force reference (values and
gradients), the CUDA formulation run eagerly, the module switch and its fallback.

Every compiled call here uses the same shapes (24 rows of 128 positions, chunk 16) so the kernel compiles
once or twice per process; the first compile takes ~10-20 s on a CPU, hence the slow marks.
"""

from __future__ import annotations

import logging

import pytest
import torch

from reformer_retrieval import ReformerConfig
from reformer_retrieval.model import flex_lsh
from reformer_retrieval.model.chunked_attention import chunked_attention, combine_rounds
from reformer_retrieval.model.flex_lsh import flex_chunked_attention, padded_length
from reformer_retrieval.model.lsh_attention import PAD_BUCKET, LSHSelfAttention, SequenceInfo, sort_by_buckets

D64 = torch.float64
B, H, R, L, D, CHUNK = 4, 2, 3, 128, 8, 16
LENGTHS = [128, 77, 20, 1]  # 8 full chunks; 5 real chunks (the last partial); 2 chunks; a lone token


def _valid() -> torch.Tensor:
    valid = torch.zeros(B, L, dtype=torch.bool)
    for row, n in enumerate(LENGTHS):
        valid[row, :n] = True
    return valid


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    valid = _valid()
    qk = torch.randn(B, H, L, D, generator=gen, dtype=D64) * 2
    v = torch.randn(B, H, L, D, generator=gen, dtype=D64)
    buckets = torch.randint(0, 6, (B, H, R, L), generator=gen)
    buckets = torch.where(valid[:, None, None, :], buckets, torch.full_like(buckets, PAD_BUCKET))
    return qk, v, buckets, valid


def _flex(qk, v, buckets, valid, before=1, after=1, **kw) -> torch.Tensor:
    nrc = ((valid.sum(1) + CHUNK - 1) // CHUNK).clamp(min=1)
    return flex_chunked_attention(
        qk.reshape(B * H, L, D), v.reshape(B * H, L, D), sort_by_buckets(buckets).reshape(B * H, R, L),
        valid.repeat_interleave(H, 0), nrc.repeat_interleave(H, 0), CHUNK, before, after, True, **kw,
    ).view(B, H, L, D)


def test_padded_lengths_are_few():
    assert [padded_length(n, 64) for n in (64, 128, 192, 4096, 5000, 65536)] == [128, 128, 256, 4096, 8192, 65536]
    assert len({padded_length(n, 64) for n in range(64, 65537, 64)}) == 10


@pytest.mark.slow
@pytest.mark.parametrize(("before", "after"), [(1, 1), (1, 0)])
def test_flex_equals_bruteforce_reference_values_and_gradients(lsh_reference, before, after):
    """Padding, wrap-around, 3 rounds, a 2-chunk and a 1-token document: float32 kernel vs float64 loops."""
    qk, v, buckets, valid = _inputs(1)
    ref, _ = lsh_reference(qk, v, buckets, valid, CHUNK, before, after)
    q32, v32 = qk.float().requires_grad_(), v.float().requires_grad_()
    out = _flex(q32, v32, buckets, valid, before, after, budget=CHUNK * CHUNK * 3 * L)  # backward in slices
    real = valid[:, None, :].expand(B, H, L)
    assert torch.isfinite(out).all()
    assert (out.double() - ref)[real].abs().max().item() < 2e-5
    # the lone token returns its own value, as the masked path does
    assert torch.allclose(out[3, :, 0].double(), v[3, :, 0], atol=1e-6)
    weight = torch.randn(B, H, L, D, generator=torch.Generator().manual_seed(9), dtype=D64) * real[..., None]
    (out.double() * weight).sum().backward()
    q_ref, v_ref = qk.clone().requires_grad_(), v.clone().requires_grad_()
    (lsh_reference(q_ref, v_ref, buckets, valid, CHUNK, before, after)[0] * weight).sum().backward()
    scale = max(q_ref.grad.abs().max().item(), 1.0)
    assert (q32.grad.double() - q_ref.grad).abs().max().item() < 2e-5 * scale
    assert (v32.grad.double() - v_ref.grad).abs().max().item() < 2e-5 * scale


@pytest.mark.slow
def test_flex_inference_path_equals_the_reference(lsh_reference):
    """Without gradients the CPU kernel takes its fused inference path (inputs gathered straight into the
    kernel's layout, un-sorting, the sink division and the round combination in one scale): the same values,
    the lone token included, for LSH and for local attention (padding in the middle of a row)."""
    qk, v, buckets, valid = _inputs(6)
    ref, _ = lsh_reference(qk, v, buckets, valid, CHUNK)
    with torch.no_grad():
        out = _flex(qk.float(), v.float(), buckets, valid)
    real = valid[:, None, :].expand(B, H, L)
    assert (out.double() - ref)[real].abs().max().item() < 2e-5
    assert torch.allclose(out[3, :, 0].double(), v[3, :, 0], atol=1e-6)  # the lone token: its own value
    valid[1, 30:50] = False
    ref = _local_reference(qk, v, valid)
    ends = (valid.long() * torch.arange(1, L + 1)).amax(1)
    nrc = ((ends + CHUNK - 1) // CHUNK).clamp(min=1).repeat_interleave(H, 0)
    with torch.no_grad():
        out = flex_chunked_attention(
            qk.float().reshape(B * H, L, D), v.float().reshape(B * H, L, D), torch.arange(L).expand(B * H, 1, L),
            valid.repeat_interleave(H, 0), nrc, CHUNK, 1, 1, wrap=False,
        ).view(B, H, L, D)
    real = valid[:, None, :].expand(B, H, L)
    assert (out.double() - ref)[real].abs().max().item() < 2e-5


@pytest.mark.filterwarnings("ignore::UserWarning")  # eager FlexAttention warns that it is meant to be compiled
@pytest.mark.filterwarnings("error::FutureWarning")  # the logsumexp through return_aux, not the deprecated return_lse
def test_cuda_formulation_run_eagerly_equals_the_reference(lsh_reference):
    """FlexAttention's own logsumexp (the CUDA path), evaluated eagerly on CPU: the mask alone is exact, and
    asked for through ``return_aux`` where torch has it (``return_lse`` is deprecated there)."""
    qk, v, buckets, valid = _inputs(2)
    ref, _ = lsh_reference(qk, v, buckets, valid, CHUNK)
    with torch.no_grad():
        out = _flex(qk.float(), v.float(), buckets, valid, kernel_lse=False)
    real = valid[:, None, :].expand(B, H, L)
    assert (out.double() - ref)[real].abs().max().item() < 2e-5


def _local_reference(qk: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Local attention (position order, no wrap) through the masked path in float64."""
    N = B * H
    ends = (valid.long() * torch.arange(1, L + 1)).amax(1)
    nrc = ((ends + CHUNK - 1) // CHUNK).clamp(min=1).repeat_interleave(H, 0)
    out, lse = chunked_attention(
        qk.reshape(N, L, D), v.reshape(N, L, D), torch.arange(L).expand(N, 1, L), valid.repeat_interleave(H, 0),
        nrc, CHUNK, 1, 1, wrap=False,
    )
    return combine_rounds(out, lse).view(B, H, L, D)


@pytest.mark.slow
def test_flex_local_attention_equals_the_masked_path():
    """Chunked local attention (no hashing, no wrap-around) with padding in the middle of a row."""
    qk, v, _, valid = _inputs(3)
    valid[1, 30:50] = False
    ref = _local_reference(qk, v, valid)
    q32, v32 = qk.float().requires_grad_(), v.float().requires_grad_()
    ends = (valid.long() * torch.arange(1, L + 1)).amax(1)
    nrc = ((ends + CHUNK - 1) // CHUNK).clamp(min=1).repeat_interleave(H, 0)
    out = flex_chunked_attention(
        q32.reshape(B * H, L, D), v32.reshape(B * H, L, D), torch.arange(L).expand(B * H, 1, L),
        valid.repeat_interleave(H, 0), nrc, CHUNK, 1, 1, wrap=False,
    ).view(B, H, L, D)
    real = valid[:, None, :].expand(B, H, L)
    assert (out.double() - ref)[real].abs().max().item() < 2e-5
    out.double()[real].sum().backward()
    q_ref, v_ref = qk.clone().requires_grad_(), v.clone().requires_grad_()
    _local_reference(q_ref, v_ref, valid)[real].sum().backward()
    assert (q32.grad.double() - q_ref.grad).abs().max().item() < 1e-4
    assert (v32.grad.double() - v_ref.grad).abs().max().item() < 1e-4


def _module_pair() -> tuple[LSHSelfAttention, LSHSelfAttention]:
    cfg = dict(d_model=H * D, n_layers=1, n_heads=H, d_ff=32, embedding_dim=8, chunk_size=CHUNK, max_len=512,
               axial_pos_shape=(16, 32), n_hashes=R)
    chunked = LSHSelfAttention(ReformerConfig(**cfg, attention_impl="chunked"), 0)
    flex = LSHSelfAttention(ReformerConfig(**cfg, attention_impl="flex"), 0)
    flex.load_state_dict(chunked.state_dict())
    return chunked, flex


@pytest.mark.slow
def test_module_flex_equals_module_chunked_in_training():
    """The switch inside `LSHSelfAttention`: same buckets, same outputs and parameter gradients."""
    chunked, flex = _module_pair()
    x = torch.randn(B, L, H * D, generator=torch.Generator().manual_seed(4))
    info = SequenceInfo.from_mask(_valid())
    out_c, buckets = chunked(x, info)
    out_f, buckets_f = flex(x, info)
    assert torch.equal(buckets, buckets_f)
    real = info.key_valid
    assert (out_c - out_f)[real].abs().max().item() < 1e-5
    out_c[real].pow(2).sum().backward()
    out_f[real].pow(2).sum().backward()
    for (name, p_c), p_f in zip(chunked.named_parameters(), flex.parameters()):
        assert torch.allclose(p_c.grad, p_f.grad, atol=1e-4, rtol=1e-4), name


@pytest.mark.parametrize("where", ["kernel", "compile"])
def test_failed_compile_falls_back_with_one_line(monkeypatch, caplog, where):
    """Where the kernel cannot run (here: the compiled call raising as inductor does without a C++ compiler,
    or the whole kernel raising), the module logs one line and uses the masked path from then on."""
    chunked, flex = _module_pair()
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("CppCompileError: C++ compile error: g++ not found\nlong trace")

    if where == "compile":
        monkeypatch.setattr(flex_lsh, "_compiled_flex", lambda: broken)
    else:
        monkeypatch.setattr("reformer_retrieval.model.lsh_attention.flex_chunked_attention", broken)
    monkeypatch.setattr(flex_lsh, "_STATE", {})
    x = torch.randn(B, L, H * D, generator=torch.Generator().manual_seed(5))
    info = SequenceInfo.from_mask(_valid())
    with caplog.at_level(logging.WARNING, logger="reformer_retrieval.model.flex_lsh"), torch.no_grad():
        out_f, _ = flex(x, info)
        flex(x, info)
        out_c, _ = chunked(x, info)
    assert len(calls) == 1
    warnings = [r for r in caplog.records if "FlexAttention cannot run" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert torch.equal(out_f, out_c)


@pytest.mark.slow
def test_a_new_batch_size_does_not_recompile():
    """Rows (documents x heads x rounds) ride in FlexAttention's batch dimension, marked dynamic: after the
    first call at a padded length, other batch sizes reuse the compiled kernel (one compile per length)."""
    from torch._dynamo.utils import counters

    qk, v, buckets, valid = _inputs(7)
    with torch.no_grad():
        _flex(qk.float(), v.float(), buckets, valid)  # compiled (or loaded) once for this length
        before = counters["stats"]["unique_graphs"]
        for n in (1, 3):
            nrc = ((valid[:n].sum(1) + CHUNK - 1) // CHUNK).clamp(min=1).repeat_interleave(H, 0)
            out = flex_chunked_attention(
                qk[:n].float().reshape(n * H, L, D), v[:n].float().reshape(n * H, L, D),
                sort_by_buckets(buckets[:n]).reshape(n * H, R, L), valid[:n].repeat_interleave(H, 0), nrc,
                CHUNK, 1, 1, True,
            )
            assert torch.isfinite(out).all()
    assert counters["stats"]["unique_graphs"] == before


def test_environment_switch_turns_the_kernel_off(monkeypatch):
    monkeypatch.setattr(flex_lsh, "_STATE", {})
    assert flex_lsh.flex_available("cpu")
    monkeypatch.setenv("REFORMER_NO_FLEX", "1")
    assert not flex_lsh.flex_available("cpu")


def test_auto_follows_the_measured_table(monkeypatch):
    """``auto`` runs FlexAttention where `AUTO_FLEX_FROM` names a start length for the device and mode (here
    set for CPU training from 2,048 tokens), the chunked path elsewhere and for shorter inputs; ``flex`` opts
    in everywhere, attention dropout never uses it."""
    cfg = dict(d_model=16, n_layers=1, n_heads=2, d_ff=32, embedding_dim=8, chunk_size=16, max_len=4096,
               axial_pos_shape=(64, 64))
    monkeypatch.setitem(flex_lsh.AUTO_FLEX_FROM, ("cpu", "train"), 2048)
    monkeypatch.setitem(flex_lsh.AUTO_FLEX_FROM, ("cpu", "inference"), None)
    short, long = torch.zeros(1, 256, 16), torch.zeros(1, 2048, 16)
    on = flex_lsh.flex_available("cpu")
    auto = LSHSelfAttention(ReformerConfig(**cfg), 0)
    assert auto.attention_impl == "auto"
    assert auto.train()._use_flex(long) == on and not auto._use_flex(short)
    assert not auto.eval()._use_flex(long)
    monkeypatch.setitem(flex_lsh.AUTO_FLEX_FROM, ("cpu", "train"), None)
    assert not auto.train()._use_flex(long)
    assert not LSHSelfAttention(ReformerConfig(**cfg, attention_impl="chunked"), 0).train()._use_flex(long)
    flex = LSHSelfAttention(ReformerConfig(**cfg, attention_impl="flex"), 0)
    assert flex.eval()._use_flex(short) == on
    dropout = LSHSelfAttention(ReformerConfig(**cfg, attention_impl="flex", attention_dropout=0.1), 0)
    assert not dropout.train()._use_flex(long)
    assert not flex_lsh.auto_uses_flex("mps", True, 1 << 16)  # a device type not in the table: never


def test_attention_impl_is_validated_and_left_out_of_the_model_id_at_default():
    assert "attention_impl" not in ReformerConfig().to_dict()
    assert ReformerConfig(attention_impl="flex").to_dict()["attention_impl"] == "flex"
    with pytest.raises(ValueError, match="attention_impl"):
        ReformerConfig(attention_impl="triton")
