"""Helpers shared by the benchmarks: peak memory, best-of timing, one subprocess per measurement, tables, JSON.

Nothing here imports torch at module level, so a benchmark's driver process stays small and every
measurement runs in a fresh child process whose peak memory is its own.

The subprocess protocol: the driver runs ``python <script> --child '<json spec>'``; the child calls
`child_main`, which runs a handler on the spec and prints one line ``RESULT_MARKER + json`` on stdout.
`run_in_subprocess` parses that line and turns a crash or a timeout into a row with ``status`` set.

Usage in a benchmark script (run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path``)::

    from _common import child_main, markdown_table, run_in_subprocess, write_json
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RESULT_MARKER",
    "available_memory_mb",
    "best_of",
    "child_main",
    "current_rss_mb",
    "fmt_num",
    "fmt_ratio",
    "markdown_table",
    "peak_rss_mb",
    "reset_peak_rss",
    "run_in_subprocess",
    "write_json",
]

RESULT_MARKER = "@@BENCH_RESULT@@ "


# ---------------------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> float | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or None where unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    Uses ``VmHWM`` (the high-water mark of this process's own address space, reset by `reset_peak_rss`
    and not inherited from the parent across ``exec``); falls back to ``getrusage`` elsewhere.
    """
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def current_rss_mb() -> float:
    """Current resident set size of this process in MiB (``VmRSS``; peak RSS where unavailable)."""
    kb = _status_kb("VmRSS")
    return kb / 1024.0 if kb is not None else peak_rss_mb()


def reset_peak_rss() -> bool:
    """Reset the peak-RSS high-water mark to the current RSS (Linux >= 4.0); returns whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def available_memory_mb() -> float | None:
    """``MemAvailable`` of the machine in MiB (Linux), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------------------------- timing
def best_of(
    fn: Callable[[], None],
    repeats: int = 2,
    budget_s: float = 120.0,
    sync: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Time ``fn``: one warm-up call, then up to ``repeats`` timed calls; return the best.

    A warm-up slower than ``budget_s / 2`` is taken as the measurement itself (no further calls), and
    timed calls stop once the warm-up plus the timed calls have used ``budget_s`` seconds.

    Args:
        fn: The workload (one call = one measured unit).
        repeats: Timed calls after the warm-up (at least 1).
        budget_s: Wall-clock budget for all calls of this measurement.
        sync: Called after each call before the clock stops (e.g. ``torch.cuda.synchronize``).

    Returns:
        ``{"seconds": best, "times": [...], "warmup_s": first, "n_timed": k, "warmup_only": bool,
        "cpu_seconds": process CPU time of the best call}`` (CPU time counts every thread of the process;
        on a shared machine it is a steadier measure of the work done than wall time).
    """

    cpu_times: list[float] = []

    def timed() -> float:
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        if sync is not None:
            sync()
        cpu_times.append(time.process_time() - c0)
        return time.perf_counter() - t0

    warm = timed()
    if warm > budget_s / 2:
        return {
            "seconds": warm, "times": [warm], "warmup_s": warm, "n_timed": 1, "warmup_only": True,
            "cpu_seconds": cpu_times[0],
        }
    times: list[float] = []
    spent = warm
    while len(times) < max(1, repeats):
        t = timed()
        times.append(t)
        spent += t
        if spent + t > budget_s:
            break
    best = min(range(len(times)), key=times.__getitem__)
    return {
        "seconds": times[best], "times": times, "warmup_s": warm, "n_timed": len(times), "warmup_only": False,
        "cpu_seconds": cpu_times[1 + best],
    }


# ---------------------------------------------------------------------------------------------- subprocess
def child_main(handler: Callable[[dict[str, Any]], dict[str, Any]], spec_json: str) -> int:
    """Entry point of a measurement child: run ``handler(spec)`` and print its row after `RESULT_MARKER`.

    An exception becomes a row with ``status="error"`` and the one-line message in ``note``.
    """
    spec = json.loads(spec_json)
    try:
        row = handler(spec)
    except Exception as exc:  # the row reports it; the driver goes on with the next measurement
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        row = {**spec, "status": "error", "note": msg[:300]}
    sys.stdout.write(RESULT_MARKER + json.dumps(row) + "\n")
    sys.stdout.flush()
    return 0


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the process group of a child started with ``start_new_session=True`` and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def run_in_subprocess(
    script: str | Path,
    spec: dict[str, Any],
    timeout_s: float,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one measurement in a fresh ``python <script> --child <spec>`` process and return its row.

    The child runs in its own process group, which is killed on timeout. A child that exits without a
    result line (killed by the OOM killer, a segfault, ...) gives ``status="error"`` with the exit code
    and the last line of its stderr; a timeout gives ``status="timeout"``.
    """
    cmd = [sys.executable, str(script), "--child", json.dumps(spec)]
    env = {**os.environ, **(extra_env or {})}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return {**spec, "status": "timeout", "note": f"exceeded --timeout {timeout_s:.0f} s"}
    except BaseException:  # Ctrl-C or SIGTERM of the driver: the child is in its own session, end it too
        _kill_group(proc)
        raise
    wall = time.perf_counter() - t0
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARKER):
            row = json.loads(line[len(RESULT_MARKER) :])
            row.setdefault("wall_s", round(wall, 2))
            return row
    last = next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()), "")
    note = f"child exited with code {proc.returncode} and no result"
    if proc.returncode and proc.returncode < 0:
        note += f" (signal {-proc.returncode}; killed, e.g. out of memory?)"
    if last:
        note += f": {last[:200]}"
    return {**spec, "status": "error", "note": note}


# ---------------------------------------------------------------------------------------------- output
def fmt_num(value: float | None, digits: int = 0) -> str:
    """Thousands-separated number, or an en dash for missing values."""
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def fmt_ratio(num: float | None, den: float | None, digits: int = 2) -> str:
    """``num / den`` as ``"1.23x"``, or an en dash when either is missing or ``den`` is 0."""
    if num is None or den is None or den == 0:
        return "–"
    return f"{num / den:.{digits}f}x"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub-flavoured markdown table; ``align`` is one letter per column (``l``, ``r``, ``c``)."""
    align = align or "l" + "r" * (len(headers) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = [
        "| " + " | ".join(str(h) for h in headers) + " |",
        "| " + " | ".join(marks[a] for a in align) + " |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (temporary file + rename)."""
    from reformer_retrieval.atomic import atomic_write_text

    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
