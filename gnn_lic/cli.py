"""The error convention of every gnn_lic entry point.

``python -m gnn_lic``, ``python -m gnn_lic.evaluation``, ``python -m gnn_lic.bench``,
``experiments/run.py`` and ``experiments/ship_weights.py`` report an expected failure (a
usage error, a missing or unreadable input) as **one line** on stderr and exit with status
:data:`EXIT_ERROR` (2); ``--help`` exits with 0. The line is ``<prog>: error: <message>``,
its message folded onto one line (``tests/test_entry_points.py`` checks every entry point). Output
cut short by its reader (``... | head``) ends the run quietly with :data:`EXIT_BROKEN_PIPE` (:func:`broken_pipe`).

This module imports nothing from gnn_lic, so every layer may use it.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import sys
from typing import Any, Callable, List, Optional, Sequence, Tuple, Type

__all__ = [
    "EXIT_OK",
    "EXIT_INTERNAL",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_BROKEN_PIPE",
    "UsageError",
    "ArgumentParser",
    "error_line",
    "print_error",
    "run_main",
    "broken_pipe",
    "expand_inputs",
    "output_paths",
    "file_pairs",
    "each_file",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
#: the reader of the standard output went away (``... | head``): 128 + SIGPIPE, as a shell reports it
EXIT_BROKEN_PIPE = 141


class UsageError(Exception):
    """A bad argument or combination of arguments (exit status 2)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors raise :class:`UsageError` instead of printing the usage."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def error_line(message: Any, prog: Optional[str] = None) -> str:
    """``'<prog>: error: <message>'`` with the message's whitespace folded onto one line."""
    text = " ".join(str(message).split())
    return f"{prog}: error: {text}" if prog else f"error: {text}"


def print_error(message: Any, prog: Optional[str] = None) -> None:
    print(error_line(message, prog), file=sys.stderr, flush=True)


def run_main(body: Callable[[], Optional[int]], prog: Optional[str] = None,
             expected: Tuple[Type[BaseException], ...] = ()) -> int:
    """Run ``body()`` and return its exit status.

    :class:`UsageError` and the ``expected`` exceptions become one error line and status 2;
    ``SystemExit`` (``--help``) returns its code; a reader that went away, :func:`broken_pipe`'s status.
    Anything else propagates (a bug).
    """
    try:
        return int(body() or EXIT_OK)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except BrokenPipeError:  # before ``expected``, which may hold OSError
        return broken_pipe()
    except (UsageError, *expected) as exc:
        print_error(exc, prog)
        return EXIT_ERROR


def broken_pipe() -> int:
    """:data:`EXIT_BROKEN_PIPE`, after pointing the standard output at ``os.devnull`` so that what Python would
    still flush on exit goes nowhere instead of failing again; nothing is reported."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # not a real file (a test's capture)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def expand_inputs(inputs: Sequence[str]) -> List[str]:
    """``inputs`` with each pattern that names no file (``photos/*.jpg``: ``*``, ``?`` or ``[``) replaced by the
    files it matches, in sorted order, as a POSIX shell would have done (Windows' does not); a pattern that
    matches nothing stays, and reading it reports the missing file."""
    out: List[str] = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if not os.path.exists(item) and any(c in item for c in "*?[") else []
        out.extend(matches or [item])
    return out


def output_paths(inputs: Sequence[str], output: str, suffix: str) -> List[str]:
    """Where each of ``inputs`` is written: ``output`` itself for one input, unless ``output`` is an
    existing folder; there, each input's file name with its extension replaced by ``suffix``.
    Several inputs need a folder, and two inputs that would share an output are refused
    (:class:`UsageError`), before anything is read."""
    if not os.path.isdir(output):
        if len(inputs) > 1:
            raise UsageError(f"{len(inputs)} inputs need an existing output folder, and '{output}' is not one")
        return [output]
    paths, seen = [], {}
    for source in inputs:
        name = os.path.splitext(os.path.basename(os.path.normpath(source)))[0]
        target = os.path.join(output, name + suffix)
        if target in seen:
            raise UsageError(f"'{seen[target]}' and '{source}' would both be written to '{target}'")
        seen[target] = source
        paths.append(target)
    return paths


def file_pairs(inputs: Sequence[str], output: str, suffix: str) -> List[Tuple[str, str]]:
    """``(input, output)`` for each input once patterns are expanded (:func:`expand_inputs`, :func:`output_paths`):
    the jobs of a command that writes a file per input."""
    inputs = expand_inputs(inputs)
    return list(zip(inputs, output_paths(inputs, output, suffix)))


def each_file(jobs: Sequence[Tuple[str, ...]], work: Callable[..., None],
              expected: Tuple[Type[BaseException], ...], prog: Optional[str] = None) -> int:
    """``work(*job)`` for each job, whose first item is the input file it reads (its output, if any, next:
    :func:`file_pairs`); the exit status.

    One job: its errors propagate. Several: an ``expected`` error of one file is printed as one line
    naming the file and the others go on; the status is then :data:`EXIT_ERROR` after a last line
    counting the failures. Anything else (a :class:`UsageError`, a bug, Ctrl-C) stops the whole job.
    """
    if len(jobs) == 1:
        work(*jobs[0])
        return EXIT_OK
    failed = 0
    for job in jobs:
        try:
            work(*job)
        except expected as exc:
            print_error(f"{job[0]}: {exc}", prog)
            failed += 1
    if failed:
        print_error(f"{failed} of {len(jobs)} files failed", prog)
        return EXIT_ERROR
    return EXIT_OK
