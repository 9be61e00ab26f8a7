"""How every verb reports an expected failure: one ``Error: ...`` line (the message's first line), no traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

__all__ = ["one_line", "reported_as_click_errors"]


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (stripped), or its type name when the message is empty.

    An exception with a ``cli_message(has_flag)`` method (e.g. `reformer_retrieval.corpus.DuplicateIdError`)
    gives its command-line wording instead, told whether the running command has an ``--on-duplicate`` flag.
    """
    cli_message = getattr(exc, "cli_message", None)
    if callable(cli_message):
        ctx = click.get_current_context(silent=True)
        has_flag = ctx is not None and any(p.name == "on_duplicate" for p in ctx.command.params)
        text = str(cli_message(has_flag)).strip()
    else:
        text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def reported_as_click_errors(*errors: type[BaseException]) -> Iterator[None]:
    """Turn exceptions of the types ``errors`` raised in the block into a one-line `click.ClickException`.

    Click's own exceptions (usage errors) pass through unchanged; the original traceback is dropped.

    Example:
        >>> with reported_as_click_errors(ValueError, OSError):  # doctest: +SKIP
        ...     run_the_verb()
    """
    try:
        yield
    except click.ClickException:
        raise
    except errors as exc:
        raise click.ClickException(one_line(exc)) from None
