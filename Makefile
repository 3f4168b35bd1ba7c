# Two commands set everything up on a fresh machine:
#   make demo   -- create .venv, install fsmtl, run the main job on the embedded Omniglot images
#   make test   -- create .venv, install fsmtl + test extras (+ DALI/FFCV where they build), run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fsmtl-installed
XSTAMP := $(VENV)/.fsmtl-extras
DEMO_OUT ?= runs/demo

.PHONY: demo test install extras l2l bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/fsmtl doctor --warm > /dev/null || echo "fsmtl: the CPU kernels were not compiled ahead; the first training run compiles them"
	touch $(STAMP)

install: $(STAMP)

# DALI and FFCV are optional back ends. FFCV builds only where pkg-config, OpenCV and libturbojpeg
# are installed (Debian/Ubuntu: apt-get install -y pkg-config libopencv-dev libturbojpeg0-dev);
# where an extra cannot be installed its tests skip, unless FSMTL_REQUIRE_BACKENDS=1 (CI).
$(XSTAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dali]' || echo "fsmtl: DALI extra not installed; its tests will skip"
	$(BIN)/python -m pip install -q -e '.[ffcv]' || echo "fsmtl: FFCV extra not installed (needs pkg-config libopencv-dev libturbojpeg0-dev); its tests will skip"
	$(MAKE) --no-print-directory l2l || echo "fsmtl: learn2learn not installed; MAML/ANIL baselines and its tests will skip"
	touch $(XSTAMP)

extras: $(XSTAMP)

# learn2learn 0.2.0 (MAML/ANIL baselines, and the seed's own task builder in the reference pipeline).
# Its declared dependencies pin numpy<2, so it is installed without them; its generated C only
# builds through the PEP 517 path of a recent pip.
l2l: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps learn2learn==0.2.0 --config-settings=--build-option=build_ext
	$(BIN)/python -m pip install -q requests tqdm gym scipy

demo: $(STAMP)
	$(BIN)/fsmtl demo --out $(DEMO_OUT)

test: $(XSTAMP)
	$(BIN)/python -m pytest -q tests

bench: $(XSTAMP)
	$(BIN)/fsmtl bench all --json benchmarks/results/bench_all.json

clean:
	rm -rf $(VENV) runs build *.egg-info
