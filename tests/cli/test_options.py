"""The shared ``--device`` option: one type for every verb that runs a model."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from reformer_retrieval.cli.main import cli
from reformer_retrieval.cli.options import DeviceType


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_device_option_has_the_one_type():
    with_device = {path: cmd for path, cmd in _commands(cli) if any(p.name == "device" for p in cmd.params)}
    assert {("encode",), ("dedup",), ("search",), ("train",), ("eval", "dedup"), ("eval", "search")} <= set(with_device)
    for path, cmd in with_device.items():
        (param,) = [p for p in cmd.params if p.name == "device"]
        assert isinstance(param.type, DeviceType), path


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:1", "CUDA:0"])
def test_device_type_accepts(value):
    assert DeviceType().convert(value, None, None) == value.lower()


@pytest.mark.parametrize("args", [["eval", "dedup", "x.parquet"], ["eval", "search", "q.parquet", "r.parquet"],
                                  ["encode", "c.parquet", "-o", "e.parquet"], ["search", "idx", "text"]])
def test_a_bad_device_is_a_usage_error_everywhere(args):
    res = CliRunner().invoke(cli, [*args, "--device", "gpu"])
    assert res.exit_code == 2 and "'gpu' is not a device: use auto, cpu, cuda or cuda:N" in res.output
