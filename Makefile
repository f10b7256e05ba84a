# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test thorough docs validate bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-install only when the package metadata changes; the editable install makes
# source edits visible without it.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[all,dev,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gcref compare

# The tests' arrays are small: BLAS threads cost more than they save on few cores.
test: $(STAMP)
	OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest

# The reliability bar: every property at 10,000 examples (hours; not CI). Record the
# run in tests/README.md.
thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
		$(PY) -m pytest -p no:cacheprovider --durations=20

# The documentation site from docs/ and the docstrings; warnings are errors.
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

validate: $(STAMP)
	$(PY) -m validation --all

bench: $(STAMP)
	$(PY) benchmarks/per_example_norms.py
	$(PY) benchmarks/model_measures.py
	$(PY) benchmarks/penalties.py --quick
	$(PY) benchmarks/jax_measures.py --quick

clean:
	rm -rf $(VENV) build *.egg-info docs/_build docs/api
