# The two commands of the README. Everything else is reached through `taxi-mlops`.
.PHONY: demo test install up down clean bench

VENV := .venv
CLI := $(VENV)/bin/taxi-mlops

install:
	@bash scripts/bootstrap.sh

demo: install
	$(CLI) up
	$(CLI) train
	$(CLI) train --family linear
	$(CLI) experiment start --control champion --treatment challenger --split 50/50 --replace
	$(CLI) stream replay --speed max --retime --limit 3000 --max-rate 200 --predict
	$(CLI) predict
	$(CLI) experiment status
	$(CLI) status
	$(CLI) alerts
	$(CLI) urls

test: install
	$(VENV)/bin/python -m pytest

up: install
	$(CLI) up

down:
	$(CLI) down

bench: install
	$(VENV)/bin/python bench/predict_load.py
	$(VENV)/bin/python bench/metrics_cost.py
	$(VENV)/bin/python bench/batch_scoring.py
	$(VENV)/bin/python bench/pipeline_time.py
	$(VENV)/bin/python bench/stream_bench.py
	$(VENV)/bin/python bench/sequential_bench.py
	$(VENV)/bin/python bench/rollout_bench.py

clean: down
	rm -rf .state
