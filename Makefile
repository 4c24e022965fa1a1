# d2ext: `make demo` and `make test` set everything up from nothing (see README.md).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DETECTRON2_WHEEL := sal-detectron2==0.7.2
STAMP := $(VENV)/.d2ext-setup-done
# Detectron2's own dependencies, read from the installed wheel's metadata (Requires-Dist without
# extras), so nothing it needs (black for LazyConfig.save, packaging, ...) is missed by hand.
DETECTRON2_DEPS = $(PY) -c "import importlib.metadata as m; from packaging.requirements import Requirement as R; \
	print('\\n'.join(str(r) for r in map(R, m.requires('sal-detectron2') or []) \
	if r.marker is None or r.marker.evaluate({'extra': ''})))"
PYTEST_ARGS ?=

.PHONY: setup setup-pose demo test test-all test-slow benchmark clean

setup: $(STAMP)

# The stamp depends on the pin files, so a second `make setup` does nothing unless they change.
$(STAMP): requirements.txt setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip<26" wheel packaging
	# Detectron2 ships only a cp310 wheel on the package index; its Python code runs on 3.11
	# (the compiled _C extension does not load, so d2ext never needs it).
	$(PIP) install -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
		--upgrade --target "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
		$(DETECTRON2_WHEEL)
	# our pins and Detectron2's declared dependencies, resolved together
	$(DETECTRON2_DEPS) > $(VENV)/detectron2-requirements.txt
	$(PIP) install -q -r requirements.txt -r $(VENV)/detectron2-requirements.txt
	# compat: the editable install is one path line in a .pth file; the default finder hook is
	# imported by every Python start (pathlib, importlib.util: ~15 ms of each tool's start-up)
	$(PIP) install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	$(PY) -c "import detectron2, d2ext; print('detectron2', detectron2.__version__, 'd2ext ok')"
	touch $(STAMP)

# Optional: MediaPipe BlazePose for `tools/extract_keypoints.py --backend mediapipe` (never part of
# `setup`; its tests are skipped without it). mediapipe 0.10.14 is the last release whose wheel
# bundles the pose models. Its declared dependencies jax, jaxlib, opencv-contrib-python and
# sounddevice are not used by mediapipe.solutions.pose (and opencv-contrib-python would replace our
# headless OpenCV), so it is installed with --no-deps plus what the pose API imports: protobuf<5
# (its generated code fails on protobuf 5+; tensorboard accepts 4.25), attrs, flatbuffers
# (absl-py, numpy, matplotlib are already pinned). `pip check` will list the unused ones as missing.
setup-pose: setup
	$(PIP) install -q --no-deps "mediapipe==0.10.14"
	$(PIP) install -q --no-deps "protobuf>=4.25.3,<5" "attrs>=19.1.0" "flatbuffers>=2.0"
	$(PY) -c "from mediapipe.python.solutions import pose; import cv2, mediapipe; print('mediapipe', mediapipe.__version__, 'pose ok; cv2', cv2.__version__)"

demo: setup
	$(PY) tools/demo.py --output output/demo

test: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

test-slow: setup
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) tests

test-all: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

benchmark: setup
	$(PY) tools/benchmark.py --list

clean:
	rm -rf $(VENV) build *.egg-info output
