# Two commands do everything on a fresh machine:
#   make run    set up the lean serving environment (.venv-app) and start the chat app
#   make test   set up the full environment (.venv) and run ruff and the whole test suite
# And, each one command on a fresh clone too:
#   make demo        the app on a tiny random model built here (no Hub needed; random answers, for UI work)
#   make fast-model  the published PyTorch checkpoint exported fast (fused attention, int8) to out/fast
# Options: make run ARGS="--model out/smoke/onnx --port 7861"; make test PYTEST_ARGS="-k format"

PYTHON ?= $(shell command -v python3.11 || command -v python3)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run demo fast-model test lint smoke bench clean

run: .venv-app/.installed
	.venv-app/bin/python app.py $(ARGS)

# The tiny model needs torch to be built, so the demo runs in the full environment (which has the
# serving packages too); it is rebuilt when training/tiny.py changes.
demo: out/demo/onnx/config.json
	.venv/bin/python app.py --model out/demo/onnx $(ARGS)

out/demo/onnx/config.json: .venv/.installed training/tiny.py
	.venv/bin/python -m training.tiny out/demo

# What cqa.hub.FAST_EXPORT_COMMAND says, in .venv (needs the Hub; the export's parity gate takes minutes).
fast-model: .venv/.installed
	.venv/bin/python -m training.export tryolabs/long-t5-tglobal-base-blogpost-cqa out/fast --quantize int8
	@echo 'Serve it: make run ARGS="--model out/fast" (int8 by default), or push out/fast to the Hub and set MODEL_ID.'

test: .venv/.installed
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	@command -v chromium >/dev/null || bash .ci/install-chromium || echo "no chromium: the browser tests will be skipped"
	.venv/bin/python -m pytest $(PYTEST_ARGS)

lint: .venv/.installed
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

smoke: .venv/.installed
	.venv/bin/python -m training.pipeline --smoke --output out/smoke

bench: .venv/.installed
	.venv/bin/python bench/latency.py --context-tokens 1024 4096 7000

.venv-app/.installed: requirements.txt
	test -x .venv-app/bin/python || $(PYTHON) -m venv .venv-app
	.venv-app/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

.venv/.installed: requirements.txt training/requirements.txt
	test -x .venv/bin/python || $(PYTHON) -m venv .venv
	.venv/bin/python -m pip install -q --disable-pip-version-check -r training/requirements.txt
	touch $@

clean:
	rm -rf .venv .venv-app .pytest_cache out
