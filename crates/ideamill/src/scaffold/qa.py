#!/usr/bin/env python3
"""Stage `qa` (a gate): run the item's tests.

The acceptance tests that the `tests` stage wrote (its output, on stdin with
the rest of the item's context) are written into the workspace first, as
test_acceptance.py, over whatever is there: the implementation can read them
but never weaken them. Then every test_*.py runs.

Exit 0 passes. Exit 1 rejects: what this prints goes back to `implement` as
feedback. Any other failure is an error that ideamill retries.
"""
import glob
import json
import os
import re
import subprocess
import sys

ACCEPTANCE = "test_acceptance.py"


def acceptance_tests(text):
    """The first fenced code block of `text`, else `text` if it is code.

    A first line that is only a file name (`test_acceptance.py`, as small
    models write it) is dropped: as code it would fail the import."""
    match = re.search(r"```[^\n]*\n(.*?)(?:```|\Z)", text, re.S)
    code = match.group(1) if match else (text if "import unittest" in text else None)
    if code:
        first, _, rest = code.partition("\n")
        if re.fullmatch(r"\s*[\w./-]+\.py\s*", first):
            code = rest
    return code


def foreign_names(code, idea):
    """Names the tests import from main that the idea never mentions (a
    small model may copy a prompt's example): such tests judge nothing."""
    names = []
    for line in re.findall(r"^\s*from main import (.+)$", code, re.M):
        names += [n.strip(" ()") for n in line.split(",")]
    return [n for n in names if n and n != "*" and not re.search(r"\b%s\b" % re.escape(n), idea)]


context = json.loads(sys.stdin.read() or "{}")
idea = (context.get("item") or {}).get("text") or ""
written = (context.get("outputs") or {}).get("tests")
if written:
    code = acceptance_tests(written)
    foreign = foreign_names(code, idea) if code else []
    if foreign:
        print("The acceptance tests import %s, which the idea does not name; running the item's own tests only."
              % ", ".join(foreign), file=sys.stderr)
        code = None
        if os.path.lexists(ACCEPTANCE):
            os.unlink(ACCEPTANCE)
    if code:
        if os.path.lexists(ACCEPTANCE):
            os.unlink(ACCEPTANCE)
        with open(ACCEPTANCE, "w", encoding="utf-8") as f:
            f.write(code)
    elif not foreign:
        print("The acceptance tests had no code block; running the item's own tests only.", file=sys.stderr)
if not glob.glob("test_*.py") and not glob.glob("**/test_*.py", recursive=True):
    print("No tests found: write the tests in a file named test_main.py, in a fenced")
    print("code block whose opening line is: ```python test_main.py")
    sys.exit(1)
# -B: no __pycache__, so a main.py rewritten within the same second and at the
# same size as last round's is never run from last round's bytecode.
try:
    result = subprocess.run(
        [sys.executable, "-B", "-m", "unittest", "discover", "-q"],
        capture_output=True,
        text=True,
        timeout=100,
    )
except subprocess.TimeoutExpired:
    print("The tests did not finish within 100 seconds: look for an infinite loop or input().")
    sys.exit(1)
report = (result.stdout + result.stderr).strip()
if result.returncode == 0 and "Ran 0 tests" not in report:
    print("Tests passed.")
    print(report)
    sys.exit(0)
print("Tests failed:" if "Ran 0 tests" not in report else "No test ran:")
print(report[-4000:])
sys.exit(1)
