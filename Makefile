# mcpm-mobile: `make demo` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := build/demo
JOBS   ?= 2

.PHONY: venv sysdeps demo test bench bench-bin clean

# Debian packages the checks need: clang (OpenCL C -> SPIR) and PoCL (an OpenCL CPU device) for the OpenCL
# checks; kotlinc and Gson to run our transcription of MLCChat's config loader; aapt and zipalign for the APK checks;
# g++ and the OpenCL headers for our OpenCL device for TVM's runtime (runtime/opencl) and Oclgrind (an OpenCL
# simulator) to run the whole Android model on it (docs/opencl.md).
SYSPKGS := clang pocl-opencl-icd ocl-icd-opencl-dev kotlin libgoogle-gson-java aapt zipalign g++ oclgrind
SYSCMDS := clang kotlinc aapt zipalign g++

$(BIN)/mcpm-mobile: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/mcpm-mobile

sysdeps:
	@missing=0; for c in $(SYSCMDS); do command -v $$c >/dev/null || missing=1; done; \
	if [ $$missing = 1 ] || ! [ -e /etc/OpenCL/vendors/pocl.icd ] || ! [ -e /usr/share/java/gson.jar ] \
	    || ! [ -e /usr/include/CL/cl.h ] || ! [ -e /usr/lib/oclgrind/liboclgrind-rt-icd.so ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSPKGS); \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSPKGS); fi; \
	fi

# The main job on an embedded default: a tiny MiniCPM generated deterministically (no weights can be downloaded).
demo: venv
	rm -rf $(DEMO)
	$(BIN)/mcpm-mobile dev tiny-checkpoint $(DEMO)/tiny-minicpm
	$(BIN)/mcpm-mobile quantize $(DEMO)/tiny-minicpm -o $(DEMO)/tiny-minicpm-q4f16_1 --quantization q4f16_1
	$(BIN)/mcpm-mobile build $(DEMO)/tiny-minicpm --target android -o $(DEMO)/dist
	$(BIN)/mcpm-mobile verify $(DEMO)/dist/android
	$(BIN)/mcpm-mobile compile $(DEMO)/tiny-minicpm-q4f16_1 --target host -o $(DEMO)/tiny-minicpm-host.so
	$(BIN)/mcpm-mobile run $(DEMO)/tiny-minicpm-q4f16_1 --lib $(DEMO)/tiny-minicpm-host.so --prompt "Hello" --max-tokens 16
	$(BIN)/mcpm-mobile check "Xiaomi 12 Pro" --preset minicpm-2b

test: sysdeps venv
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile

bench: venv
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-bin: venv
	$(BIN)/python bench/bin_input.py $(BENCH_ARGS)

clean:
	rm -rf build $(VENV) *.egg-info
