#!/usr/bin/env python
"""Convert real dataset formats to COCO JSON / Detectron2 records, with a conversion report.

    tools/convert.py widerface --annotations TXT --images DIR --out COCO.json [--report R.json]
    tools/convert.py bccd-csv --csv CSV --images DIR --out COCO.json [--report R.json]
    tools/convert.py voc --annotations DIR --images DIR [--split-file TXT] --out COCO.json
    tools/convert.py coco-keypoints --json FILE --images DIR [--out COCO.json] --register NAME
    tools/convert.py cricket --root DIR --out DICTS.json [--seed S]
    tools/convert.py wbc-seg --root DIR --mode {binary,three_class} --out DIR

Options of every format: ``--report R.json`` (images, objects per class, every skipped or
repaired item with its file and line), ``--strict`` (any skip is an error), ``--register NAME``
(register the result in Detectron2's DatasetCatalog and load it once, as a demo),
``--debug`` (full traceback on errors), ``--progress`` / ``--no-progress`` (tqdm; default: on
when stderr is a terminal). Errors exit with status 1 and one line naming the file and line.

Installed as ``d2ext-convert``. Starts without importing torch or Detectron2 (only
``--register`` imports Detectron2).

Adding a format: a module in ``converters/`` with ``add_subcommand(subparsers)`` that calls
``subparsers.add_parser(...)`` and ``set_defaults(run=fn(args, report), register_fn=
fn(args, name[, report]), fmt="<name>")``; then list the module in ``CONVERTER_MODULES``.
"""
import argparse
import importlib
import inspect
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: converter modules (in ``converters/``) that provide a subcommand, in --help order.
CONVERTER_MODULES = ["widerface", "bccd", "coco_keypoints", "cricket", "wbc_seg"]

logger = logging.getLogger("d2ext.convert")


def _add_common_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("--report", help="write the conversion report (JSON) here")
    g.add_argument("--strict", action="store_true", help="treat every skipped item as an error")
    g.add_argument("--register", metavar="NAME",
                   help="register the result as Detectron2 dataset NAME and load it once")
    g.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show tqdm progress bars (default: when stderr is a terminal)")
    g.add_argument("--no-progress", dest="progress", action="store_false")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="d2ext-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="FORMAT")
    subparsers.required = True
    for name in CONVERTER_MODULES:
        module = importlib.import_module(f"converters.{name}")
        module.add_subcommand(subparsers)
    for sub in set(subparsers.choices.values()):
        _add_common_arguments(sub)
    return parser


def _register(args, report) -> None:
    fn = getattr(args, "register_fn", None)
    if fn is None:
        raise SystemExit(f"error: format {args.command} does not support --register")
    n_params = len(inspect.signature(fn).parameters)
    names = fn(args, args.register, report) if n_params >= 3 else fn(args, args.register)
    if names is None:
        names = [args.register]
    elif isinstance(names, str):
        names = [names]
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name in names:
        records = DatasetCatalog.get(name)
        meta = MetadataCatalog.get(name)
        n_obj = sum(len(r.get("annotations", ())) for r in records)
        print(f"registered {name}: {len(records)} records, {n_obj} objects; metadata: "
              f"{', '.join(sorted(k for k in meta.as_dict() if k != 'name'))}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from converters.common import ConversionError, ConversionReport

    report = ConversionReport(getattr(args, "fmt", args.command), strict=args.strict)
    try:
        result = args.run(args, report)
        if args.report:
            report.write(args.report)
        print(report.summary())
        if isinstance(result, dict):
            print(", ".join(f"{k}: {v}" for k, v in result.items()))
        if args.register:
            _register(args, report)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user; the traceback only with --debug
        if args.debug:
            raise
        if args.report:
            try:
                report.note("error", str(e))
                report.write(args.report)
            except Exception:  # the report folder itself may be the problem
                pass
        msg = str(e) if isinstance(e, ConversionError) else f"{e.__class__.__name__}: {e}"
        print(f"error: {msg.splitlines()[0] if msg else e.__class__.__name__}", file=sys.stderr)
        return 1
    return 0


def cli():
    sys.exit(main())


if __name__ == "__main__":
    cli()
