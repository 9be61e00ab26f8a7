"""Shared fixtures for the encoder tests: tiny configs and batches that keep every test fast on CPU."""

from __future__ import annotations

import pytest
import torch

from reformer_retrieval import ReformerConfig


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread):
    """Every encoder test runs on one intra-op thread (the root conftest's `one_thread`): the tensors here
    are tiny, and on a shared 2-core machine OpenMP threads spinning against other processes make small ops
    up to 100x slower."""
    yield


@pytest.fixture
def tiny_config() -> ReformerConfig:
    """A two-layer, 32-wide config with 16-token chunks (inputs above 48 tokens take the LSH path)."""
    return ReformerConfig(
        d_model=32,
        n_layers=2,
        n_heads=2,
        d_ff=64,
        embedding_dim=16,
        chunk_size=16,
        max_len=4096,
        axial_pos_shape=(64, 64),
        n_hashes=2,
    )


def random_doc(n: int, seed: int) -> torch.Tensor:
    """``n`` random byte ids (4..259) drawn from a private generator."""
    return torch.randint(4, 260, (n,), generator=torch.Generator().manual_seed(seed))


def pad_batch(
    docs: list[torch.Tensor], total: int | None = None, junk_seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad documents into (input_ids, attention_mask); padding holds id 0, or random junk ids if
    ``junk_seed`` is given (the mask is 0 there either way)."""
    width = total if total is not None else max(len(d) for d in docs)
    if junk_seed is None:
        ids = torch.zeros(len(docs), width, dtype=torch.long)
    else:
        ids = torch.randint(0, 260, (len(docs), width), generator=torch.Generator().manual_seed(junk_seed))
    mask = torch.zeros(len(docs), width, dtype=torch.long)
    for row, doc in enumerate(docs):
        ids[row, : len(doc)] = doc
        mask[row, : len(doc)] = 1
    return ids, mask


@pytest.fixture
def make_doc():
    """Factory ``make_doc(n, seed)``: a document of ``n`` random byte ids."""
    return random_doc


@pytest.fixture
def make_batch():
    """Factory ``make_batch(docs, total=None, junk_seed=None)`` -> right-padded (input_ids, attention_mask)."""
    return pad_batch


@pytest.fixture
def cuda_device() -> torch.device:
    """The first CUDA device; the test is skipped without one."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


def reference_lsh_attention(
    qk: torch.Tensor,
    v: torch.Tensor,
    buckets: torch.Tensor,
    key_valid: torch.Tensor,
    chunk: int,
    before: int = 1,
    after: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force LSH attention rebuilt from the buckets with plain Python loops (use float64 inputs).

    For every document, head and round: sort positions by ``(bucket, position)``, cut the order into chunks,
    and let each real query attend the real keys of its own chunk and of the previous / next chunk, wrapping
    around inside the document's real chunks (``ceil(n_real / chunk)``), each chunk once. The query itself is
    excluded unless nothing else is left (then it returns its own value, with logsumexp ``MASK_SELF``).
    Rounds are combined with weights ``softmax_r(logsumexp_r)``.

    Args:
        qk, v: (B, H, L, d); buckets: (B, H, R, L); key_valid: (B, L) bool.

    Returns:
        ``(out, lse)``: (B, H, L, d) combined outputs (zero at padding queries) and (B, H, R, L) per-round
        logsumexps (NaN at padding queries).
    """
    from reformer_retrieval.model.chunked_attention import MASK_SELF

    B, H, L, d = qk.shape
    R = buckets.shape[2]
    n_chunks = L // chunk
    out = torch.zeros(B, H, L, d, dtype=qk.dtype)
    lse_all = torch.full((B, H, R, L), float("nan"), dtype=qk.dtype)
    for b in range(B):
        valid = [bool(x) for x in key_valid[b].tolist()]
        n_real = sum(valid)
        n_real_chunks = max(1, -(-n_real // chunk))
        for h in range(H):
            round_out = torch.zeros(R, L, d, dtype=qk.dtype)
            round_lse = torch.zeros(R, L, dtype=qk.dtype)
            for r in range(R):
                bucket_of = [int(x) for x in buckets[b, h, r].tolist()]
                order = sorted(range(L), key=lambda p, bo=bucket_of: (bo[p], p))
                chunks = [order[i * chunk : (i + 1) * chunk] for i in range(n_chunks)]
                chunk_of = {p: i for i, members in enumerate(chunks) for p in members}
                for p in range(L):
                    if not valid[p]:
                        continue
                    ci = chunk_of[p]
                    assert ci < n_real_chunks, "a real token was sorted behind the padding"
                    window = {ci}
                    if before:
                        window.add((ci - 1) % n_real_chunks)
                    if after:
                        window.add((ci + 1) % n_real_chunks)
                    keys = [k for cj in sorted(window) for k in chunks[cj] if valid[k] and k != p]
                    if not keys:
                        round_out[r, p] = v[b, h, p]
                        round_lse[r, p] = MASK_SELF
                        continue
                    unit_keys = torch.stack([qk[b, h, k] / qk[b, h, k].norm() for k in keys])
                    logits = unit_keys @ qk[b, h, p]
                    lse = torch.logsumexp(logits, dim=0)
                    round_out[r, p] = torch.exp(logits - lse) @ v[b, h, keys]
                    round_lse[r, p] = lse
            weights = torch.softmax(round_lse, dim=0).unsqueeze(-1)
            combined = (weights * round_out).sum(dim=0)
            for p in range(L):
                if valid[p]:
                    out[b, h, p] = combined[p]
                    lse_all[b, h, :, p] = round_lse[:, p]
    return out, lse_all


@pytest.fixture
def lsh_reference():
    """The brute-force `reference_lsh_attention` function."""
    return reference_lsh_attention
