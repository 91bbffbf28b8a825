# mcpm-mobile: `make demo` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := build/demo
JOBS   ?= 2

.PHONY: venv demo test bench clean

$(BIN)/mcpm-mobile: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/mcpm-mobile

# The main job on an embedded default: a tiny MiniCPM generated deterministically (no weights can be downloaded).
demo: venv
	rm -rf $(DEMO)
	$(BIN)/mcpm-mobile dev tiny-checkpoint $(DEMO)/tiny-minicpm
	$(BIN)/mcpm-mobile quantize $(DEMO)/tiny-minicpm -o $(DEMO)/tiny-minicpm-q4f16_1 --quantization q4f16_1

test: venv
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile

bench: venv
	$(BIN)/python bench/run.py

clean:
	rm -rf build $(VENV) *.egg-info
