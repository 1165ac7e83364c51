# Two entry points that work on a fresh Linux machine with Python 3.11, gcc and make:
#   make run   -- set up .venv and run the main job
#   make test  -- set up .venv with the test extras and run the whole suite
#   make bench -- time every path against the reference here (`make bench-quick`: a minute)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Everything installs from package registries; nothing is downloaded at run or test time.
export HF_HUB_OFFLINE := 1

.PHONY: run test install install-test bench bench-quick clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel

# The C++ extension llm._C builds against the installed torch: torch (pinned) and the build
# tools first, then the package without build isolation (which would fetch another torch).
install: $(VENV)/bin/activate
	$(PIP) install --quiet torch==2.13.0 setuptools wheel
	$(PIP) install --quiet --no-build-isolation -e .

install-test: $(VENV)/bin/activate
	$(PIP) install --quiet torch==2.13.0 setuptools wheel
	$(PIP) install --quiet --no-build-isolation -e ".[test]"

run: install
	$(PY) -m llm demo

# the whole suite, then each pytest-benchmark case once at its smoke size (nothing timed)
test: install-test
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q benchmarks --bench-size smoke --benchmark-disable

# every path against the torch reference on this machine; results in benchmarks/results/
bench: install-test
	$(PY) -m llm bench

bench-quick: install-test
	$(PY) -m llm bench --quick

clean:
	rm -rf $(VENV) build dist *.egg-info llm/_C*.so
