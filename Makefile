# vlforge: `make demo` installs and runs the pipeline on the embedded default; `make test` installs and runs the tests.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The CPU build of torch goes in first so nothing pulls a CUDA build; bring your own CUDA torch on GPU machines.
TORCH_SPEC ?= torch==2.13.0
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install browser demo test test-fast test-long test-bench bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[test]"
	# img2dataset pulls the `dataclasses` PyPI backport, which shadows the standard library inside Prefect's server
	$(PIP) uninstall -y dataclasses || true
	$(PY) -c "import dataclasses, sys; assert 'site-packages' not in dataclasses.__file__, dataclasses.__file__"
	touch $@

demo: install
	$(VENV)/bin/vlforge run pipeline

# The catalog browser's end-to-end test drives Debian's chromium through chromium-driver (browser downloads fail
# here); quick no-op when both are installed, apt-get otherwise (CI runs as root on a fresh machine).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; fi

# pycocoevalcap's PTB tokenizer and METEOR (tests/components/evaluation/test_caption_reference.py) are Java; quick
# no-op when java is installed, Debian's default-jre-headless otherwise.
java:
	@if ! command -v java >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless; fi

# The caption metrics' reference, pycocoevalcap, in its own venv (.bench-venvs/cocoeval); no-op when it is there.
cocoeval: install
	$(PY) bench/caption_reference_bench.py --setup-only

.PHONY: java cocoeval

# CLIP_benchmark, the retrieval / zero-shot reference (tests/test_clip_benchmark_parity.py), in its own venv
# (.bench-venvs/clipbench: it pulls torchvision and open_clip, 5.6 GB; about 2 min once); no-op when it is there.
# A prerequisite of `make test-bench` only: `make test` does not build it.
clipbench: install
	$(PY) bench/clip_benchmark_bench.py --setup-only

.PHONY: clipbench

# The benchmark scripts' own --tiny/--dry-run runs (marker `bench`) are minutes of repeated pipeline start-ups: they
# run with the benchmarks (`make test-bench`, first thing `make bench` does), not in `make test`.
# TEST_WORKERS pytest processes (pytest-xdist; a test file stays on one of them, so its module fixtures are built
# once): most of a CLI or Ray test is waiting on a subprocess, so two processes on two cores overlap that waiting.
# Tests marked `serial` (a Ray cluster, a timed kill) then run one at a time: they time out under a loaded machine.
TEST_WORKERS ?= 2
test: install browser java cocoeval
	$(PY) -m pytest -q -p no:cacheprovider -m "not bench and not long and not serial" -n $(TEST_WORKERS) --dist loadfile --durations=30
	$(PY) -m pytest -q -p no:cacheprovider -m "serial and not bench and not long" --durations=10

test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow and not bench"

# The long end-to-end runs (marker `long`: every family through the DAG) whose paths `make test` already takes.
test-long: install
	$(PY) -m pytest -q -p no:cacheprovider -m "long and not bench" -n $(TEST_WORKERS) --dist loadfile

test-bench: install java cocoeval clipbench
	$(PY) -m pytest -q -p no:cacheprovider -m bench

# Every benchmark of BENCHMARKS.md, each against its peer in the same run (results in bench/results/*.json).
# open_clip gets its own virtual environment (.bench-venvs/openclip), created on first use; the GPU benchmark runs
# on an NVIDIA GPU when torch sees one and in its CPU --dry-run mode otherwise.
bench: test-bench test-long
	$(PY) bench/pipeline_bench.py
	$(PY) bench/loader_bench.py
	$(PY) bench/crawl_bench.py
	$(PY) bench/orchestration_bench.py
	$(PY) bench/openclip_bench.py --profile $$([ -x .bench-venvs/openclip/bin/python ] || echo --setup-peer)
	$(PY) bench/catalog_bench.py
	$(PY) bench/memory_bench.py
	if $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then $(PY) bench/gpu_bench.py; \
	else $(PY) bench/gpu_bench.py --dry-run; fi

clean:
	rm -rf $(VENV) .vlforge .bench-venvs
