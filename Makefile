# Two commands do everything on a fresh machine (no GPU needed): `make demo` and `make test`.
# Each creates .venv if missing, installs torch 2.13.0 first (so pip takes the CPU wheel instead of the multi-GB
# CUDA build), then this package with its dev and plots extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stackrlhf-installed

.PHONY: demo test test-fast test-deepspeed lint install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

LAUNCH := $(BIN)/accelerate launch --quiet --num_processes 1  # the tiny configs run one torch thread (torch_threads)

# The whole StackLLaMA pipeline on one shared base: with no arguments, ppo_stackllama.py runs (or reuses from the
# cache) SFT, merge and the reward model on the bundled data, then PPO; then the policy is scored against its reference.
demo: $(STAMP)
	$(LAUNCH) recipes/ppo_stackllama.py --output_dir outputs/ppo
	$(BIN)/python recipes/evaluate_policy.py --policy_path outputs/ppo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The inner loop: everything except the tests that start other processes (torchrun, accelerate launch).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not subprocess"

# DeepSpeed ZeRO-2/3 runs of every recipe on the CPU (DS_ACCELERATOR=cpu; DeepSpeed builds one C++ op with g++ on
# first use). `make test` skips them when deepspeed is not installed.
test-deepspeed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,deepspeed]"
	$(BIN)/python -m pytest -q tests/scaleout/test_deepspeed.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
