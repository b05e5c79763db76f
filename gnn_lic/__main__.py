"""Command line: ``python -m gnn_lic {compress,decompress,info,convert-official} ...`` (also ``gnn-lic``).

Examples::

    python -m gnn_lic compress kodim01.png kodim01.glic --model glic --size small
    python -m gnn_lic compress kodim01.png kodim01.glic --checkpoint runs/glic.pth.tar [--scheme w8]
    python -m gnn_lic decompress kodim01.glic kodim01_hat.png [--checkpoint CKPT]
    python -m gnn_lic compress photos/*.jpg out/ -m glic -s small   # several files into a folder, one process
    python -m gnn_lic info kodim01.glic [--json]
    python -m gnn_lic convert-official glic glic_0.013.pth glic_0013.pt   # the authors' weights

Exit codes
----------
``0``: success.
``2``
    every expected failure: command-line usage errors, missing or unreadable input
    (including files that are not images), corrupt/truncated/foreign streams, model
    mismatch, an existing output without ``--force``, no shipped weights, unusable
    checkpoints, unknown model name or size.  One line ``gnn_lic: error: ...`` on stderr, no
    traceback, and no output file is left behind (outputs are written atomically). With several
    inputs, each file that fails gets its own line and the others go on; a last line counts them.
``1``
    an unexpected internal error (a bug): one line on stderr; the traceback is shown
    with ``--debug`` or ``GNN_LIC_DEBUG=1``.
``130``: interrupted (Ctrl-C).
``141``: the reader of the output went away (``gnn_lic info *.glic | head``), quietly.

Extending
---------
Subcommands live in :data:`COMMANDS` (name -> :class:`Command`).  Add one with
:func:`register_command` from a plugin module named in the environment variable
``GNN_LIC_PLUGINS`` (comma-separated module names, imported before the command line is
parsed; plugins may also register extra models).  Such modules should ``import gnn_lic.__main__``
(which is the running module even under ``-m``). The error convention (one line, exit
status 2) is :mod:`gnn_lic.cli`'s, shared by every entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
import warnings
from typing import Callable, Dict, NamedTuple, Optional, Sequence

from gnn_lic.cli import (
    EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, ArgumentParser, UsageError, broken_pipe, each_file,
    expand_inputs, file_pairs, print_error,
)
from gnn_lic.errors import CodecError  # no imports of its own

PROG = "gnn_lic"
PLUGINS_ENV = "GNN_LIC_PLUGINS"
DEBUG_ENV = "GNN_LIC_DEBUG"
DEFAULT_SIZE = "paper"


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: Dict[str, Command] = {}


def register_command(
    name: str,
    help: str,  # noqa: A002 - mirrors argparse
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add (or replace) subcommand ``name``; ``run(args)`` returns the exit code."""
    COMMANDS[name] = Command(help, add_arguments, run)


# ------------------------------------------------------------------------------ helpers


def _device(name: str):
    import torch  # noqa: PLC0415

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but CUDA is not available")
    return device


def _quality_of(data: bytes) -> float:
    from gnn_lic.codec.container import parse_stream  # noqa: PLC0415

    return parse_stream(data).quality


def _label(net) -> str:
    """``"name (size)"`` of a model, for messages."""
    return f"{getattr(net, 'model_name', 'the model')} ({getattr(net, 'model_size', '?')})"


def _check_quality(args: argparse.Namespace) -> None:
    if args.checkpoint and args.quality is not None:
        raise UsageError("--quality selects shipped weights; a stream records its own quality")


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", metavar="CKPT", help="checkpoint written by save_checkpoint (training)")
    p.add_argument("--quality", "-q", type=float, metavar="Q",
                   help="quality (1 = lowest rate): the rate of a variable-rate model (any number between its "
                        "levels), or which shipped weights to use when several are shipped")
    p.add_argument("--device", default="cpu", help="torch device for the model (default: cpu)")
    p.add_argument("--max-memory", metavar="SIZE", default=None,
                   help="memory the job may use, e.g. 8G or 512M (default: the memory available now); a larger "
                        "need is refused; with room freed memory is kept for reuse (faster), with less blocks "
                        "under 64-256 MiB (else THP_MEM_ALLOC_ENABLE=1 helps large images); the budget changes no bit")
    p.add_argument("--force", "-f", action="store_true", help="overwrite the output file if it exists")


# ----------------------------------------------------------------------------- compress


def _add_compress(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="+", help="images to compress (PNG, JPEG, ...; converted to 8-bit RGB)")
    p.add_argument("output", help="compressed file to write, or a folder (needed for several inputs) where "
                   "each input's name gets .glic")
    p.add_argument("--model", "-m", help="model name (required without --checkpoint)")
    p.add_argument("--size", "-s", help=f"model size (default: {DEFAULT_SIZE}, or the checkpoint's)")
    p.add_argument("--scheme", choices=("fx16", "w8"), help="fixed-point entropy scheme (recorded in the file; "
                   "default: the model's, w8 for GLIC and GABIC)")
    _add_model_arguments(p)


