"""Converter speed and memory.

``widerface_convert``: the real WIDER Face val annotation file -> COCO JSON by the **whole**
``tools/convert.py widerface`` process (interpreter start, imports, parsing, image headers,
export), with placeholder JPEGs (1024 wide, tall enough for every box) standing in for the
images so the sizes come from real image headers. Compared with the same work by Datumaro
(``wider_face`` import -> ``coco_instances`` export, timed in-process, so Datumaro's own start-up
is not counted), run from a separate venv (``--datumaro-venv``, default ``/tmp/dm_venv``; made
with ``python3.11 -m venv /tmp/dm_venv && /tmp/dm_venv/bin/pip install datumaro==1.13.12``; the
row says when it is missing). The two alternate over ROUNDS (5) rounds (a busy shared machine slows both
alike); medians are reported, wall and CPU (user + sys) time. Target: Datumaro / ours >= 5.
Datumaro's exported attributes are checked against the file's official order.

Then a synthetic 100k-image WIDER file is converted in a fresh process (fixed image size) and
its peak RSS is compared with a 10k-image file: streaming means the two stay close.

Every measurement runs in its own subprocess so peak RSS belongs to that work alone.
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import time

from d2ext.core import atomic_open, data_root
from tools.bench.common import Result

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Alternating rounds of ours vs Datumaro: 5, not 3 -- a single ~0.3 s process varies by +-20% on
# the shared 2-core machine (0.27-0.40 s over 12 back-to-back runs), Datumaro's 1.6 s pass less.
ROUNDS = 5
CACHE = os.path.join(tempfile.gettempdir(), "d2ext_bench_converters")
DEFAULT_DM_VENV = os.path.join(tempfile.gettempdir(), "dm_venv")
TARGET_SPEEDUP = 5.0


def add_arguments(parser):
    """Flags of this row group only (``--data`` = the WIDER Face folder is a shared flag)."""
    parser.add_argument("--wider-stream-images", type=int, default=100_000,
                        help="images in the synthetic streaming WIDER file (widerface_convert)")
    parser.add_argument("--datumaro-venv", default=DEFAULT_DM_VENV,
                        help="a separate venv with datumaro 1.13.12 installed (widerface_convert)")


def _wider_annotations(args) -> str:
    """``--data`` is the WIDER Face folder (holds ``wider_face_split/``) or the txt itself."""
    folder = getattr(args, "data", None) or str(data_root() / "widerface")
    if os.path.isfile(folder):
        return folder
    return os.path.join(folder, "wider_face_split", "wider_face_val_bbx_gt.txt")


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
import json, os, resource, sys, time
import datumaro as dm
root, out = sys.argv[1], sys.argv[2]
base = hwm_mb()
times, cpu = [], []
for _ in range(int(sys.argv[3])):
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    ds = dm.Dataset.import_from(root, "wider_face")
    ds.export(out, "coco_instances", save_media=False)
    times.append(time.perf_counter() - t0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
print(json.dumps({"times": times, "cpu": cpu, "peak_rss_mb": hwm_mb(),
                  "base_rss_mb": base, "version": dm.__version__}))
"""


def _whole_process(cmd, cwd=None):
    """Wall seconds, CPU seconds (user + sys) and peak RSS (MiB) of one process, via os.wait4."""
    # Bytecode is cached as in a normal install (this project's shells may set
    # PYTHONDONTWRITEBYTECODE, which would recompile every module on every start; Datumaro's
    # venv has its .pyc from pip); the untimed warm-up run writes the cache.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(env, OMP_NUM_THREADS="1"))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace").strip()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(err.splitlines()[-1] if err else "failed")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


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
    """tools/convert.py widerface on WIDER val, whole process, vs Datumaro in-process (>= 5x)."""
    ann = _wider_annotations(args)
    if not os.path.exists(ann):
        return [Result("widerface_convert", float("nan"), "s", notes=f"{ann} not found")]
    images = _placeholder_images(ann)
    dm_python = os.path.join(args.datumaro_venv, "bin", "python")
    dm_note = "" if os.path.exists(dm_python) else f"datumaro venv not found at {args.datumaro_venv}"
    ours, dm_t, dm_cpu, dm_res = [], [], [], None
    with tempfile.TemporaryDirectory() as work:
        out = os.path.join(work, "wider_val_coco.json")
        cmd = [sys.executable, os.path.join(REPO, "tools", "convert.py"), "widerface", "--annotations",
               ann, "--images", images, "--output", out, "--no-progress"]
        dm_root = _datumaro_root(ann, images, work) if not dm_note else None
        dm_out = os.path.join(work, "dm_out")
        # Alternate the two tools (ROUNDS rounds; ours runs twice per round, the second timed, as
        # Datumaro's second in-process pass is) so a busy shared machine slows both alike.
        for _ in range(ROUNDS):
            _whole_process(cmd, cwd=work)
            ours.append(_whole_process(cmd, cwd=work))
            if not dm_note:
                try:
                    dm_res = _run_child(dm_python, _DM_CHILD, dm_root, dm_out, "2")
                    dm_t.append(dm_res["times"][-1])
                    dm_cpu.append(dm_res["cpu"][-1])
                except Exception as e:  # report, do not fail the whole benchmark
                    dm_note, dm_res = f"datumaro failed: {e}", None
        with open(out, "rb") as f:
            coco = json.loads(f.read())
        if dm_res is not None:
            dm_note = _check_datumaro_attributes(dm_out, ann)
    wall, cpu = _median([o[0] for o in ours]), _median([o[1] for o in ours])
    peak = max(o[2] for o in ours)
    have_dm = dm_res is not None and dm_t
    dm_wall = _median(dm_t) if have_dm else None
    dm_cpu_med = _median(dm_cpu) if have_dm else None
    counts = (f"{len(coco['images'])} images, {len(coco['annotations'])} faces written (all attributes "
              "in the official order)")
    results = [Result(
        "widerface_convert", wall, "s", peer=f"datumaro {dm_res['version']}" if have_dm else "datumaro",
        peer_value=dm_wall,
        notes=f"whole process (bytecode cached), wall, median of {ROUNDS} alternating rounds; CPU {cpu:.3f} s"
              f"{f' vs {dm_cpu_med:.3f} s' if have_dm else ''}; {counts}; {dm_note}")]
    if have_dm:
        results.append(Result(
            "widerface_convert_speedup", dm_wall / wall, "x", peer="target", peer_value=TARGET_SPEEDUP,
            notes=f"datumaro in-process / ours whole process, wall; by CPU time "
                  f"{dm_cpu_med / cpu:.1f}x; {'met' if dm_wall / wall >= TARGET_SPEEDUP else 'NOT met'}"))
    results.append(Result(
        "widerface_convert_peak_rss", peak, "MiB", peer="datumaro" if have_dm else None,
        peer_value=dm_res["peak_rss_mb"] if have_dm else None, notes="whole process"))
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
