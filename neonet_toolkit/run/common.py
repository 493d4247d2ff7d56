"""Shared bits of the console entry points (kept thin: parse, call the API, report)."""
from __future__ import annotations

import argparse
import logging
import sys

from neonet_toolkit import paths
from neonet_toolkit.dataset.errors import DatasetError
from neonet_toolkit.utilities.checkpoints import UnsafeCheckpointError
from neonet_toolkit.utilities.devices import apply_thread_rule
from neonet_toolkit.utilities.package_checks import monai_generative_warning


def setup_logging(verbose: bool = False) -> None:
    """Logging for a console command; also gives the command's own process NeoNet's folder defaults (the
    process belongs to the command: child processes and nnU-Net then see the same folders)."""
    paths.apply_defaults_to_process()
    apply_thread_rule()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    warning = monai_generative_warning()
    if warning:
        logging.getLogger("neonet_toolkit").warning(warning)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def cli_main(build_parser, fn, argv=None) -> int:
    """Parse ``argv`` strictly, set up logging, run ``fn(args)`` (see :func:`run_cli`)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(fn, args)


def dispatch_main(argv, keys, build_parser, module_for, entry: str, after=None) -> int:
    """Entry point of a two-level command (``neonet_train``/``neonet_evaluate``): the first argument that
    names a registered key selects the module whose options are added before strict parsing; the
    module's ``entry`` function then runs on the parsed arguments; ``after(key, args, result)``, if
    given, reports the result (e.g. prints the main table)."""
    key = next((a for a in argv if a in keys), None)
    if key is None:
        build_parser(None).parse_args(argv)  # prints usage / the error for a bad or missing key
        return 2

    def _run(_):
        args = build_parser(key).parse_args(argv)
        setup_logging(args.verbose)
        result = getattr(module_for(key), entry)(args)
        if after is not None:
            after(key, args, result)

    return run_cli(_run, None)


def run_cli(fn, args) -> int:
    """Call ``fn(args)``; turn user errors into one clear message and exit code 2. ``fn`` may return an
    exit code (e.g. 1 when some cases of a batch failed)."""
    try:
        rc = fn(args)
    except (DatasetError, FileNotFoundError, FileExistsError, ValueError, KeyError, UnsafeCheckpointError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return rc if isinstance(rc, int) else 0
