# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Everything they need is installed here: the virtualenv with the pinned packages
# (torch 2.14.1 / torchvision 0.29.1 come from this machine's disk) and buf from npm.

VENV   ?= .venv
PY     := $(VENV)/bin/python
# Reinstall when the dependency pins change.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
BUF    := node_modules/.bin/buf

.PHONY: setup demo test lint lint-protos codegen clean kubectl chromium

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --progress-bar off -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(STAMP) $(BUF)

demo: $(STAMP)
	$(VENV)/bin/contentembed demo

# buf breaking compares protos/ with the main branch's (the local branch `main`, or
# origin/main in a clone that checked out another branch only). On main itself it compares
# main with main and passes; on a branch it fails on a wire- or source-breaking change.
# ../.git works in a clone and in a git worktree (where .git is a file naming the gitdir).
BREAKING_BASE = $$(git rev-parse -q --verify refs/heads/main >/dev/null && echo branch=main || echo ref=origin/main)

lint-protos: $(BUF)
	cd protos && ../$(BUF) lint
	cd protos && ../$(BUF) breaking --against "../.git#$(BREAKING_BASE),subdir=protos"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/bandit -q -c pyproject.toml -r services clients bench protos
	$(VENV)/bin/hadolint deploy/Dockerfile

codegen: $(STAMP)
	$(PY) protos/codegen.py

# tests/deploy renders deploy/k8s with `kubectl kustomize`: on a machine without kubectl,
# Debian's kubernetes-client (kubectl 1.20, kustomize v2.0.3) is installed.
kubectl:
	@command -v kubectl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "kubectl not found: installing Debian's kubernetes-client"; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client; }

# tests/service/test_cli_search.py renders `search --html` pages in headless Chromium: on a
# machine without it, Debian's chromium is installed.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "chromium not found: installing Debian's chromium"; \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

test: setup lint-protos lint kubectl chromium
	$(PY) -m pytest

clean:
	rm -rf $(VENV) node_modules .contentembed
