# The two commands a fresh machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TREE := $(VENV)/.tree
# The editable install is setuptools' strict mode: a tree of links to host/, plugins/, steps/,
# agents/ and executors/ that type checkers and IDEs follow. A new module needs the tree made
# again, which `links` does whenever the set of modules changed.
EDITABLE := --config-settings editable_mode=strict

.PHONY: run test lint typecheck bench bench-peers links clean browser inspector postgres

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' $(EDITABLE)
	find host plugins steps agents executors -name '*.py' | sort > $(TREE)
	touch $(STAMP)

links: $(STAMP)
	@find host plugins steps agents executors -name '*.py' | sort > $(TREE).new
	@if ! cmp -s $(TREE).new $(TREE); then \
		echo "modules added or removed: making the editable install's links again"; \
		$(BIN)/pip install --quiet --no-deps -e . $(EDITABLE) && mv $(TREE).new $(TREE); \
	else rm -f $(TREE).new; fi

run: links
	$(BIN)/plait serve --config examples/plait.toml --workflows examples

lint: links
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy -p plait

# The browser tests (tests/web) drive Debian's Chromium through Playwright; Playwright's own
# browser download cannot be used. Installed only when missing (the machines run as root).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "installing chromium for the browser tests (tests/web)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

# The PostgreSQL store's tests run a throwaway cluster of Debian's PostgreSQL server per test
# session (tests/postgres_cluster.py: initdb, then postgres as the postgres user). Installed only
# when no initdb is found on PATH or in /usr/lib/postgresql/*/bin (the machines run as root).
postgres:
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "installing postgresql for the PostgreSQL store's tests (tests/postgres_cluster.py)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	fi

# Tests that time the host's answers run after the rest, alone: on two cores a test beside them
# would measure the machine, not plait.
# The MCP Inspector's CLI (npm) drives `plait serve --stdio` in tests/e2e/test_mcp_inspector.py;
# installed under .venv/node when npm is there (the tests say why they skip when it is not).
INSPECTOR := $(VENV)/node/node_modules/.bin/mcp-inspector
inspector: $(STAMP)
	@if [ ! -x $(INSPECTOR) ]; then \
		if command -v npm >/dev/null 2>&1; then \
			echo "installing the MCP Inspector CLI for tests/e2e/test_mcp_inspector.py"; \
			mkdir -p $(VENV)/node && cd $(VENV)/node && \
			npm install --silent --no-audit --no-fund @modelcontextprotocol/inspector@2.12.0; \
		else echo "npm not found: the MCP Inspector tests will be skipped"; fi; \
	fi

test: lint browser inspector postgres
	$(BIN)/pytest -q -rs -n 2 -m "not timing"
	$(BIN)/pytest -q -rs -m timing

# `make bench ARGS="--quick --only W1,W3"` passes its ARGS to bench/run.py.
bench: links
	$(BIN)/python bench/run.py $(ARGS)

# W1 and W3 in LangGraph and pydantic-graph beside plait's (bench/peers.py): installs the
# `peers` extra (pinned in pyproject.toml) into the venv first.
bench-peers: links
	$(BIN)/pip install --quiet -e '.[peers]' $(EDITABLE)
	$(BIN)/python bench/run.py --peers $(ARGS)

clean:
	rm -rf $(VENV) .plait build
