#!/usr/bin/env python
"""Convert real dataset formats to COCO JSON / Detectron2 records, with a conversion report.

    tools/convert.py widerface --annotations TXT --images DIR --output COCO.json [--report R.json]
    tools/convert.py widerface --annotations TXT --no-images --output COCO.json
    tools/convert.py bccd-csv --csv CSV --images DIR --output COCO.json [--report R.json]
    tools/convert.py voc --annotations DIR --images DIR [--split-file TXT] --output COCO.json
    tools/convert.py coco-keypoints --json FILE --images DIR [--output COCO.json] --register NAME
    tools/convert.py cricket --root DIR --output DICTS.json [--seed S]
    tools/convert.py wbc-seg --root DIR --mode {binary,three_class|3class} --output DIR
    tools/convert.py bccd-wbc1 --root DIR [--split S] [--csv-out CSV] [--out COCO.json]
    tools/convert.py wbc1-csv --csv CSV --images DIR --out COCO.json

``--out`` is an alias of ``--output``. A COCO JSON records its image folder in a top-level
``"d2ext": {"image_root": ...}`` entry (relative to the JSON's folder when the images lie under
it or under its parent, else absolute) and ``images[].file_name`` relative to it; image ids and annotation ids
start at 1. Inputs are never written: an output (or report) that is an input, lies inside an
input folder, holds one, or repeats another output is refused before anything is read. All
outputs of a run (COCO JSON, label folder, report) are written aside and moved into place
together at the end: a failed, killed or half-written run leaves earlier outputs as they were.
A run that keeps no image is an error.

Options of every format: ``--report R.json`` (images, objects per class, every skipped or
repaired item with its file and line), ``--strict`` (any skip is an error), ``--register NAME``
(register the result in Detectron2's DatasetCatalog and load it once, as a demo),
``--debug`` (full traceback on errors), ``--progress`` / ``--no-progress`` (tqdm; default: on
when stderr is a terminal). Errors exit with status 1 and one line naming the file and line.

Installed as ``d2ext-convert``. Starts without importing torch or Detectron2 (only
``--register`` imports Detectron2).

Adding a format: a module in ``converters/`` with ``add_subcommand(subparsers)`` that calls
``subparsers.add_parser(...)`` and ``set_defaults(run=fn(args, report[, batch]), register_fn=
fn(args, name[, report]), fmt="<name>")``; then add its FORMAT word(s) to ``FORMATS`` (only the
chosen format's module is imported). A ``run`` that takes ``batch`` (a
``d2ext.core.OutputBatch``) writes every output into it; its input / output paths are found
by the argument names in ``INPUT_ARGS`` / ``OUTPUT_ARGS``.
"""
import argparse
import gc
import importlib
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: FORMAT -> (module in ``converters/`` whose ``add_subcommand`` defines it, one-line help), in
#: --help order. Only the chosen format's module is imported (a converter module pulls numpy,
#: PIL, pycocotools...; the parser must not pay for all of them).
FORMATS = {
    "widerface": ("widerface", "WIDER Face bbx_gt.txt -> COCO JSON"),
    "bccd-csv": ("bccd", "BCCD-style box CSV -> COCO JSON"),
    "voc": ("bccd", "Pascal VOC XML folder (+ split file) -> COCO JSON"),
    "coco-keypoints": ("coco_keypoints", "check a COCO (keypoints) JSON against its images; "
                                         "optionally write a cleaned copy / register it"),
    "cricket": ("cricket", "cricket-shot class folders -> classification records with a "
                           "group-aware split"),
    "wbc-seg": ("wbc_seg", "white-blood-cell masks -> label PNGs + dataset.json (and optionally "
                           "COCO instances)"),
    "bccd-wbc1": ("bccd_wbc1", "BCCD -> the single-WBC set: course CSV and/or COCO JSON"),
    "wbc1-csv": ("bccd_wbc1", "course CSV filename,xmin,xmax,ymin,ymax -> COCO JSON"),
}
#: converter modules that provide a subcommand.
CONVERTER_MODULES = list(dict.fromkeys(module for module, _ in FORMATS.values()))
#: argument names (``dest``) that name files or folders a conversion reads / writes; every
#: output is checked against every input before anything is read (d2ext.core.check_outputs).
INPUT_ARGS = ("annotations", "images", "split_file", "csv", "json", "root", "masks", "keypoints")
OUTPUT_ARGS = ("out", "report", "instances_out", "csv_out")

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


