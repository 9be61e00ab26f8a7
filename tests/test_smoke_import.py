"""The installed package exposes its public API."""

import reformer_retrieval


def test_public_api_names():
    for name in reformer_retrieval.__all__:
        assert hasattr(reformer_retrieval, name), name


def test_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        reformer_retrieval.Nope  # noqa: B018


def test_import_and_cli_help_do_not_load_torch_or_sklearn(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, reformer_retrieval\n"
        "from reformer_retrieval.cli.main import cli\n"
        "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules, "
        "[m for m in ('torch', 'sklearn') if m in sys.modules]\n"
        "assert 'ReformerEncoder' in dir(reformer_retrieval)\n"
    )
    # run outside the checkout, so the installed package is imported (not the source tree beside the tests)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_a_process_started_in_the_checkout_finds_the_mapped_subpackages():
    """A script or a Ray worker started in the checkout imports the source folder before the installed package
    (its folder is first on sys.path); pyproject maps indexes/ and cli/ into the package, so the source folder
    must find them too (Ray's workers failed on reformer_retrieval.indexes from a non-editable install)."""
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    root = Path(__file__).resolve().parents[1]
    if not (root / "reformer_retrieval" / "__init__.py").is_file():
        pytest.skip("no source checkout beside the tests")
    code = (
        "import sys; sys.path.insert(0, '.')\n"
        "import reformer_retrieval, reformer_retrieval.indexes.minhash, reformer_retrieval.cli.main\n"
        "from pathlib import Path\n"
        "assert Path(reformer_retrieval.__file__).resolve().parent == Path('reformer_retrieval').resolve()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
