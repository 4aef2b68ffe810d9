# Set-up and entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
# cargo builds the compiled helper (cas/native) at install; rustup puts it here.
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: install demo lint test services bench aiflow-envs

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[all,test]'

demo: install
	bash scripts/demo.sh

services:
	bash .ci/services.sh

# ruff over the whole checkout, with the rules of pyproject.toml ([tool.ruff]); `make test` runs it
# before the suite, so a finding fails CI.
lint:
	$(PYTHON) -m ruff check .

# The AIFlow environments (tests/aiflow/test_e2e.py) and MinIO (tests/trust/test_minio.py), whose
# tests run last, build in the background while the rest of the suite runs; the tests wait for the
# builds' locks. The suite runs on one pytest worker per CPU, at most 4 (pytest-xdist), each test
# file on one worker (a file's tests share its servers and fixtures, and each worker starts its own)
# but the AIFlow end-to-end tests, spread over the workers (tests/conftest.py).
test: install lint services
	mkdir -p tests/.cache
	$(PYTHON) -m tests.aiflow_envs > tests/.cache/aiflow-envs-build.log 2>&1 &
	bash tests/servers/build_minio.sh > tests/.cache/minio-build.log 2>&1 &
	$(PYTHON) -m pytest -q -n auto --maxprocesses 4 --dist loadgroup

bench: install
	$(PYTHON) benchmarks/run.py

# The real AIFlow environments of tests/aiflow/test_e2e.py (Python 3.7 + ai-flow 0.3.1, Python 3.8 +
# ai-flow-nightly, each with the bridge); the tests build them on first use, this builds them ahead.
aiflow-envs:
	$(PYTHON) -m tests.aiflow_envs
