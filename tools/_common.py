"""Set-up shared by the command-line tools (never imported outside tools/).

Light on purpose: nothing here imports torch or Detectron2 at module level, so a tool can build its
parser and answer ``--help`` before paying ~3 s for them.
"""
import argparse
import logging
import os
import re
import sys


def default_argument_parser(description: str = None) -> argparse.ArgumentParser:
    """The flags of Detectron2's ``default_argument_parser`` (same names, defaults and help), built
    here because importing ``detectron2.engine`` imports torch: 3 s before ``--help`` could answer.
    ``tests/test_tools_cli.py`` checks that the two parsers accept the same flags."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument("--resume", action="store_true",
                        help="Whether to attempt to resume from the checkpoint directory.")
    parser.add_argument("--eval-only", action="store_true", help="perform evaluation only")
    parser.add_argument("--num-gpus", type=int, default=1, help="number of gpus *per machine*")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0,
                        help="the rank of this machine (unique per machine)")
    # Detectron2's default port, derived from the user id so two users' trainings do not collide.
    port = 2 ** 15 + 2 ** 14 + hash(os.getuid() if sys.platform != "win32" else 1) % 2 ** 14
    parser.add_argument("--dist-url", default=f"tcp://127.0.0.1:{port}",
                        help="initialization URL for pytorch distributed backend.")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="Modify config options at the end of the command, using \"path.key value\" pairs.")
    return parser


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")


def run_tool(main, args, name: str) -> int:
    """Run ``main(args)``; an error the user can act on (bad input file, refused output path,
    missing dataset) prints one line ``<name>: <message>`` and exits 2, unless ``args.debug``."""
    try:
        result = main(args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001  (one line for the user; --debug shows the traceback)
        if getattr(args, "debug", False):
            raise
        message = (str(e) or type(e).__name__).splitlines()[0]
        print(f"{name}: error: {message}"
              f"{' (run with --debug for the traceback)' if hasattr(args, 'debug') else ''}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def register_real_datasets() -> None:
    """Register the real datasets that ``converters.builtin`` finds on disk (lazily)."""
    try:
        from converters.builtin import register_builtin_datasets
    except ImportError:  # converters not installed: only the synthetic datasets exist
        return
    register_builtin_datasets()


def setup_tool_logger(name: str = "d2ext") -> logging.Logger:
    from d2ext.core import setup_logger

    setup_logger(name="detectron2")
    return setup_logger(name=name)


_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def split_inputs(inputs, opts=()):
    """``(inputs, opts)`` with the config overrides that ``--input``'s ``nargs="+"`` swallowed moved
    back to ``opts``: the first item that looks like a config key (``INPUT.MIN_SIZE_TEST``) and is
    not an existing path starts the overrides."""
    inputs = list(inputs or ())
    for i, item in enumerate(inputs):
        if _CONFIG_KEY.match(item) and not os.path.exists(item):
            return inputs[:i], inputs[i:] + list(opts or ())
    return inputs, list(opts or ())
