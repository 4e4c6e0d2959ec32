#!/usr/bin/env bash
# Static checks, as CI runs them: `mypy --strict gosse` (checked as Python
# 3.9, see [tool.mypy] in pyproject.toml) and `ruff check` (the rules are in
# [tool.ruff]).  The tools, the stubs and the typed libraries gosse imports go
# into a throwaway venv at pinned versions, so that a new release of one of
# them cannot fail CI overnight: bump the pins here on purpose.  The library
# pins are releases that still support Python 3.9 (mypy reads their source
# as 3.9 code).
#   bash .ci/lint.sh                   # exit 1 if either tool finds anything
#   LINT_VENV=/path bash .ci/lint.sh   # reuse (or keep) that venv
set -uo pipefail
cd "$(dirname "$0")/.."

pins=(
  mypy==1.20.2 ruff==0.17.6
  types-requests==2.33.0.20261030 urllib3==2.6.3
  werkzeug==3.1.9 redis==7.0.1
  flask==3.1.3 click==8.1.8 blinker==1.9.0 itsdangerous==2.2.0 jinja2==3.1.6
  markupsafe==3.0.3
)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
venv=${LINT_VENV:-$tmp/venv}
if [ ! -x "$venv/bin/mypy" ] || [ ! -x "$venv/bin/ruff" ]; then
  if ! python3 -m venv "$venv" >"$tmp/venv.log" 2>&1 \
      || ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}" \
           >>"$tmp/venv.log" 2>&1; then
    tail -n 5 "$tmp/venv.log"
    echo "lint: SKIPPED: could not make the venv with mypy and ruff (see above)"
    exit 0
  fi
fi

status=0
echo "lint: mypy --strict gosse"
"$venv/bin/mypy" --strict gosse || status=1
echo "lint: ruff check"
"$venv/bin/ruff" check || status=1
if [ "$status" -eq 0 ]; then
  echo "lint: mypy and ruff found nothing"
else
  echo "lint: FAILED (findings above)"
fi
exit "$status"
