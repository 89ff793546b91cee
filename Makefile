# Set-up, data, tests and the demo. `make demo` and `make test` are all a new user needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install data test demo bench reproduce clean

install: $(STAMP)

# The stamp is rebuilt only when requirements.txt changes, so a second run installs nothing.
$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

data: data/digits/val

data/digits/val: data/make_digits.py | $(STAMP)
	$(BIN)/python data/make_digits.py

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python demo.py

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q tests

# The paper's comparison on Fashion-MNIST (README "Reproduction results"; Debian's dataset-fashion-mnist package).
reproduce: $(STAMP) data/fashion/val
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m reproduction.reproduce

data/fashion/val: data/make_fashion_mnist.py | $(STAMP)
	$(BIN)/python data/make_fashion_mnist.py

# The CPU benchmarks of README's Performance section (about 8 minutes on 2 cores).
bench: $(STAMP)
	$(BIN)/python bench/bench_model.py
	$(BIN)/python bench/bench_data.py
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/bench_search.py

clean:
	rm -rf checkpoints scratch_checkpoints runs nni-experiments search_output demo_output reproduce_output data/digits \
		data/fashion data/cache
