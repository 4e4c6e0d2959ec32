"""Sphinx configuration of the gosse documentation.

Build it (warnings are errors, every reference must resolve) and run its
examples with ``bash .ci/docs.sh``.
"""
import os
import sys

# Document the gosse of this checkout, not whatever is installed.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import gosse  # noqa: E402

project = "gosse"
author = "the gosse authors"
copyright = "2026, the gosse authors"
release = gosse.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
]

root_doc = "index"
exclude_patterns = ["_build"]
templates_path = []
html_static_path = []
html_theme = "alabaster"
html_title = f"gosse {release}"

# -- autodoc ---------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"      # types under Parameters, not in long signatures
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}

# -- nitpicky: every cross-reference must resolve ------------------------------------
nitpicky = True
# The inventories of Python and of the libraries gosse uses are not fetched
# (the build must work offline, with no intersphinx download), so references
# into them cannot resolve; gosse's own references are still checked.
nitpick_ignore_regex = [
    (r"py:.*", r"(typing|collections|queue|threading|socket|ssl|json|weakref|re|"
               r"datetime|io|logging|abc|types|email|http|urllib)(\..*)?"),
    (r"py:.*", r"(requests|urllib3|werkzeug|flask|django|redis|gunicorn)(\..*)?"),
    (r"py:class", r"(Any|Optional|Union|Callable|Iterable|Iterator|Mapping|"
                  r"Dict|List|Tuple|Sequence|Type|Set|FrozenSet|TextIO|NoneType|"
                  r"bytes|str|int|float|bool|dict|list|tuple|object|callable|"
                  r"BaseException|Exception|ValueError|LookupError|TypeError|EOFError|"
                  r"ShutDown|Response|Session|PreparedRequest|Request)"),
]

# Private type aliases and internal classes that appear in signatures.
nitpick_ignore = [
    ("py:class", name) for name in (
        "ConnectHook", "HeaderItems", "Headers", "Redactor", "SessionStream",
        "gosse.body.SessionStream", "gosse.session.Session", "Session",
    )
] + [("py:data", "_PASS_THROUGH")]     # a private constant the writer's docstring names

# -- doctest ------------------------------------------------------------------------
# ``sphinx-build -b doctest`` runs every ``>>>`` example of these pages.
doctest_global_setup = """
import logging
import gosse
logging.getLogger("werkzeug").setLevel(logging.WARNING)   # no request log lines
"""
