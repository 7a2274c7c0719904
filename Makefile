# One-command set-up and the two README commands: `make demo` and `make test`.
PY     ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DEMO_OUT ?= out/demo-smollm2-gptq4g32-eora64
TORCH   ?= torch==2.13.0

.PHONY: setup test test-fast demo demo-deploy recipes bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch pinned to the local CPU wheel; any other spec pulls gigabytes of CUDA packages.
	# pyproject only asks for a range, so the pin is repeated beside the extras: pip keeps it.
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test,data,eval,export]' $(TORCH)
	rm -f $(VENV)/.installed-*; touch $@

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -ra

test-fast: setup
	$(BIN)/python -m pytest -q -ra -m "not slow"

# The headline job on the embedded default model: GPTQ 4-bit g32 sym (exports to GGUF Q4_0 and
# compressed-tensors as is) + EoRA rank 64 on SmolLM2-135M-Instruct,
# calibrated and evaluated on the builtin Wikipedia text (held-out articles), with the dense
# model's perplexity on the same windows beside it. Sized for a first look (8×256 calibration
# tokens, 8 eval windows: a few minutes on 2 CPU cores); the full-size command is printed last.
DEMO_FULL = svdc compress smollm2-135m --method eora --bits 4 --group-size 32 --set sym=true --rank 64 \
	--calib builtin --nsamples 32 --seqlen 512 --eval builtin --eval-windows 40 --eval-dense \
	-o out/smollm2-gptq4-eora64

demo: setup
	$(BIN)/svdc compress smollm2-135m --method eora --bits 4 --group-size 32 --set sym=true --rank 64 \
	    --calib builtin --nsamples 8 --seqlen 256 --eval builtin --eval-windows 8 --eval-dense \
	    -o $(DEMO_OUT) --force
	$(BIN)/svdc inspect $(DEMO_OUT)
	@echo "demo: a first look (8x256 calibration tokens, 8 eval windows). Full size (about an hour on 2 CPU cores):"
	@echo "  $(DEMO_FULL)"

# The demo, deployed: its output exported to compressed-tensors (+ PEFT adapter) and to GGUF
# (+ .lora.gguf), each loaded as users load it and scored on the report's windows; exits 1 if
# any differs from the report's perplexity (scripts/check_demo_deploy.py).
demo-deploy: demo
	$(BIN)/python scripts/check_demo_deploy.py $(DEMO_OUT)

recipes: setup
	$(BIN)/python scripts/reproduce.py recipes/small/*.yaml --threads 1

clean:
	rm -rf $(VENV) out .pytest_cache

# Regenerate BENCHMARKS.md (SmolLM2, builtin text; ~1.5 h on 2 cores, one thread per row)
bench: setup
	$(BIN)/python scripts/bench.py --matrix scripts/bench_matrix.yaml --out benchmarks/ --threads 1
