# SSL Studio: `make run` opens the main job, `make test` runs the test suite.
# Both create .venv on first use and install the project into it (editable).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export QT_QPA_PLATFORM ?= $(if $(DISPLAY)$(WAYLAND_DISPLAY),,offscreen)

.PHONY: run test test-learning bench bench-methods clean-venv screenshots

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/ssl-studio --preset quick_cpu --data shapes

# Two pytest workers (pytest-xdist), one torch thread each: the suite is mostly short CPU training.
TEST_WORKERS ?= 2

test: $(VENV)/.installed-test
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal

# Every method's learning check (kNN beats the untrained network), minutes each: not in make test.
test-learning: $(VENV)/.installed-test
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal --learning-extended tests/test_learning.py

# Benchmarks (JSON in bench/results/, device named). Installs the bench extra (lightly 1.6.0, the anchor).
bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]' || echo "lightly not installable: the anchor runs are skipped"
	$(PY) bench/run.py --out bench/results

# Per-method throughput against lightly 1.6.0 (DINO, MAE, SimMIM, seven ResNet methods); CPU: smoke sizes.
bench-methods: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]' || echo "lightly not installable: the anchor runs are skipped"
	$(PY) bench/methods.py --out bench/results

# The README's screenshots, made by the studio's scripted mode (offscreen, a few minutes on a CPU).
screenshots: $(VENV)/.installed
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/ssl-studio --run quick_cpu --steps 60 --screenshot docs/img/studio-simclr.png --quit
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/ssl-studio --run docs/img/mae_shapes_cpu.yaml --steps 200 --tab reconstructions --screenshot docs/img/studio-mae.png --quit
	QT_QPA_PLATFORM=offscreen $(VENV)/bin/ssl-studio --run docs/img/dino_shapes_cpu.yaml --steps 60 --tab attention --screenshot docs/img/studio-dino.png --quit

clean-venv:
	rm -rf $(VENV)
