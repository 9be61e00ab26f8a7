"""Options shared by several verbs, defined once so that every verb spells and checks them the same way."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click

__all__ = ["DEVICE", "DeviceType", "device_option"]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class DeviceType(click.ParamType):
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked when the command line is parsed (whether CUDA is
    there is checked when the model is loaded)."""

    name = "auto|cpu|cuda[:N]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if not _DEVICE_RE.match(text):
            self.fail(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N", param, ctx)
        return text


DEVICE = DeviceType()


def device_option(
    default: str | None = "auto", help: str = "Where to run the model; auto uses CUDA when present."
) -> Callable[[Any], Any]:
    """The ``--device`` option of every verb that runs a model."""
    return click.option("--device", type=DEVICE, default=default, show_default=default is not None, help=help)