def _chosen_format(argv) -> "str | None":
    """The FORMAT word of the command line (the first argument that is not an option)."""
    for a in argv:
        if not a.startswith("-"):
            return a if a in FORMATS else None
    return None


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The parser; with ``argv`` only the chosen format's converter module is imported (the
    other formats get a placeholder entry for ``--help`` and error messages)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="d2ext-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="FORMAT")
    subparsers.required = True
    chosen = _chosen_format(argv)
    if chosen is not None:
        module = importlib.import_module(f"converters.{FORMATS[chosen][0]}")
        module.add_subcommand(subparsers)
    for name, (_, help_text) in FORMATS.items():
        if name not in subparsers.choices:
            subparsers.add_parser(name, help=help_text)
    for sub in set(subparsers.choices.values()):
        _add_common_arguments(sub)
    return parser


def _register(args, report) -> None:
    fn = getattr(args, "register_fn", None)
    if fn is None:
        raise SystemExit(f"error: format {args.command} does not support --register")
    n_params = _num_params(fn)
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


def _num_params(fn) -> int:
    """Positional parameters of ``fn`` (a plain function's code object tells; ``inspect`` costs
    ~10 ms of start-up, so it is imported only for other callables)."""
    code = getattr(fn, "__code__", None)
    if code is not None and not hasattr(fn, "__self__"):
        return code.co_argcount
    import inspect

    return len(inspect.signature(fn).parameters)


def _paths(args, names):
    return [getattr(args, n) for n in names if getattr(args, n, None)]


def _run(args, report, batch):
    """Call the format's ``run(args, report[, batch])``; formats that take the batch write every
    output into it, so all of them are committed together."""
    if _num_params(args.run) >= 3:
        return args.run(args, report, batch)
    return args.run(args, report)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:  # a placeholder entry: its module was not loaded
        parser.error(f"format {args.command}: converter module not loaded")
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from converters.common import ConversionError, ConversionReport, OutputBatch
    from d2ext.core import UnsafeOutputError, check_outputs

    report = ConversionReport(getattr(args, "fmt", args.command), strict=args.strict)
    # A conversion allocates a few small containers per object and frees them by reference
    # counting (records stream); the cyclic collector only rescans them: ~20% of a WIDER run.
    gc.disable()
    outputs_checked = False
    try:
        check_outputs(_paths(args, INPUT_ARGS), _paths(args, OUTPUT_ARGS), f"d2ext-convert {args.command}")
        outputs_checked = True
        # Every output of the run (COCO JSON, label folders, the report) is written aside and
        # moved into place only when all are ready: a failure, a kill or an unwritable report
        # leaves the previous outputs as they were.
        with OutputBatch() as batch:
            result = _run(args, report, batch)
            if report.num_images == 0:
                src = report.sources[0] if report.sources else args.command
                reasons = ", ".join(f"{k} {v}" for k, v in report.skip_reasons().items())
                raise ConversionError(src, None, f"no images kept ({len(report.skipped)} skipped"
                                      f"{': ' + reasons if reasons else ''}); nothing written",
                                      fmt=report.fmt)
            if args.report:
                batch.write_json(args.report, report.to_dict(), indent=1)
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
        if args.report and outputs_checked:
            try:  # the report of a failed run says why (it is the only file written then)
                report.note("error", str(e))
                report.write(args.report)
            except Exception:  # the report folder itself may be the problem
                pass
        known = isinstance(e, (ConversionError, UnsafeOutputError))
        # an unexpected exception still names the input being converted
        where = f"converters.{report.fmt}: {report.sources[0]}: " if report.sources else ""
        msg = str(e) if known else f"{where}{e.__class__.__name__}: {e}"
        print(f"error: {msg.splitlines()[0] if msg else e.__class__.__name__}", file=sys.stderr)
        return 1
    return 0


def cli():
    sys.exit(main())


if __name__ == "__main__":
    cli()
