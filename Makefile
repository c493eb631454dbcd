# `make test` and `make demo` do all the set-up on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
WORKDIR ?= work

.PHONY: test check demo install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The fast lane for development: no multi-node Ray, browser, PostgreSQL or end-to-end sweeps.
check: $(STAMP)
	$(PY) -m pytest -q -m "not cluster and not browser and not postgresql and not slow"

# The embedded sweep: local Ray, SQLite MLflow store and leaderboard in $(WORKDIR); digits data and
# the demo backbone are generated there the first time. Run it again and it resumes (nothing reruns).
demo: $(STAMP)
	$(VENV)/bin/alorectl sweep demo --workdir $(WORKDIR)
	$(VENV)/bin/alorectl leaderboard --backbone demo --workdir $(WORKDIR)

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache
