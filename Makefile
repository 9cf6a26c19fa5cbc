# kanitts: every step of the pipeline as a make target. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
KANITTS := $(VENV)/bin/kanitts
CONFIG_DIR ?= config

CYAN := \033[0;36m
GREEN := \033[0;32m
YELLOW := \033[1;33m
NC := \033[0m

.DEFAULT_GOAL := help
.PHONY: help setup lock login prepare data train sweep eval report synthesize serve test-config upload-model \
        test lint demo sweep-demo bench clean clean-all

help: ## show this list
	@printf "$(CYAN)kanitts$(NC): fine-tune, evaluate and publish LLM-based TTS models\n\n"
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  $(YELLOW)make %-13s$(NC) %s\n", $$1, $$2}'
	@printf "\nVariables: VENV=$(VENV) and NEWEST=1 (setup), CONFIG_DIR=$(CONFIG_DIR) (every pipeline target),\n"
	@printf "           MODEL_ID, REPO, PRIVATE=1 (upload-model), TRIALS (sweep, sweep-demo),\n"
	@printf "           INPUT, OUTPUT, SPEAKER, TRANSCRIBE_ONLY=1, PREPARE_ARGS (prepare), TEXT, MODEL, OUT, VOICE, SEED (synthesize),\n"
	@printf "           HOST, PORT (serve), YES=1 (clean-all)\n"

$(PY):
	@printf "$(YELLOW)No environment found: run 'make setup' first.$(NC)\n"; exit 1

setup: ## install the tested versions (requirements/lock.txt) into .venv; NEWEST=1: newest releases instead
	@VENV="$(VENV)" NEWEST="$(NEWEST)" bash scripts/setup.sh

lock: ## re-resolve requirements/lock.txt to the newest releases pyproject.toml allows (UPGRADE=0 keeps pins)
	@UPGRADE="$(or $(UPGRADE),1)" bash scripts/lock.sh

login: $(PY) ## log in to the Hugging Face Hub and W&B (reads HF_TOKEN / WANDB_API_KEY if set)
	@$(KANITTS) login

test-config: $(PY) ## validate the config files: every error with file and key path
	@$(KANITTS) check-config --config-dir $(CONFIG_DIR)

prepare: $(PY) ## audio folder, long recordings or HF audio dataset -> codec dataset (INPUT=... OUTPUT=... [SPEAKER=...] [TRANSCRIBE_ONLY=1])
	@if [ -z "$(INPUT)" ] || [ -z "$(OUTPUT)" ]; then \
	  echo "usage: make prepare INPUT=path/to/audio_folder_or_dataset OUTPUT=data/my-codec-dataset [SPEAKER=name]"; exit 2; fi
	@$(KANITTS) prepare "$(INPUT)" --output "$(OUTPUT)" --config-dir $(CONFIG_DIR) $(if $(SPEAKER),--speaker "$(SPEAKER)") \
	  $(if $(TRANSCRIBE_ONLY),--transcribe-only) $(PREPARE_ARGS)

data: $(PY) ## build (and cache) the training sequences from dataset_config.yaml, with a summary
	@$(KANITTS) data --config-dir $(CONFIG_DIR)

train: $(PY) ## run every experiment in experiments.yaml (skips finished ones; FORCE=1 redoes them)
	@$(KANITTS) train --config-dir $(CONFIG_DIR) $(if $(FORCE),--force) $(if $(ONLY),--only $(ONLY))

sweep: $(PY) ## run (or resume) the grid / Optuna studies of experiments.yaml's sweep: sections [TRIALS=N]
	@$(KANITTS) sweep --config-dir $(CONFIG_DIR) $(if $(TRIALS),--trials $(TRIALS)) $(if $(ONLY),--only $(ONLY))

eval: $(PY) ## base model + every checkpoint speak the eval set; metrics, dataset, HTML report
	@$(KANITTS) eval --config-dir $(CONFIG_DIR) $(if $(FORCE),--force)

report: $(PY) ## rebuild the HTML report from existing eval outputs
	@$(KANITTS) report --config-dir $(CONFIG_DIR)

synthesize: $(PY) ## speak TEXT with MODEL (a checkpoint folder or Hub id) into OUT (default out.wav)
	@if [ -z "$(TEXT)" ] || [ -z "$(MODEL)" ]; then echo 'usage: make synthesize TEXT="alice: Hello" MODEL=checkpoints/<model_id> [OUT=out.wav] [VOICE=ref.wav] [SEED=N]'; exit 2; fi
	@$(KANITTS) synthesize "$(TEXT)" --model "$(MODEL)" --config-dir $(CONFIG_DIR) -o "$(or $(OUT),out.wav)" \
	  $(if $(VOICE),--voice "$(VOICE)") $(if $(SEED),--seed "$(SEED)")

serve: $(PY) ## serve MODEL over HTTP: OpenAI speech API, streaming, a page at / [HOST=127.0.0.1 PORT=8000]
	@if [ -z "$(MODEL)" ]; then echo 'usage: make serve MODEL=checkpoints/<model_id> [HOST=127.0.0.1] [PORT=8000]'; exit 2; fi
	@$(KANITTS) serve --model "$(MODEL)" --config-dir $(CONFIG_DIR) $(if $(HOST),--host "$(HOST)") $(if $(PORT),--port "$(PORT)")

upload-model: $(PY) ## publish checkpoints/MODEL_ID to the Hub repo REPO with a model card [PRIVATE=1]
	@model_id="$(MODEL_ID)"; repo="$(REPO)"; \
	usage="make upload-model MODEL_ID=<model_id from experiments.yaml> REPO=<user/name> [PRIVATE=1]"; \
	missing="$$([ -z "$$model_id" ] && printf 'MODEL_ID ')$$([ -z "$$repo" ] && printf 'REPO')"; missing="$${missing% }"; \
	if [ -n "$$missing" ] && [ ! -t 0 ]; then \
	  echo "error: $${missing// / and } not given and no terminal to ask in; run: $$usage" >&2; exit 2; fi; \
	if [ -z "$$model_id" ]; then read -r -p "Checkpoint name (model_id from experiments.yaml): " model_id || echo; fi; \
	if [ -z "$$model_id" ]; then echo "error: no checkpoint name (MODEL_ID) given; run: $$usage" >&2; exit 2; fi; \
	if [ -z "$$repo" ]; then read -r -p "Hugging Face repo (user/name): " repo || echo; fi; \
	if [ -z "$$repo" ]; then echo "error: no Hub repo (REPO) given; run: $$usage" >&2; exit 2; fi; \
	$(KANITTS) upload-model --model-id "$$model_id" --repo "$$repo" --config-dir $(CONFIG_DIR) $(if $(PRIVATE),--private)

test: $(PY) ## run the test suite (offline, CPU, tiny models)
	@HF_HUB_OFFLINE=1 $(PY) -m pytest

lint: $(PY) ## ruff check (rules in pyproject.toml) and lint-imports (the import contracts)
	@$(VENV)/bin/ruff check . && PYTHONPATH=src $(VENV)/bin/lint-imports

demo: $(PY) ## offline end to end: espeak clips -> prepare -> train 2 experiments -> eval -> report (CODEC=kanade: on Kanade; KANITTS2=1: a KaniTTS-2 model)
	@bash examples/run_demo.sh

sweep-demo: $(PY) ## the demo's 6-trial Optuna study (offline, CPU); kill it and run again: it resumes
	@TRIALS="$(TRIALS)" bash examples/run_sweep_demo.sh

bench: $(PY) ## run the benchmarks (ratios against baselines measured in the same run)
	@for b in benchmarks/bench_*.py; do printf "\n$(CYAN)== $$b$(NC)\n"; $(PY) $$b || exit 1; done

clean: ## remove caches (Python, pytest, processed-data cache)
	@find . \( -path ./$(VENV) -o -path ./.venv-newest \) -prune -o -type d -name __pycache__ -exec rm -rf {} + 2>/dev/null || true
	@rm -rf .pytest_cache .hypothesis .mypy_cache .ruff_cache .cache build dist src/*.egg-info
	@printf "$(GREEN)cleaned caches$(NC)\n"

clean-all: clean ## also remove checkpoints, audio samples, reports and the venvs (asks first; YES=1 skips)
	@if [ "$(YES)" != 1 ]; then \
	  read -r -p "Delete checkpoints/, audio_samples/, report/, sweeps/, $(VENV)/ and .venv-newest/? [y/N] " ans; \
	  case "$$ans" in y|Y|yes) ;; *) echo "nothing deleted"; exit 1;; esac; fi
	@rm -rf checkpoints audio_samples report sweeps $(VENV) .venv-newest examples/work
	@printf "$(GREEN)removed checkpoints, audio samples, reports, sweeps, $(VENV) and .venv-newest$(NC)\n"
