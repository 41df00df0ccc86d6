# Every target creates ./.venv on first use: a fresh clone needs no other step.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

MODEL ?=
# what `make serve` serves without MODEL: a small (22M parameters), widely used English cross-encoder
DEFAULT_MODEL := cross-encoder/ms-marco-MiniLM-L-6-v2
# engines/<last path component of MODEL>, e.g. engines/bge-reranker-v2-m3
OUT   ?= engines/$(notdir $(patsubst %/,%,$(MODEL)))
HOST  ?= 127.0.0.1
PORT  ?= 30000
PRECISION ?= fp32
EXPORT_ARGS ?=
SERVE_ARGS  ?=
PYTEST_ARGS ?=
BENCH_ARGS  ?=

.PHONY: install test test-fast export serve bench clean-venv docker docker-cpu docker-ray

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Everything: the unit tier and the integration tier (tests that export models or start servers).
test: $(STAMP)
	$(BIN)/ruff check src tests bench
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# The unit tier only: under a minute on 2 cores.
test-fast: $(STAMP)
	$(BIN)/ruff check src tests bench
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

export: $(STAMP)
	@test -n "$(MODEL)" || { echo "usage: make export MODEL=<hub id or local dir> [OUT=engines/<name>] [PRECISION=fp32|int8|bf16|fp16]" >&2; exit 2; }
	$(BIN)/rerankrt export "$(MODEL)" --out "$(OUT)" --precision $(PRECISION) $(EXPORT_ARGS)

# make serve [MODEL=<hub id or local dir>] [OUT=engines/<name>] [PORT=30000]; without MODEL, DEFAULT_MODEL
serve: MODEL := $(or $(MODEL),$(DEFAULT_MODEL))
serve: $(STAMP)
	@test -f "$(OUT)/manifest.json" || $(MAKE) --no-print-directory export MODEL="$(MODEL)" OUT="$(OUT)" || { \
	  echo "make serve: could not export $(MODEL). If the Hugging Face Hub is unreachable from here, download the" >&2; \
	  echo "  model folder where it is (huggingface-cli download $(MODEL) --local-dir DIR), copy DIR here and run" >&2; \
	  echo "  HF_HUB_OFFLINE=1 make serve MODEL=DIR; or serve a tiny offline test model (docs/development.md)." >&2; \
	  exit 1; }
	$(BIN)/rerankrt serve --model-path "$(OUT)" --host $(HOST) --port $(PORT) $(SERVE_ARGS)

# Infinity, the peer server, in its own pinned environment (never in .venv): bench/lib/infinity.py
INFINITY_STAMP := bench/.venv-infinity/.installed-stamp
$(INFINITY_STAMP): bench/infinity-constraints.txt
	$(BIN)/python -m bench.peers

# CPU speed of the precision variants vs sentence-transformers / the model card in-process and vs Infinity over
# HTTP, and fidelity on trained weights: bench/results/cpu_speed.{json,md,png}. Several hours on 2 cores;
# BENCH_ARGS="--sections xlmr-base --quick" re-runs a part.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(MAKE) --no-print-directory $(INFINITY_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.cpu_speed $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)

docker:
	docker build -f Dockerfile -t rerankrt:gpu .

docker-cpu:
	docker build -f Dockerfile.cpu -t rerankrt:cpu .

# the GPU image with Ray Serve, for KubeRay (deploy/kuberay/rayservice.yaml)
docker-ray:
	docker build -f Dockerfile --build-arg EXTRAS=gpu,ray -t rerankrt:gpu-ray .
