"""The distributions as a user gets them: built with ``python -m build``,
checked with ``twine check``, the wheel installed (not editable) into a fresh
venv and its ``gosse demo`` served, the sdist's own suite collected.

These tests make venvs and build twice, so they take tens of seconds (about
40 s together on 2 cores, most of it pip); deselect them with
``-m "not packaging"``.  pip installs from the machine's configured index.
"""
import email
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import venv
import zipfile

import pytest
import requests

from servers import ROOT, free_port, wait_for_port

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(600)]

with open(os.path.join(ROOT, "gosse", "__init__.py"), encoding="utf-8") as _f:
    VERSION = re.search(r'__version__ = "([^"]+)"', _f.read()).group(1)


def run(cmd, timeout=300, **kwargs):
    """Run ``cmd``; fail the test with its output if it fails."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{cmd!r} exited {proc.returncode}:\n{proc.stdout[-4000:]}"
    return proc.stdout


def make_venv(path, *packages):
    """A fresh venv (no system site-packages) with ``packages`` pip-installed;
    returns its bin directory."""
    venv.create(path, with_pip=True, clear=True)
    bindir = os.path.join(path, "bin")
    if packages:
        run([os.path.join(bindir, "python"), "-m", "pip", "install", "-q",
             "--disable-pip-version-check", *packages], env=clean_env())
    return bindir


def clean_env(**extra):
    """The environment without this checkout on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(sdist path, wheel path), built from this checkout."""
    base = tmp_path_factory.mktemp("dists")
    tools = make_venv(str(base / "tools"), "build", "twine")
    out = base / "dist"
    # Built from a copy, so that the checkout gets no gosse.egg-info (which,
    # on PYTHONPATH, would tell pip that gosse is installed).
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", "_build"))
    # No --sdist/--wheel: build makes the sdist, then the wheel *from the
    # sdist*, so a file missing from the sdist breaks the wheel too.
    run([os.path.join(tools, "python"), "-m", "build", "--outdir", str(out), str(src)],
        env=clean_env())
    sdist, = out.glob("gosse-*.tar.gz")
    wheel, = out.glob("gosse-*.whl")
    assert sdist.name == f"gosse-{VERSION}.tar.gz" and f"-{VERSION}-" in wheel.name
    run([os.path.join(tools, "twine"), "check", "--strict", str(sdist), str(wheel)])
    return sdist, wheel


@pytest.fixture(scope="module")
def unpacked_sdist(dists, tmp_path_factory):
    sdist, _ = dists
    base = tmp_path_factory.mktemp("sdist")
    with tarfile.open(sdist) as tar:
        tar.extractall(base)
    root, = base.iterdir()
    return root


def test_wheel_metadata_and_contents(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta_name, = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(zf.read(meta_name))
    for needed in ("gosse/py.typed", "gosse/static/index.html", "gosse/static/demo.js",
                   "gosse/static/demo.css", "gosse/backplane/redis/__init__.py",
                   "gosse/contrib/gunicorn.py"):
        assert needed in names
    assert any(n.endswith("LICENSE") and ".dist-info/" in n for n in names)
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)
    assert meta["Version"] == VERSION
    assert meta["License"] == "MIT" or "MIT" in (meta.get("License-Expression") or "")
    assert meta["Requires-Python"] == ">=3.9"
    classifiers = set(meta.get_all("Classifier"))
    for c in [f"Programming Language :: Python :: 3.{m}" for m in range(9, 14)] + [
            "Typing :: Typed", "Framework :: Flask", "Framework :: Django",
            "Intended Audience :: Developers"]:
        assert c in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert meta["Author"] and meta["Keywords"]
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Documentation", "Changelog"} <= set(urls)
    extras = set(meta.get_all("Provides-Extra"))
    assert {"flask", "gunicorn", "django", "redis", "test"} <= extras


def test_sdist_is_complete(unpacked_sdist):
    root = unpacked_sdist
    for needed in ("LICENSE", "README.rst", "CHANGELOG.rst", "SECURITY.rst",
                   "MANIFEST.in", "setup.cfg", "pyproject.toml",
                   "tests/conftest.py", "tests/servers.py", "tests/broker_app.py",
                   "tests/data/vectors.json", "examples/llm_stream.py",
                   "examples/redis_multiworker/app.py", "docs/conf.py", "docs/index.rst",
                   "docs/api.rst", "docs/guides/client.rst", ".ci/docs.sh",
                   "gosse/static/index.html"):
        assert (root / needed).is_file(), f"{needed} is not in the sdist"
    ours = sorted(n for n in os.listdir(os.path.join(ROOT, "tests"))
                  if n.endswith((".py", ".json")) or n == "data")
    theirs = sorted(n for n in os.listdir(root / "tests")
                    if n.endswith((".py", ".json")) or n == "data")
    assert theirs == ours
    assert not list(root.rglob("__pycache__"))


def _collect(root):
    out = run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "",
               "-p", "no:cacheprovider"], cwd=str(root), env=clean_env(PYTHONPATH=str(root)),
              timeout=120)
    return {line for line in out.splitlines() if "::" in line}


def test_sdist_suite_collects(unpacked_sdist):
    """The sdist's tests are importable with their helpers: from the unpacked
    sdist alone, pytest collects without error exactly the tests this
    checkout has."""
    theirs = _collect(unpacked_sdist)
    assert theirs and theirs == _collect(ROOT)


def _serve_demo(cmd, cwd, env, port):
    """Start ``cmd``, fetch the demo's page, script and stats, stop it with
    SIGTERM; (exit status, output, page, script, stats)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        try:
            wait_for_port(port, proc, timeout=30)
        except (RuntimeError, TimeoutError) as exc:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{exc}:\n{proc.communicate(timeout=20)[0][-3000:]}")
        base = f"http://127.0.0.1:{port}"
        page = requests.get(base + "/", timeout=10)
        script = requests.get(base + "/static/demo.js", timeout=10)
        stats = requests.get(base + "/stats", timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    return proc.returncode, output, page, script, stats


def test_wheel_installs_and_serves_the_demo(dists, tmp_path):
    """A fresh venv with only the wheel (and its dependencies): ``gosse demo``
    serves its page and stops on SIGTERM with status 0."""
    _, wheel = dists
    bindir = make_venv(str(tmp_path / "venv"), str(wheel))
    where = run([os.path.join(bindir, "python"), "-c",
                 "import gosse; print(gosse.__version__, gosse.__file__)"],
                cwd=str(tmp_path), env=clean_env())
    version, path = where.split()
    assert version == VERSION
    assert path.startswith(str(tmp_path / "venv")), path   # not this checkout
    port = free_port()
    status, output, page, script, stats = _serve_demo(
        [os.path.join(bindir, "gosse"), "demo", "--port", str(port), "-q"],
        str(tmp_path), clean_env(), port)
    assert page.status_code == 200
    assert "demo.js" in page.text and "text/html" in page.headers["Content-Type"]
    assert script.status_code == 200 and "EventSource" in script.text
    assert stats.status_code == 200 and "sessions" in stats.text
    assert status == 0, output
    assert "gosse demo: stopped" in output


def test_demo_gunicorn_from_the_parent_folder_of_a_checkout(unpacked_sdist, tmp_path):
    """A checkout installed editable (``pip install -e gosse``), and
    ``gosse demo --gunicorn`` run from the folder that holds it: gunicorn puts
    the working directory first on sys.path, where the checkout's folder
    ``gosse/`` is a namespace package that shadows the editable one; the demo
    must still find its page."""
    parent = tmp_path / "parent"
    parent.mkdir()
    checkout = parent / "gosse"
    os.rename(unpacked_sdist, checkout)
    try:
        bindir = make_venv(str(tmp_path / "venv"), "-e", str(checkout), "gunicorn")
        port = free_port()
        status, output, page, script, stats = _serve_demo(
            [os.path.join(bindir, "gosse"), "demo", "--gunicorn", "--port", str(port)],
            str(parent), clean_env(), port)
    finally:
        os.rename(checkout, unpacked_sdist)  # for the other tests of the module
    assert "No such file or directory" not in output, output[-2000:]
    assert page.status_code == 200 and "demo.js" in page.text, output[-2000:]
    assert script.status_code == 200 and stats.status_code == 200
