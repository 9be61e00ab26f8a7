"""The ``reformer-retrieval`` click group; each verb lives in its own module and is registered here."""

from __future__ import annotations

import click

from reformer_retrieval import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reformer-retrieval")
def cli() -> None:
    """Near-duplicate detection and search over long documents with a Reformer encoder.

    \b
    Example:
      reformer-retrieval encode examples/sample.parquet -o emb.parquet
      reformer-retrieval dedup examples/sample.parquet -o dedup_out/
    """


def _register() -> None:
    """Attach every verb module's command to the group (one line per verb group)."""
    # Verb modules are imported here so that `--help` lists them all.
    # (Each issue adds its verbs: encode, index, dedup, search, eval, train.)
    from reformer_retrieval.cli.encode_cmd import encode

    cli.add_command(encode)
    from reformer_retrieval.cli.train_cmd import train

    cli.add_command(train)
    from reformer_retrieval.cli.dedup_cmd import dedup
    from reformer_retrieval.cli.eval_cmd import eval_group
    from reformer_retrieval.cli.index_cmd import index
    from reformer_retrieval.cli.search_cmd import search

    cli.add_command(index)
    cli.add_command(dedup)
    cli.add_command(search)
    cli.add_command(eval_group)
    from reformer_retrieval.cli.report_cmd import report

    cli.add_command(report)
    return None


_register()

if __name__ == "__main__":  # pragma: no cover
    cli()
