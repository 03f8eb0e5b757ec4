# thinkdiff: the two commands are `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: demo test venv organism clean-runs bench

venv: $(VENV)/.installed

# Reinstall when the dependency list changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

# Every notebook executed by papermill on the embedded default, then the run report.
demo: venv
	$(PY) -m thinkdiff.notebooks --all --out notebooks/executed
	$(PY) -c "from thinkdiff import report, runconfig; print(report.write_report(runconfig.DEFAULT_RUN))"

# Unit tests plus execution of every notebook.
test: venv
	$(PY) -m pytest -q --durations=12 tests

# Rebuild the shipped organism weights under data/organism/ from scratch (deterministic).
organism: venv
	$(PY) -m thinkdiff.organism

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-runs:
	rm -rf runs notebooks/executed