def _whole_job(load: Callable[[], object]):
    """``load()``, whose expected errors (a checkpoint that cannot be used) stop every file of the job."""
    try:
        return load()
    except CodecError as exc:
        raise UsageError(str(exc)) from exc


def _compress_model(args: argparse.Namespace):
    from gnn_lic.models.checkpoint import load_checkpoint  # noqa: PLC0415

    if args.checkpoint:
        net, _ = load_checkpoint(args.checkpoint)
        if args.model and args.model != net.model_name:
            raise UsageError(f"--model {args.model} does not match the checkpoint's model '{net.model_name}'")
        if args.size and args.size != net.model_size:
            raise UsageError(f"--size {args.size} does not match the checkpoint's size '{net.model_size}'")
        if args.quality is not None and getattr(net, "qualities", 1) < 2:
            raise UsageError("--quality: the checkpoint's model serves one rate (it is not variable-rate)")
    else:
        from gnn_lic.codec.shipped import pretrained_model  # noqa: PLC0415

        net = pretrained_model(args.model, args.size or DEFAULT_SIZE, args.quality)
    return net.to(_device(args.device))


def _run_compress(args: argparse.Namespace) -> int:
    if not args.checkpoint and not args.model:
        raise UsageError("pass --model NAME (and --size) for shipped weights, or --checkpoint CKPT")
    models = []  # the model, built once the first image has been read

    def one(source: str, target: str) -> None:
        from gnn_lic.codec import read_image  # noqa: PLC0415 - the models' imports only once the image is read
        from gnn_lic.codec.image_io import check_output_free  # noqa: PLC0415

        image = read_image(source)
        check_output_free(target, args.force)
        from gnn_lic.codec import encode_image, write_bytes  # noqa: PLC0415
        from gnn_lic.codec.budget import job_plan, time_encode  # noqa: PLC0415
        from gnn_lic.models.entropy import SCHEME_ARITHMETICS, entropy_arithmetic  # noqa: PLC0415

        if not models:
            models.append(_whole_job(lambda: _compress_model(args)))
        net = models[0]
        quality = args.quality if getattr(net, "qualities", 1) > 1 else None
        h, w = image.shape[:2]
        with job_plan(net, h, w, args.max_memory, _label(net), time_encode(net, quality)):
            start = time.perf_counter()
            scheme = SCHEME_ARITHMETICS.get(args.scheme)  # None: the model's own
            with entropy_arithmetic(net, scheme) if scheme else contextlib.nullcontext():  # no-op without one
                data = encode_image(net, image, quality=quality)
            seconds = time.perf_counter() - start
        write_bytes(target, data, force=args.force)
        nbytes = os.path.getsize(target)
        bpp = nbytes * 8 / (h * w)
        rate = "" if quality is None and getattr(net, "qualities", 1) < 2 else f", quality {_quality_of(data):g}"
        print(f"{target}: {bpp:.4f} bpp, {nbytes} bytes, {w}x{h} pixels{rate}, encode {seconds:.3f} s")

    return each_file(file_pairs(args.input, args.output, ".glic"), one, (CodecError,), PROG)


# --------------------------------------------------------------------------- decompress


def _add_decompress(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="+", help="compressed files")
    p.add_argument("output", help="PNG file to write, or a folder (needed for several inputs) where each "
                   "input's name gets .png")
    _add_model_arguments(p)


def _run_decompress(args: argparse.Namespace) -> int:
    from gnn_lic.codec import inspect_stream  # noqa: PLC0415 - no PyTorch: a bad file is refused at once
    from gnn_lic.codec.image_io import check_output_free, read_bytes  # noqa: PLC0415

    _check_quality(args)
    models: dict = {}  # the models built so far, reused by the next files

    def one(source: str, target: str) -> None:
        data = read_bytes(source)
        header = inspect_stream(data)
        check_output_free(target, args.force)
        from gnn_lic.codec import decode_image, write_image  # noqa: PLC0415
        from gnn_lic.codec.budget import job_plan, time_decode  # noqa: PLC0415
        from gnn_lic.codec.shipped import pretrained_for_stream  # noqa: PLC0415
        from gnn_lic.models.checkpoint import load_checkpoint  # noqa: PLC0415

        if args.checkpoint:
            if not models:
                models[None] = _whole_job(lambda: load_checkpoint(args.checkpoint)[0])
            net = models[None]
        else:
            net = pretrained_for_stream(data, args.quality, models)
        net.to(_device(args.device))
        with job_plan(net, header["height"], header["width"], args.max_memory, _label(net), time_decode(net)):
            start = time.perf_counter()
            image = decode_image(net, data)
            seconds = time.perf_counter() - start
        write_image(target, image, force=args.force)
        h, w = image.shape[:2]
        print(f"{target}: {w}x{h} pixels, decode {seconds:.3f} s")

    return each_file(file_pairs(args.input, args.output, ".png"), one, (CodecError,), PROG)


# --------------------------------------------------------------------------------- info


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="+", help="compressed files (with several, each one's fields under its name)")
    p.add_argument("--json", action="store_true", help="print the fields as JSON (a list of them, each with its "
                   "file, for several files)")


