# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_SPEC ?= pip==26.3
# A CPU build: the +cpu wheel from PyTorch's CPU index (or a local wheel of that name), never the
# CUDA build a plain index serves. For CUDA (or create .venv with your torch first):
#   make setup TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu126
TORCH_SPEC ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed
VIEWER_STAMP := tests/viewer/node_modules/.package-lock.json

.PHONY: setup demo demo-toy test test-distributed clean

setup: $(STAMP) $(VIEWER_STAMP)

# pip and torch pinned (TORCH_SPEC above); a torch already importable in .venv is kept.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(PIP_SPEC)"
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet --extra-index-url $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

# The glTF viewer of tests/test_viewer.py (model-viewer, npm); Chromium comes from apt (.ci/run).
$(VIEWER_STAMP): tests/viewer/package-lock.json
	if command -v npm >/dev/null; then npm ci --prefix tests/viewer --no-audit --no-fund --silent; \
	else echo "npm not found: tests/test_viewer.py will need tests/viewer/node_modules (npm ci there)"; fi

# The main job: text-to-3D, 4 NeRF particles of the ambiguous prompt "a cube" from the embedded
# prior, kept apart by repulsion so that they take different colours (minutes on 2 cores):
# orbit GIFs, meshes and probe metrics under outputs/dreamfusion-demo/, then the particles side by
# side in outputs/demo/ (text_to_3d.png, text_to_3d_turntable.gif). Without repulsion, for
# comparison: docs/images/text_to_3d_no_repulsion.png.
demo: setup
	$(PY) scripts/readme_pictures.py --only text-to-3d --out outputs/demo --work outputs

# Seconds: repulsion between particles on a 2-D bimodal target.
demo-toy: setup
	$(PY) launch.py --config configs/toy-particles.yaml --train

test: setup
	$(PY) -m pytest -q

# The slower checks of scorestudio batch on a local Ray cluster (tests marked slow; CI runs them too).
test-distributed: setup
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,ray]"
	$(PY) -m pytest -q -m slow tests/test_distributed_batch.py

clean:
	rm -rf outputs .pytest_cache
