"""Low precision and devices (anchors sec. 5, tests 3 and 15): bfloat16 on CPU; float32 / bfloat16 / float16 on
GPU with no NaN or inf anywhere (fully masked rows included), close to float32 on CPU; CPU and GPU hash into the
same buckets; the reversible backward replays CUDA dropout. GPU tests skip cleanly without CUDA.
"""

from __future__ import annotations

import copy

import pytest
import torch

from reformer_retrieval import ReformerConfig, ReformerEncoder
from reformer_retrieval.model.lsh_attention import SequenceInfo


def _batch(make_doc, make_batch):
    """A long document (LSH path), a one-token document, and a row with no real token at all."""
    ids, mask = make_batch([make_doc(400, 0), make_doc(1, 1), make_doc(30, 2)], total=400)
    mask[2] = 0
    return ids, mask


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() * b.float()).sum(dim=-1)


def _check_low_precision(model, ids, mask, reference):
    with torch.no_grad():
        emb, states = model(ids, mask, return_token_states=True)
    assert emb.dtype == torch.float32
    assert torch.isfinite(emb).all() and torch.isfinite(states).all()
    assert torch.equal(emb[2].cpu(), torch.zeros(emb.shape[1]))
    assert bool((_cosine(emb[:2].cpu(), reference[:2]) > 0.99).all())
    return emb


def test_bfloat16_on_cpu(tiny_config, make_doc, make_batch):
    """Anchors test 15 on CPU: bf16 forward and backward, finite, close to float32."""
    torch.manual_seed(0)
    model = ReformerEncoder(tiny_config).eval()
    ids, mask = _batch(make_doc, make_batch)
    with torch.no_grad():
        reference = model(ids, mask)
    low = copy.deepcopy(model).to(torch.bfloat16)
    _check_low_precision(low, ids, mask, reference)
    low.train()
    emb = low(ids, mask)
    emb.sum().backward()
    for name, p in low.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bfloat16_attention_logits_and_mask_constants_are_float32_safe():
    """The masks (-1e9, -1e5) overflow fp16 and are coarse in bf16: logits must be computed in float32."""
    from reformer_retrieval.model.chunked_attention import full_attention

    qk = torch.randn(1, 1, 6, 4, dtype=torch.bfloat16)
    v = torch.randn(1, 1, 6, 4, dtype=torch.bfloat16)
    valid = torch.tensor([[True, False, False, False, False, False]])
    out = full_attention(qk, v, valid)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert torch.equal(out[0, 0, 0], v[0, 0, 0])  # lone token: its own value, exactly


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_forward_in_every_precision(cuda_device, tiny_config, make_doc, make_batch, dtype):
    torch.manual_seed(0)
    model = ReformerEncoder(tiny_config).eval()
    ids, mask = _batch(make_doc, make_batch)
    with torch.no_grad():
        reference = model(ids, mask)
    gpu = copy.deepcopy(model).to(cuda_device, dtype)
    emb = _check_low_precision(gpu, ids.to(cuda_device), mask.to(cuda_device), reference)
    if dtype == torch.float32:
        assert (emb.cpu() - reference).abs().max().item() < 1e-4
    gpu.train()
    out = gpu(ids.to(cuda_device), mask.to(cuda_device))
    out.sum().backward()
    for name, p in gpu.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.gpu
def test_cpu_and_gpu_hash_into_the_same_buckets(cuda_device, tiny_config):
    """Anchors test 3: the same buckets on CPU and GPU (float32 hashing with the same fixed rotations)."""
    torch.manual_seed(0)
    model = ReformerEncoder(tiny_config).eval()
    att = model.attention_layers[0]
    L = 1024
    qk = torch.randn(2, tiny_config.n_heads, L, tiny_config.head_dim, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, L, dtype=torch.bool)
    mask[1, 700:] = False
    cpu_buckets = att.compute_buckets(qk, SequenceInfo.from_mask(mask))
    gpu_att = copy.deepcopy(att).to(cuda_device)
    gpu_buckets = gpu_att.compute_buckets(qk.to(cuda_device), SequenceInfo.from_mask(mask.to(cuda_device)))
    agree = (cpu_buckets == gpu_buckets.cpu()).double().mean().item()
    print({"cpu_gpu_bucket_agreement": agree, "argmaxes": cpu_buckets.numel()})
    # float32 projections summed in a different order may flip a near-tie; anything beyond that is a bug
    assert agree >= 0.999
    assert torch.equal(cpu_buckets[1, :, :, 700:], gpu_buckets.cpu()[1, :, :, 700:])  # padding bucket


