"""Converter speed and memory.

``widerface_convert``: the real WIDER Face val annotation file -> Detectron2 dicts -> COCO JSON,
with placeholder JPEGs (1024 wide, tall enough for every box) standing in for the images so the
sizes come from real image headers. Reports the median wall time, the peak RSS of a fresh
process doing it, the same work by Datumaro (``wider_face`` import -> ``coco_instances`` export,
run with ``--datumaro-python``, a separate venv; the row says when it is not available) and
whether Datumaro's attributes agree with the file. Then a synthetic 100k-image WIDER file is
converted in a fresh process (fixed image size) and its peak RSS is compared with a 10k-image
file: streaming means the two stay close.

Every measurement runs in its own subprocess so peak RSS belongs to that work alone.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

from d2ext.core import atomic_open
from tools.bench.common import Result

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(tempfile.gettempdir(), "d2ext_bench_converters")
DEFAULT_DM_PYTHON = os.path.join(tempfile.gettempdir(), "dm_venv", "bin", "python")


def add_arguments(parser):
    from converters.common import default_data_root

    for args, kwargs in [
        (("--wider-annotations",), dict(default=str(default_data_root() / "widerface" / "wider_face_split"
                                                    / "wider_face_val_bbx_gt.txt"),
                                        help="WIDER annotation file for widerface_convert")),
        (("--wider-stream-images",), dict(type=int, default=100_000,
                                          help="images in the synthetic streaming WIDER file")),
        (("--datumaro-python",), dict(default=DEFAULT_DM_PYTHON,
                                      help="python of a separate venv with datumaro installed")),
    ]:
        try:
            parser.add_argument(*args, **kwargs)
        except argparse.ArgumentError:
            pass


# --------------------------------------------------------------------------------------------
# inputs (cached in $TMPDIR/d2ext_bench_converters)
# --------------------------------------------------------------------------------------------
def _placeholder_images(annotation_file) -> str:
    """JPEG placeholders for every image of a WIDER file: 1024 wide (as WIDER), heights
    covering the boxes (at least 683, the common 1024x683 WIDER size)."""
    from PIL import Image

    from converters.widerface import iter_widerface

    root = os.path.join(CACHE, "wider_images_" + os.path.basename(annotation_file).split(".")[0])
    stamp = os.path.join(root, ".done")
    if os.path.exists(stamp):
        return root
    for rec in iter_widerface(annotation_file, None, read_sizes=False):
        y2 = max([a["bbox"][1] + a["bbox"][3] for a in rec["annotations"]] + [683])
        path = os.path.join(root, rec["file_name"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.new("L", (1024, int(y2) + 1), 128).save(path, quality=30)
    open(stamp, "w").close()
    return root


def _synthetic_wider(num_images: int) -> str:
    path = os.path.join(CACHE, f"wider_synthetic_{num_images}.txt")
    if os.path.exists(path):
        return path
    os.makedirs(CACHE, exist_ok=True)
    rng = random.Random(0)
    with atomic_open(path, "w") as f:
        for i in range(num_images):
            n = rng.randint(0, 20)
            f.write(f"{i % 61}--Event/{i % 61}_Event_img_{i}.jpg\n{max(n, 1)}\n")
            if n == 0:
                f.write("0 0 0 0 0 0 0 0 0 0 \n")
            for _ in range(n):
                x, y = rng.randint(0, 900), rng.randint(0, 600)
                w, h = rng.randint(4, 100), rng.randint(4, 100)
                f.write(f"{x} {y} {w} {h} {rng.randint(0, 2)} {rng.randint(0, 1)} {rng.randint(0, 1)} "
                        f"{rng.randint(0, 1)} {rng.randint(0, 2)} {rng.randint(0, 1)} \n")
    return path


# --------------------------------------------------------------------------------------------
# measured work, each in a fresh process
# --------------------------------------------------------------------------------------------
# Peak RSS is read from /proc/self/status VmHWM: unlike ru_maxrss it does not carry over the
# parent's peak across fork + exec.
_HWM = r"""
def hwm_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

_CHILD = _HWM.replace("{", "{{").replace("}", "}}") + r"""
import json, sys, time
sys.path.insert(0, {repo!r})
from converters.widerface import convert_widerface
base = hwm_mb()
times = []
for _ in range({repeat}):
    t0 = time.perf_counter()
    rep = convert_widerface({ann!r}, {images!r}, {out!r}, image_size={size!r})
    times.append(time.perf_counter() - t0)
print(json.dumps({{"times": times, "peak_rss_mb": hwm_mb(),
                  "base_rss_mb": base, "images": rep.num_images, "faces": rep.num_annotations,
                  "skipped": len(rep.skipped)}}))
"""

_DM_CHILD = _HWM + r"""
import json, os, sys, time
import datumaro as dm
root, out = sys.argv[1], sys.argv[2]
base = hwm_mb()
times = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    ds = dm.Dataset.import_from(root, "wider_face")
    ds.export(out, "coco_instances", save_media=False)
    times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "peak_rss_mb": hwm_mb(),
                  "base_rss_mb": base, "version": dm.__version__}))
"""


