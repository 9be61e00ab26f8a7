"""Reversible residual stack (Gomez et al. 2017; Reformer eq. 9) with its own autograd Function.

``Y1 = X1 + F(X2)`` (attention), ``Y2 = X2 + G(Y1)`` (feed-forward). The forward keeps only the final
``(Y1, Y2)``; the backward walks the layers in reverse, reconstructs ``X2 = Y2 - G(Y1)`` and
``X1 = Y1 - F(X2)``, and re-runs each half with gradients. The recomputation reuses the forward's LSH buckets
and replays dropout by restoring the random state captured before each half (inside ``fork_rng``, so the
caller's random state is untouched). The parameters are inputs of the Function, so they get gradients even
when the stack's input does not require grad. The recomputation runs under the forward's autocast state
(bfloat16 training on GPU), so it reproduces the forward's numbers and speed rather than redoing it in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reformer_retrieval.model.lsh_attention import SequenceInfo

__all__ = ["ReformerLayer", "ReversibleStack"]


class ReformerLayer(nn.Module):
    """One [attention, feed-forward] pair: the two halves of a reversible block."""

    def __init__(self, attention: nn.Module, feed_forward: nn.Module) -> None:
        super().__init__()
        self.attention = attention
        self.feed_forward = feed_forward

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, info: SequenceInfo, buckets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Plain (non-reversible) application; returns ``(y1, y2, buckets)``."""
        f, buckets = self.attention(x2, info, buckets)
        y1 = x1 + f
        y2 = x2 + self.feed_forward(y1)
        return y1, y2, buckets


@dataclass
class _RngState:
    cpu: torch.Tensor
    cuda: torch.Tensor | None
    device: torch.device

    @classmethod
    def capture(cls, device: torch.device) -> _RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, device)

    def replay(self) -> Any:
        """Context manager running its body with this random state, restoring the caller's afterwards."""
        devices = [self.device] if self.device.type == "cuda" else []
        ctx = torch.random.fork_rng(devices=devices)
        state = self

        class _Replay:
            def __enter__(self_inner) -> None:
                ctx.__enter__()
                torch.set_rng_state(state.cpu)
                if state.cuda is not None:
                    torch.cuda.set_rng_state(state.cuda, state.device)

            def __exit__(self_inner, *exc: object) -> None:
                ctx.__exit__(*exc)

        return _Replay()


class _NoReplay:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@dataclass
class _LayerRecord:
    buckets: torch.Tensor | None
    rng_f: _RngState | None
    rng_g: _RngState | None


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    """Whether autocast is on for ``device_type``, and its dtype."""
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class _ReversibleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x1, x2, stack, info, *params):  # type: ignore[override]
        ctx.autocast = (x1.device.type, *_autocast_state(x1.device.type))
        records: list[_LayerRecord] = []
        need_rng = stack.needs_rng_replay()
        with torch.no_grad():
            for layer in stack.layers:
                rng_f = _RngState.capture(x1.device) if need_rng else None
                f, buckets = layer.attention(x2, info)
                y1 = x1 + f
                rng_g = _RngState.capture(x1.device) if need_rng else None
                y2 = x2 + layer.feed_forward(y1)
                records.append(_LayerRecord(buckets, rng_f, rng_g))
                x1, x2 = y1, y2
        ctx.stack = stack
        ctx.info = info
        ctx.records = records
        ctx.params = params
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx, dy1, dy2):  # type: ignore[override]
        y1, y2 = ctx.saved_tensors
        stack, info, records = ctx.stack, ctx.info, ctx.records
        device_type, autocast_on, autocast_dtype = ctx.autocast
        position = {id(p): i for i, p in enumerate(ctx.params)}
        grads: list[torch.Tensor | None] = [None] * len(ctx.params)

        def accumulate(params: list[nn.Parameter], values: tuple[torch.Tensor | None, ...]) -> None:
            for p, g in zip(params, values):
                if g is None:
                    continue
                i = position[id(p)]
                grads[i] = g if grads[i] is None else grads[i] + g

        for layer, rec in zip(reversed(stack.layers), reversed(records)):
            g_params = [p for p in layer.feed_forward.parameters() if p.requires_grad]
            f_params = [p for p in layer.attention.parameters() if p.requires_grad]
            with torch.enable_grad(), torch.autocast(device_type, autocast_dtype, enabled=autocast_on):
                y1_ = y1.detach().requires_grad_(True)
                with rec.rng_g.replay() if rec.rng_g is not None else _NoReplay():
                    g_out = layer.feed_forward(y1_)
                res = torch.autograd.grad(g_out, [y1_, *g_params], dy2, allow_unused=True)
            dy1 = dy1 + res[0]
            accumulate(g_params, res[1:])
            with torch.no_grad():
                x2 = y2 - g_out
            del g_out
            with torch.enable_grad(), torch.autocast(device_type, autocast_dtype, enabled=autocast_on):
                x2_ = x2.detach().requires_grad_(True)
                with rec.rng_f.replay() if rec.rng_f is not None else _NoReplay():
                    f_out, _ = layer.attention(x2_, info, rec.buckets)
                res = torch.autograd.grad(f_out, [x2_, *f_params], dy1, allow_unused=True)
            accumulate(f_params, res[1:])
            with torch.no_grad():
                x1 = y1 - f_out
            dy2 = dy2 + res[0]
            del f_out
            y1, y2 = x1, x2
        return (dy1, dy2, None, None, *grads)


class ReversibleStack(nn.Module):
    """A stack of `ReformerLayer` run reversibly (``reversible=True``) or with plain autograd.

    Both modes use the same parameters (and names), so a state dict loads into either.
    """

    def __init__(self, layers: list[ReformerLayer], reversible: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.reversible = reversible

    def needs_rng_replay(self) -> bool:
        """Whether any random op (dropout) runs, so its random state must be replayed in the backward."""
        if not self.training:
            return False
        for layer in self.layers:
            att = layer.attention
            if att.dropout > 0 or att.attention_dropout > 0 or layer.feed_forward.dropout > 0:
                return True
        return False

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, info: SequenceInfo) -> tuple[torch.Tensor, torch.Tensor]:
        """Run every layer; returns the two output streams."""
        params = [p for p in self.parameters() if p.requires_grad]
        needs_grad = torch.is_grad_enabled() and (x1.requires_grad or x2.requires_grad or bool(params))
        if self.reversible and needs_grad:
            return _ReversibleFunction.apply(x1, x2, self, info, *params)
        for layer in self.layers:
            x1, x2, _ = layer(x1, x2, info)
        return x1, x2
