#!/usr/bin/env python
"""Speed and quality figures of d2ext, one row group at a time.

    tools/benchmark.py --list
    tools/benchmark.py ROW [ROW ...] [--json FILE] [row options]

Row groups live in ``tools/bench/*.py`` (each defines ``ROWS`` and maybe ``add_arguments`` for
flags of its own). The flags every row shares are declared here, once: ``--budget-min``,
``--data``, ``--test-data``, ``--output``. Every trained row is sized by the one rule in
``tools/bench/common.py`` (``train_within_budget``). Every run prints a table and, with ``--json``,
writes a list of ``{"name", "value", "unit", "peer", "peer_value", "ratio", "notes"}`` objects.
"""
import argparse
import importlib
import logging
import os
import pkgutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import bench  # noqa: E402
from tools.bench.common import Result  # noqa: E402


def _row_modules():
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if info.name != "common":
            yield importlib.import_module(f"tools.bench.{info.name}")


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_table(results):
    from tabulate import tabulate

    rows = [[r.name, _fmt(r.value), r.unit, r.peer or "-", _fmt(r.peer_value), _fmt(r.ratio), r.notes]
            for r in results]
    print(tabulate(rows, headers=["row", "value", "unit", "peer", "peer value", "ratio", "notes"]))


def write_json(results, path):
    from d2ext.core import atomic_write_json

    # NaN (a failed row) is not JSON: written as null.
    atomic_write_json(path, [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.to_json().items()}
                             for r in results], indent=2)


def add_shared_arguments(parser) -> None:
    """The flags every row group shares (declared here only; a row module that declares one of them
    again makes argparse raise at start-up)."""
    parser.add_argument("--budget-min", type=float, default=10.0,
                        help="training budget per trained model, minutes (calibration, building and "
                             "training; evaluation is not counted)")
    parser.add_argument("--data", default=None,
                        help="dataset folder for rows that read one (default: the row's folder under "
                             "$D2EXT_SHARED_DATA)")
    parser.add_argument("--test-data", default=None,
                        help="a second dataset folder to test on (another source); default: the "
                             "held-back split of --data")
    parser.add_argument("--output", default=None,
                        help="folder for the runs (checkpoints, logs, evaluation files); default: a "
                             "new temp folder")


def build_parser():
    """``(parser, {row name: function})``: the shared flags, then each row module's own."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="*", help="row groups to run (see --list)")
    parser.add_argument("--list", action="store_true", help="list the row groups and exit")
    parser.add_argument("--json", help="write the results here as JSON")
    add_shared_arguments(parser)
    registry = {}
    for mod in _row_modules():
        if hasattr(mod, "add_arguments"):
            mod.add_arguments(parser.add_argument_group(mod.__name__.rsplit(".", 1)[-1]))
        for name, fn in mod.ROWS.items():
            if name in registry:
                raise RuntimeError(f"benchmark row {name} is defined twice ({mod.__name__})")
            registry[name] = fn
    return parser, registry


def main(argv=None):
    parser, registry = build_parser()
    args = parser.parse_args(argv)
    if args.list or not args.rows:
        for name in sorted(registry):
            doc = (registry[name].__doc__ or "").strip().splitlines()
            print(f"{name:28s} {doc[0] if doc else ''}")
        return 0
    unknown = [r for r in args.rows if r not in registry]
    if unknown:
        parser.error(f"unknown row(s) {unknown}; known: {sorted(registry)}")
    from tools._common import setup_tool_logger

    setup_tool_logger("d2ext")  # and Detectron2's: evaluation logs reach the run's output
    results, failed = [], []
    for name in args.rows:
        try:
            results.extend(registry[name](args))
        except Exception as e:  # keep the rows already measured; report this one as failed
            logging.getLogger("d2ext.benchmark").exception("row %s failed", name)
            failed.append(name)
            results.append(Result(name, float("nan"), "failed", notes=f"{type(e).__name__}: {e}"[:300]))
    print_table(results)
    if args.json:
        write_json(results, args.json)
        print(f"wrote {args.json}")
    if failed:
        print(f"failed rows: {', '.join(failed)}")
    return 1 if failed else 0


def cli():
    sys.exit(main())


if __name__ == "__main__":
    cli()
