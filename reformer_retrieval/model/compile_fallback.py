"""What the compiled kernels share: a per-process record of the devices where compiling failed, an
environment switch that turns a kernel off, the one-line notice, and dynamo's recompile limit.

`flex_lsh` (FlexAttention) and `compiled_training` (the inductor-compiled training attention) each keep their
own record (a module-level dict, so a test can swap it) and call these with it.
"""

from __future__ import annotations

import logging
import os

import torch

__all__ = ["compile_available", "raise_recompile_limit", "record_compile_failure"]


def compile_available(state: dict[str, object], env_var: str, device: torch.device | str) -> bool:
    """Whether to try a compiled kernel on ``device``: not after ``state`` recorded a failure there, nor with
    ``env_var`` set (to anything but ``0``) in the environment."""
    if os.environ.get(env_var, "") not in ("", "0"):
        return False
    return not state.get(f"failed_{torch.device(device).type}", False)


def record_compile_failure(
    state: dict[str, object], device: torch.device | str, exc: BaseException, log: logging.Logger, message: str
) -> None:
    """Record in ``state`` that compiling failed on ``device``; the first time, log ``message`` (``%s`` for the
    device, then the error's type and the first line of its text, at most 200 characters) on ``log``."""
    dev = torch.device(device).type
    if not state.get(f"failed_{dev}", False):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        log.warning(message, dev, type(exc).__name__, first[:200])
    state[f"failed_{dev}"] = True


def raise_recompile_limit(limit: int) -> None:
    """Let dynamo keep at least ``limit`` graphs per function (past its limit it silently runs the rest
    eagerly); the setting's name differs across torch versions."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))
