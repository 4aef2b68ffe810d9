# Set-up and entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3

.PHONY: install demo test services bench

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[all,test]'

demo: install
	bash scripts/demo.sh

services:
	bash .ci/services.sh

test: install services
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/run.py
