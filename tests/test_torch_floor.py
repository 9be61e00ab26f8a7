"""pyproject's torch floor covers every torch API the package calls that older releases lack."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("reformer_retrieval", "indexes", "cli") for p in (ROOT / d).rglob("*.py")]

# API -> the first torch release that has it (release notes / the PR that added it)
INTRODUCED = {
    "get_autocast_dtype": (2, 4),  # pytorch#124479, the device-generic autocast API
    "is_autocast_enabled(device_type": (2, 4),  # same PR: is_autocast_enabled takes a device type
    "_scaled_dot_product_flash_attention_for_cpu": (2, 2),
    "flex_attention": (2, 5),
    "nn.attention": (2, 3),
}


def _floor() -> tuple[int, int]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(r"torch\b", d))
    match = re.search(r">=\s*(\d+)\.(\d+)", spec)
    assert match, f"torch has no >= floor in pyproject: {spec!r}"
    return int(match.group(1)), int(match.group(2))


def test_torch_floor_covers_the_apis_the_package_uses() -> None:
    if not SOURCES:
        pytest.skip("the package sources are not beside the tests (installed without a checkout)")
    text = "\n".join(p.read_text(encoding="utf-8") for p in SOURCES)
    used = {api: version for api, version in INTRODUCED.items() if api in text}
    assert "get_autocast_dtype" in used  # the scan sees the sources
    floor = _floor()
    too_new = {api: v for api, v in used.items() if v > floor}
    assert not too_new, f"pyproject's torch>={floor[0]}.{floor[1]} is below what these APIs need: {too_new}"


def test_installed_torch_meets_the_floor() -> None:
    installed = tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2])
    assert installed >= _floor()
