#!/usr/bin/env bash
# The deployment matrix (tests/test_deploy_matrix.py, marker "matrix"):
# every server and proxy of the deployment table (docs/guides/gunicorn.rst), each checked
# end to end.  About 3 minutes on 2 cores.
#
# Needs nginx (Debian's package) and the test extra (waitress, pyuwsgi,
# sseclient-py, gevent).  gunicorn's eventlet worker is gone from gunicorn
# 23 on, so the eventlet rows run in a venv (system site packages plus
# gunicorn 22 and eventlet); if that venv cannot be made (no network), they
# are skipped with a message, not failed.  Every other missing piece fails
# under CI (env CI set).
#
#   bash .ci/matrix.sh [extra pytest arguments]
#
# SKIP_INSTALL=1 skips the apt and pip installs (a developer's machine that
# has them; pip install -e would repoint the editable install here).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq nginx >/dev/null
  fi
  "$python" -m pip install -q -e ".[test]" || exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/gosse-matrix.XXXXXX")"
trap 'rm -rf "$work"' EXIT
if "$python" -m venv --system-site-packages "$work/eventlet" >/dev/null 2>&1 \
   && "$work/eventlet/bin/python" -m pip install -q "gunicorn==22.0.0" "eventlet>=0.33" \
   && "$work/eventlet/bin/python" -W ignore -c "import eventlet, gunicorn.workers.geventlet"; then
  export GOSSE_EVENTLET_PYTHON="$work/eventlet/bin/python" GOSSE_REQUIRE_EVENTLET=1
else
  echo "matrix: no venv with gunicorn 22 + eventlet could be made: eventlet rows skipped" >&2
fi

PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" -m pytest -m matrix tests/test_deploy_matrix.py "$@"
rc=$?
[ $rc -eq 5 ] && rc=0   # no test selected (pytest's 5) is not a failure of the matrix
exit $rc
