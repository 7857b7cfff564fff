# Two commands for a fresh machine:  `make demo` (install + run the demo)  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,encoders,slurm]'
	touch $@

install: $(VENV)/.installed

demo: install  ## run the embedded demo cohort end to end → results/report/index.html
	snakemake --cores $(CORES) --profile profiles/local

test: install  ## the whole test suite (unit + workflow); pytest exits non-zero on no tests
	$(PY) -m pytest

lint: install  ## ruff (complexity ≤ 12), snakefmt (.snakefmt.toml), Snakemake's linter, import-linter (pyproject.toml: stage layers)
	ruff check .
	snakefmt --config .snakefmt.toml --check .
	snakemake --lint
	lint-imports

clean:
	rm -rf results logs resources/demo .snakemake
