# Two commands do everything on a fresh machine:
#   make run    set up the lean serving environment (.venv-app) and start the chat app
#   make test   set up the full environment (.venv) and run ruff and the whole test suite
# Options: make run ARGS="--model out/smoke/onnx --port 7861"; make test PYTEST_ARGS="-k format"

PYTHON ?= $(shell command -v python3.11 || command -v python3)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test lint smoke bench clean

run: .venv-app/.installed
	.venv-app/bin/python app.py $(ARGS)

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
