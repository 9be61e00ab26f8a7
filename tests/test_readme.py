"""The README's worked example runs on what a fresh clone carries."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from reformer_retrieval.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]


def _worked_example() -> list[list[str]]:
    """The command lines of the README's "Worked example" bash block (comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Worked example", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the Worked example has no bash block"
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [shlex.split(line) for line in lines if line]


def test_worked_example_names_only_files_the_repository_carries():
    commands = _worked_example()
    assert any(c[:2] == ["reformer-retrieval", "train"] for c in commands)
    for command in commands:
        assert command[0] == "reformer-retrieval"
        for arg in command[2:]:
            assert not arg.startswith("../"), f"{shlex.join(command)} reads outside the repository"
            if arg.startswith(("examples/", "configs/")):
                assert (ROOT / arg).exists(), f"{shlex.join(command)}: {arg} is not in the repository"


@pytest.mark.slow
def test_worked_example_train_runs(tmp_path, monkeypatch):
    """The README's train line, as written, trains a model from the bundled sample (about 20 s on a CPU)."""
    (command,) = [c for c in _worked_example() if c[:2] == ["reformer-retrieval", "train"]]
    args = command[1:]
    out = args.index("-o") + 1
    args[out] = str(tmp_path / args[out])
    monkeypatch.chdir(ROOT)
    res = CliRunner().invoke(cli, [*args, "-q"])
    assert res.exit_code == 0, res.output
    assert "complete:" in res.output and (tmp_path / command[command.index("-o") + 1] / "model.safetensors").is_file()
