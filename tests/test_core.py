"""d2ext.core: atomic outputs (modes, no partial file, no temp left), folder swaps, output batches,
input/output guards, path containment, JSON without NaN, and a torch-free import."""
import json
import os
import stat
import subprocess
import sys

import pytest

from d2ext import core

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_written_files_have_the_umask_mode(tmp_path, umask_027):
    targets = {
        "a.json": lambda p: core.atomic_write_json(p, {"a": 1}),
        "b.bin": lambda p: core.atomic_write_bytes(p, b"xyz"),
        "c.txt": lambda p: core.atomic_write_text(p, "hello"),
        "d.png": lambda p: core.atomic_save_image(p, __import__("numpy").zeros((4, 5, 3), "uint8")),
    }
    for name, write in targets.items():
        write(str(tmp_path / name))
        assert _mode(tmp_path / name) == 0o666 & ~umask_027 == 0o640, name
    with core.atomic_path(tmp_path / "e.dat") as tmp:
        with open(tmp, "w") as f:
            f.write("e")
    assert _mode(tmp_path / "e.dat") == 0o640
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.bin", "c.txt", "d.png", "e.dat"]


def test_failed_write_leaves_old_target_and_no_temp(tmp_path):
    target = tmp_path / "out.json"
    core.atomic_write_json(target, {"old": True})
    with pytest.raises(RuntimeError):
        with core.atomic_open(target, "w") as f:
            f.write('{"new": ')
            raise RuntimeError("killed half-way")
    assert json.loads(target.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["out.json"]
    # no target at all before: none after a failure either
    with pytest.raises(ValueError):
        core.atomic_write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert os.listdir(tmp_path) == ["out.json"]


def test_json_refuses_nan_and_infinity_and_round_trips_floats(tmp_path):
    for bad in ({"x": float("nan")}, [1.0, float("inf")], {"a": [{"b": -float("inf")}]}):
        with pytest.raises(ValueError):
            core.dumps_json(bad)
    obj = {"f": 0.1 + 0.2, "i": 3, "s": "é", "n": None, "l": [1e-300, 1e300]}
    assert json.loads(core.dumps_json(obj)) == obj
    assert json.loads(core.dumps_json(obj, indent=1)) == obj  # stdlib path


def test_atomic_dir_replaces_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "labels"
    target.mkdir()
    (target / "old.png").write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with core.atomic_dir(target) as tmp:
            with open(os.path.join(tmp, "new.png"), "wb") as f:
                f.write(b"new")
            raise KeyboardInterrupt  # a killed run
    assert sorted(os.listdir(target)) == ["old.png"] and (target / "old.png").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["labels"]
    with core.atomic_dir(target) as tmp:
        with open(os.path.join(tmp, "new.png"), "wb") as f:
            f.write(b"new")
    assert sorted(os.listdir(target)) == ["new.png"]
    assert os.listdir(tmp_path) == ["labels"]


def test_output_batch_commits_all_or_none(tmp_path):
    a, b = tmp_path / "coco.json", tmp_path / "report.json"
    a.write_text("previous")
    with pytest.raises(OSError):
        with core.OutputBatch() as out:
            out.write_json(a, {"images": []})
            raise OSError("report folder not writable")
    assert a.read_text() == "previous" and not b.exists()
    assert sorted(os.listdir(tmp_path)) == ["coco.json"]
    with core.OutputBatch() as out:
        out.write_json(a, {"images": []})
        out.write_json(b, {"num_images": 0})
        folder = out.dir(tmp_path / "labels")
        with open(os.path.join(folder, "x.png"), "wb") as f:
            f.write(b"x")
    assert json.loads(a.read_text()) == {"images": []} and json.loads(b.read_text()) == {"num_images": 0}
    assert os.listdir(tmp_path / "labels") == ["x.png"]
    assert sorted(os.listdir(tmp_path)) == ["coco.json", "labels", "report.json"]
    with pytest.raises(ValueError, match="written twice"):
        with core.OutputBatch() as out:
            out.write_bytes(a, b"1")
            out.write_bytes(a, b"2")


def test_check_outputs_refuses_every_way_of_destroying_an_input(tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    ann = src / "ann.txt"
    ann.write_text("x")
    link = tmp_path / "link.txt"
    link.symlink_to(ann)
    ok_out = tmp_path / "out" / "coco.json"
    core.check_outputs([src, ann], [ok_out, tmp_path / "out" / "report.json"])  # fine
    cases = {
        "is the input": [ann],
        "lies inside the input folder": [src / "coco.json"],
        "contains the input": [tmp_path],
        "two different outputs": [ok_out, ok_out],
    }
    for message, outs in cases.items():
        with pytest.raises(core.UnsafeOutputError, match=message):
            core.check_outputs([src, ann], outs, tool="convert")
    with pytest.raises(core.UnsafeOutputError, match="is the input"):  # through a symlink
        core.check_outputs([link], [ann])


def test_resolve_inside(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"")
    root = tmp_path / "images"
    assert core.resolve_inside(root, "a.jpg") == root / "a.jpg"
    assert core.resolve_inside(root, "sub/../a.jpg") == root / "sub/../a.jpg"
    for bad in ("../x.jpg", "../../etc/passwd", "/etc/passwd", "sub/../../x.jpg", ""):
        assert core.resolve_inside(root, bad) is None, bad
    (root / "escape").symlink_to(tmp_path)
    assert core.resolve_inside(root, "escape/x.jpg") is None
    # a sibling whose name extends the root's is not inside it (string comparison by whole parts)
    (tmp_path / "images2").mkdir()
    assert core.resolve_inside(root, "../images2/a.jpg") is None
    assert core.is_inside(root, "a.jpg") and core.is_inside(root, ".") and not core.is_inside(root, "escape")
    assert core.is_inside("/", "etc") and not core.is_inside(root, "/etc")


def test_core_imports_without_pathlib():
    import subprocess
    import sys

    code = ("import sys; import d2ext.core, converters.widerface; "
            "print(sorted(m for m in ('pathlib', 'torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=core.repo_root()).stdout.strip()
    assert out == "[]"


def test_roots_follow_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("D2EXT_SHARED_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("D2EXT_CACHE", str(tmp_path / "c"))
    assert core.data_root() == tmp_path / "d" and core.cache_root() == tmp_path / "c"
    msg = core.missing_data_message("BCCD", tmp_path / "d" / "bccd")
    assert "D2EXT_SHARED_DATA" in msg and str(tmp_path / "d" / "bccd") in msg and "README" in msg
    monkeypatch.delenv("D2EXT_SHARED_DATA")
    assert core.data_root() == core.repo_root().parent / "shared" / "data"


def test_core_and_light_imports_do_not_load_torch():
    code = ("import sys, d2ext, d2ext.core, converters, converters.common; "
            "d2ext.core.setup_logger('x').info('hi'); "
            "print(sorted(m for m in ('torch', 'detectron2', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
    assert "hi" in out.stderr
