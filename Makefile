# Two commands from a fresh clone (Python 3.11 and the package registries; Debian/Ubuntu: apt-get install make):
#   make run    set up on first use, then the app on the shipped production model (http://127.0.0.1:7860)
#   make test   set up on first use, test tools included, then the whole test suite
#   make test-fast   the same without the heavy tests (browser, servers, Ray, retraining): the inner loop
# Both run on two pytest-xdist workers; `make test` keeps each file on one worker, as its module fixtures expect.
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: run test test-fast

run: $(VENV)/installed
	$(PYTHON) app.py

test: $(VENV)/installed-test
	$(PYTHON) -m pytest -q -n 2 --dist loadfile

test-fast: $(VENV)/installed-test
	$(PYTHON) -m pytest -q -n 2 -m "not heavy"

$(VENV)/installed: requirements.txt requirements-serve.txt requirements-train.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/installed-test: $(VENV)/installed requirements-bulk.txt requirements-test.txt
	$(VENV)/bin/pip install --quiet -r requirements-bulk.txt -r requirements-test.txt
	touch $@
