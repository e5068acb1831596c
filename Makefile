# The two commands of a fresh machine: `make demo` and `make test`.
# Both install what they need into .venv first (once, and again when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: demo test chaos soak check compose-config clean

demo: $(INSTALLED)  ## the whole flow on this machine, then a summary; Ctrl-C stops it
	$(BIN)/python -m demo $(ARGS)

test: $(INSTALLED)  ## the test suite against real PostgreSQL and Redis
	$(BIN)/pytest $(ARGS)

chaos: $(INSTALLED)  ## faults for 3 minutes (kills, outages, restarts, poison), then checks
	$(BIN)/python -m reliability.chaos $(ARGS)

soak: $(INSTALLED)  ## 30 minutes at a steady rate, watched minute by minute
	$(BIN)/python -m reliability.soak $(ARGS)

check: $(INSTALLED)  ## what CI checks besides the tests
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict outbox workers sidecar demo reliability

compose-config:  ## validate docker-compose.dev.yml offline
	docker-compose -f docker-compose.dev.yml config -q

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
