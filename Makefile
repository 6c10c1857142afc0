# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch first, from a range the CPU build on this kind of machine satisfies (torch 2.13.0+cpu in
# pip's find-links), so set-up never pulls multi-GB CUDA wheels; on a GPU machine pass e.g.
# `make test TORCH=torch` to take the newest build the index offers.
TORCH ?= torch>=2.4,<2.14
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,data,export]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m torchliquid demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_train.py --quick

clean:
	rm -rf $(VENV) build dist src/*.egg-info