def _run_child(python, code, *argv, timeout=900):
    proc = subprocess.run([python, "-c", code, *argv], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _datumaro_root(annotation_file, images, workdir):
    """The folder layout Datumaro's ``wider_face`` importer expects, made of symlinks."""
    root = os.path.join(workdir, "dm_root")
    os.makedirs(os.path.join(root, "wider_face_split"), exist_ok=True)
    os.makedirs(os.path.join(root, "WIDER_val"), exist_ok=True)
    os.symlink(os.path.abspath(annotation_file), os.path.join(root, "wider_face_split",
                                                              os.path.basename(annotation_file)))
    os.symlink(images, os.path.join(root, "WIDER_val", "images"))
    return root


def _check_datumaro_attributes(out_dir, annotation_file):
    """Compare Datumaro's exported per-face attributes with the official values of the file."""
    from converters.widerface import ATTRIBUTE_NAMES

    files = [os.path.join(dp, f) for dp, _, fs in os.walk(out_dir) for f in fs if f.endswith(".json")]
    if not files:
        return "no Datumaro COCO output found"
    with open(files[0]) as f:
        data = json.load(f)
    rows, current = {}, None  # image stem -> its raw face rows, in file order
    with open(annotation_file) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 1 and not parts[0].isdigit():
                current = rows.setdefault(os.path.basename(parts[0]).rsplit(".", 1)[0], [])
            elif len(parts) == 10:
                current.append([int(v) for v in parts])
    stems = {img["id"]: os.path.basename(img["file_name"]).rsplit(".", 1)[0] for img in data["images"]}
    seen, wrong, n = {}, 0, 0
    rename = {"occluded": "occlusion"}
    for a in data.get("annotations", []):
        stem = stems[a["image_id"]]
        k = seen[stem] = seen.get(stem, -1) + 1
        official = dict(zip(ATTRIBUTE_NAMES, rows[stem][k][4:]))
        got = {rename.get(key, key): int(v) for key, v in a.get("attributes", {}).items()}
        n += 1
        wrong += any(official[key] != v for key, v in got.items() if key in official)
    with_folder = any("/" in img["file_name"] for img in data["images"])
    return (f"datumaro: {wrong} of {n} faces with attributes differing from the official order "
            f"({', '.join(ATTRIBUTE_NAMES)}); event folder {'kept' if with_folder else 'dropped'} "
            f"in file_name; {len(data['categories'])} categories")


def bench_widerface_convert(args):
    """WIDER val txt -> dicts -> COCO JSON (placeholder images for sizes): time, peak RSS, Datumaro."""
    from converters.widerface import ATTRIBUTE_NAMES  # noqa: F401  (fail early if broken)

    ann = args.wider_annotations
    if not os.path.exists(ann):
        return [Result("widerface_convert", float("nan"), "s", notes=f"{ann} not found")]
    images = _placeholder_images(ann)
    results = []
    have_dm = os.path.exists(args.datumaro_python)
    dm_note = "" if have_dm else f"datumaro venv not found at {args.datumaro_python}"
    ours_t, dm_t, dm_res, ours = [], [], None, None
    with tempfile.TemporaryDirectory() as work:
        out = os.path.join(work, "wider_val_coco.json")
        dm_root = _datumaro_root(ann, images, work) if have_dm else None
        dm_out = os.path.join(work, "dm_out")
        # Alternate the two tools (3 rounds, 2 runs each, the second timed) so a busy shared
        # machine slows both alike.
        for _ in range(3):
            ours = _run_child(sys.executable, _CHILD.format(repo=REPO, repeat=2, ann=ann, images=images,
                                                            out=out, size=None))
            ours_t.append(ours["times"][-1])
            if have_dm and dm_note == "":
                try:
                    dm_res = _run_child(args.datumaro_python, _DM_CHILD, dm_root, dm_out, "2")
                    dm_t.append(dm_res["times"][-1])
                except Exception as e:  # report, do not fail the whole benchmark
                    dm_note, dm_res = f"datumaro failed: {e}", None
        if dm_res is not None:
            dm_note = _check_datumaro_attributes(dm_out, ann)
        t = _median(ours_t)
        dm_med = _median(dm_t) if dm_t and dm_res is not None else None
        results.append(Result(
            "widerface_convert", t, "s", peer=f"datumaro {dm_res['version']}" if dm_res else "datumaro",
            peer_value=dm_med, ratio=(t / dm_med) if dm_med else None,
            notes=f"{ours['images']} images, {ours['faces']} faces kept, {ours['skipped']} reported "
                  f"(all attributes in the official order); median of 3 alternating rounds; {dm_note}"))
        results.append(Result(
            "widerface_convert_peak_rss", ours["peak_rss_mb"], "MiB", peer="datumaro" if dm_res else None,
            peer_value=dm_res["peak_rss_mb"] if dm_res else None,
            notes=f"fresh process; {ours['base_rss_mb']:.0f} MiB after imports"))
    results.extend(_bench_stream(args))
    return results


def _bench_stream(args):
    big = args.wider_stream_images
    small = max(big // 10, 1)
    out = {}
    with tempfile.TemporaryDirectory() as work:
        for n in (small, big):
            path = _synthetic_wider(n)
            t0 = time.perf_counter()
            out[n] = _run_child(sys.executable, _CHILD.format(
                repo=REPO, repeat=1, ann=path, images=None, out=os.path.join(work, f"s{n}.json"),
                size=(768, 1024)))
            out[n]["wall"] = time.perf_counter() - t0
            out[n]["json_mb"] = os.path.getsize(os.path.join(work, f"s{n}.json")) / 2**20
    b, s = out[big], out[small]
    return [Result(
        f"widerface_stream_{big // 1000}k_peak_rss", b["peak_rss_mb"], "MiB",
        peer=f"same code, {small} images", peer_value=s["peak_rss_mb"],
        notes=f"{b['images']} images / {b['faces']} faces in {b['times'][0]:.1f} s, COCO JSON "
              f"{b['json_mb']:.0f} MiB; {small} images: {s['times'][0]:.1f} s; baseline after imports "
              f"{b['base_rss_mb']:.0f} MiB")]


ROWS = {"widerface_convert": bench_widerface_convert}