@pytest.mark.gpu
def test_reversible_replays_cuda_dropout(cuda_device):
    """Reversible == plain autograd on the GPU with dropout (the CUDA random state is replayed), and the
    backward leaves the caller's CUDA random state alone."""
    cfg = ReformerConfig(
        d_model=32, n_layers=3, n_heads=2, d_ff=64, embedding_dim=16, chunk_size=16, max_len=1024,
        axial_pos_shape=(32, 32), n_hashes=2, dropout=0.1, attention_dropout=0.1,
    )
    torch.manual_seed(0)
    rev = ReformerEncoder(cfg).to(cuda_device).train()
    plain = ReformerEncoder(cfg.replace(reversible=False)).to(cuda_device).train()
    plain.load_state_dict(rev.state_dict())
    ids = torch.randint(4, 260, (2, 200), generator=torch.Generator().manual_seed(1)).to(cuda_device)
    results = []
    for model in (rev, plain):
        torch.manual_seed(7)
        emb = model(ids)
        state = torch.cuda.get_rng_state(cuda_device)
        emb.sum().backward()
        assert torch.equal(torch.cuda.get_rng_state(cuda_device), state)
        results.append((emb.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert (results[0][0] - results[1][0]).abs().max().item() < 1e-5
    for name, g in results[0][1].items():
        ref = results[1][1][name]
        assert (g - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item()), name


@pytest.mark.gpu
def test_embeddings_agree_between_cpu_and_gpu(cuda_device, tiny_config, make_doc, make_batch):
    torch.manual_seed(0)
    model = ReformerEncoder(tiny_config).eval()
    ids, mask = make_batch([make_doc(900, 0), make_doc(333, 1), make_doc(20, 2)])
    with torch.no_grad():
        cpu = model(ids, mask)
        gpu = copy.deepcopy(model).to(cuda_device)(ids.to(cuda_device), mask.to(cuda_device)).cpu()
    assert (cpu - gpu).abs().max().item() < 1e-4


def test_bucket_decisions_stay_float32_under_bf16_autocast_and_casts(tiny_config):
    """Buckets are the same under CPU bf16 autocast as in float32, and a bf16 cast of the model keeps the hash
    rotations float32 and equal to the original ones (a bf16 rotation would flip near-tie buckets)."""
    torch.manual_seed(0)
    model = ReformerEncoder(tiny_config).eval()
    layer = next(a for a in model.attention_layers if a.kind == "lsh")
    qk = torch.randn(2, tiny_config.n_heads, 256, tiny_config.head_dim)
    info = SequenceInfo.from_mask(torch.ones(2, 256, dtype=torch.bool))
    reference = layer.compute_buckets(qk, info)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = layer.compute_buckets(qk, info)
    assert torch.equal(under_autocast, reference)
    original = layer.rotations.clone()
    low = copy.deepcopy(model).to(torch.bfloat16)
    low_layer = next(a for a in low.attention_layers if a.kind == "lsh")
    assert low_layer.rotations.dtype == torch.float32 and torch.equal(low_layer.rotations, original)
    assert low_layer.query_key.weight.dtype == torch.bfloat16  # the rest of the model is cast
    assert torch.equal(low_layer.compute_buckets(qk.to(torch.bfloat16).float(), info),
                       layer.compute_buckets(qk.to(torch.bfloat16).float(), info))
