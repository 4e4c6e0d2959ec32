#!/usr/bin/env bash
# Build the documentation (docs/) the way CI does: HTML with warnings as
# errors and nitpicky references, then every '>>>' example of the pages and
# the README run as doctests.  Sphinx goes into a throwaway venv, with the
# libraries gosse imports; gosse itself comes from this checkout (docs/conf.py
# puts it first on sys.path).
#   bash .ci/docs.sh            # output in docs/_build/
#   DOCS_VENV=/path bash .ci/docs.sh   # reuse (or keep) that venv
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
venv=${DOCS_VENV:-$tmp/venv}
if [ ! -x "$venv/bin/sphinx-build" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "sphinx>=7" "werkzeug>=2.0" "requests>=2.25" "flask>=2.0" "django>=3.2" "redis>=4.5"
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$venv/bin/sphinx-build" -q -W --keep-going -n -b html docs docs/_build/html
"$venv/bin/sphinx-build" -q -W --keep-going -n -b doctest docs docs/_build/doctest
"$venv/bin/python" -m doctest README.rst
echo "docs: HTML in docs/_build/html, doctests passed (docs and README)"