def _run_info(args: argparse.Namespace) -> int:
    from gnn_lic.codec import inspect_stream  # noqa: PLC0415
    from gnn_lic.codec.image_io import read_bytes  # noqa: PLC0415

    inputs = expand_inputs(args.input)
    several, found = len(inputs) > 1, []

    def one(source: str) -> None:
        info = inspect_stream(read_bytes(source))
        info["bpp"] = round(info["total_bytes"] * 8 / (info["height"] * info["width"]), 6)
        found.append({"file": source, **info} if several else info)
        if args.json:  # printed once all are read: one object, or a list of them
            return
        if several:
            gap = "\n" if len(found) > 1 else ""
            print(f"{gap}==> {source} <==")
        for key, value in info.items():
            if isinstance(value, (list, dict)):
                value = json.dumps(value, separators=(",", ":"))
            print(f"{key}: {value}")

    status = each_file([(p,) for p in inputs], one, (CodecError,), PROG)
    if args.json and found:
        print(json.dumps(found if several else found[0], indent=2))
    return status


# ---------------------------------------------------------------------- convert-official


def _add_convert_official(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="model name: glic or gabic")
    p.add_argument("input", help="the authors' checkpoint (a state dict, {'state_dict': ...} or {'model_state_dict': ...})")
    p.add_argument("output", help="gnn_lic checkpoint to write (for compress/decompress --checkpoint)")
    p.add_argument("--model-kwargs", metavar="JSON", default="{}",
                   help="model widths of an authors' model built with other sizes than the released ones")
    p.add_argument("--force", "-f", action="store_true", help="overwrite the output file if it exists")


def _run_convert_official(args: argparse.Namespace) -> int:
    from gnn_lic.codec.image_io import check_output_free  # noqa: PLC0415
    from gnn_lic.models.checkpoint import save_checkpoint  # noqa: PLC0415
    from gnn_lic.models.official import OFFICIAL_MODELS, load_official  # noqa: PLC0415

    if args.name not in OFFICIAL_MODELS:
        raise UsageError(f"no authors' checkpoint layout for '{args.name}'; choose one of: {', '.join(OFFICIAL_MODELS)}")
    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--model-kwargs is not valid JSON ({exc.msg})") from None
    if not isinstance(kwargs, dict):
        raise UsageError("--model-kwargs must be a JSON object")
    check_output_free(args.output, args.force)
    net = load_official(args.name, args.input, **kwargs)
    save_checkpoint(args.output, net, converted_from=os.path.basename(args.input))
    params = sum(p.numel() for p in net.parameters())
    print(f"{args.output}: {args.name} (compat='official'), {params:,} parameters")
    return EXIT_OK


register_command("compress", "compress images to .glic files", _add_compress, _run_compress)
register_command("decompress", "decompress .glic files to PNG images", _add_decompress, _run_decompress)
register_command("info", "print the headers of .glic files (no model needed)", _add_info, _run_info)
register_command("convert-official", "convert the GLIC/GABIC authors' checkpoint to a gnn_lic checkpoint",
                 _add_convert_official, _run_convert_official)


# --------------------------------------------------------------------------------- main


def _load_plugins() -> None:
    for name in filter(None, (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - report any plugin failure in one line
            raise UsageError(f"cannot import plugin module '{name}' (from {PLUGINS_ENV}): {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Learned image compression with graph neural networks (GLIC, GABIC).",
        epilog="exit codes: 0 ok, 2 expected error (bad input, corrupt file, mismatch, ...), 1 internal error",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit code (never raises for expected errors)."""
    if __name__ == "__main__":  # let plugins `import gnn_lic.__main__` and get this module
        sys.modules.setdefault("gnn_lic.__main__", sys.modules[__name__])
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    with warnings.catch_warnings():
        # compressai triggers this deprecation warning on import; it is noise for users
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        try:
            _load_plugins()
            parser = build_parser()
        except UsageError as exc:
            print_error(exc, PROG)
            return EXIT_ERROR
        try:
            args = parser.parse_args(list(argv) if argv is not None else None)
        except SystemExit as exc:  # argparse: --help
            return exc.code if isinstance(exc.code, int) else EXIT_ERROR
        except UsageError as exc:
            print_error(exc, PROG)
            return EXIT_ERROR
        debug = debug or args.debug
        if args.command is None:
            print_error("choose a command: " + ", ".join(COMMANDS) + f" (see {PROG} --help)", PROG)
            return EXIT_ERROR
        try:
            return int(args._run(args) or EXIT_OK)
        except (CodecError, UsageError) as exc:
            print_error(exc, PROG)
            return EXIT_ERROR
        except KeyboardInterrupt:
            print_error("interrupted", PROG)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            return broken_pipe()
        except Exception as exc:  # noqa: BLE001 - a bug: one line unless --debug
            if debug:
                raise
            print_error(f"internal error: {type(exc).__name__}: {exc} (run with --debug for a traceback)", PROG)
            return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
