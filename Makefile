# Two commands set up a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-slow test-all bench reproduce reproduce-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dgpg compare --num-agents 200 --episodes 20 --seeds 2 --out runs/main --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

bench: $(STAMP)
	$(BIN)/python benchmarks/env_throughput.py

# Every experiment of results/ and docs/ (resumable: a rerun skips what is done).
reproduce: $(STAMP)
	$(BIN)/python experiments/variance.py
	$(BIN)/python experiments/ev_charging.py
	$(BIN)/python experiments/scale.py --setting queueing
	$(BIN)/python experiments/scale.py --setting paper
	$(BIN)/python experiments/sensitivity.py
	$(BIN)/python experiments/transfer.py
	$(BIN)/python experiments/load.py
	$(BIN)/python experiments/small_scale.py
	$(BIN)/python experiments/decision_modes.py
	$(BIN)/python experiments/traffic.py
	$(BIN)/python experiments/scale.py --setting in_turn --sizes 20,50,100,200,500,1000 --seeds 3
	$(BIN)/python experiments/gap.py
	$(BIN)/dgpg sweep --algo dgpg,mappo --num-agents 200 --episodes 20 --seeds 64 --out results/seeds64_in_turn

# A subset that still shows each claim, into results/quick/ (not committed).
QUICK := results/quick
reproduce-quick: $(STAMP)
	$(BIN)/python experiments/variance.py --sizes 5,50,500 --rollouts 32 --settings queueing,ev-charging \
		--out $(QUICK)/variance --figures $(QUICK)
	$(BIN)/python experiments/ev_charging.py --sizes 10,200 --seeds 2 --out $(QUICK)/ev_charging --figures $(QUICK)
	$(BIN)/python experiments/scale.py --setting queueing --sizes 20,200 --seeds 3 --out $(QUICK)/scale \
		--figures $(QUICK)

clean:
	rm -rf $(VENV) runs
