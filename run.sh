#!/bin/sh
# xfel-reduce set-up and entry points. Usage:
#   ./run.sh demo   install into .venv, simulate the demo beamtime and reduce it
#   ./run.sh test   install into .venv (with test extras) and run the test suite
# Extra arguments go to snakemake (demo) or pytest (test).
set -eu
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
CORES=${CORES:-2}

install() {
    if ! "$PY" -c "import venv, ensurepip" 2>/dev/null; then
        # Debian splits venv/ensurepip out of python3
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        else
            echo "python3 cannot create virtual environments: install python3-venv" >&2; exit 1
        fi
    fi
    stamp="$VENV/.installed-$(cat requirements.lock pyproject.toml run.sh | cksum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ]; then
        "$PY" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip uv
        # Byte-compile now: with PYTHONDONTWRITEBYTECODE set (common on clusters and
        # in containers) every workflow job would otherwise recompile numba, IPython,
        # scipy... from source, 2-3 s per job.
        "$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" -r requirements.lock
        "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps -e .
        "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
        touch "$stamp"
    fi
}

# Tools the workflow and tests start as subprocesses (papermill, extra-data-validate,
# snakemake) must come from this environment, whatever the caller's PATH.
case "$VENV" in /*) ;; *) VENV="$(pwd)/$VENV" ;; esac
PATH="$VENV/bin:$PATH"; export PATH

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    demo)
        install
        exec "$VENV/bin/snakemake" --cores "$CORES" --workflow-profile profiles/default "$@"
        ;;
    test)
        install
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    install)
        install
        ;;
    *)
        echo "usage: ./run.sh demo|test|install [args]" >&2; exit 2
        ;;
esac
