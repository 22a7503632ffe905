# Two commands on a fresh machine:  `make demo` (offline, the built-in shapes-world model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel this project is developed with; use e.g. `make TORCH=torch demo` to let pip pick a build for your machine.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test test-slow clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/break-a-scene world scenes --out runs/demo-scenes --num 1 --seed 0 --overwrite
	$(BIN)/break-a-scene extract runs/demo-scenes/scene-000 --model builtin:shapes --out runs/demo --overwrite
	$(BIN)/break-a-scene generate runs/demo "a photo of <asset0> on a checkered background" \
		"a photo of <asset1> on a striped background" "a photo of <asset0> and <asset1> on a plain background" \
		--num-images 4 --steps 25 --guidance 4 --overwrite
	@echo "demo done: the scene in runs/demo-scenes/scene-000/, attention maps in runs/demo/attention/, images in runs/demo/samples/"

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The slow tests (the attention mechanism over seeds, the GPU script on the CPU, torch.compile, tests that start
# real processes, the whole browser session, SDXL's resume, exports and editing, world train's resume and --init,
# world bench): opt-in, run by CI.
test-slow: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow

clean:
	rm -rf runs $(VENV)
