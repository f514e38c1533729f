#!/usr/bin/env python3
"""Stage `qa` (a gate): run the item's tests.

The acceptance tests that the `tests` stage wrote (its output, on stdin with
the rest of the item's context) are written into the workspace first, as
test_acceptance.py, over whatever is there: the implementation can read them
but never weaken them. Then every test_*.py runs.

A small model's tests are often wrong (a hand-worked expected value off),
the acceptance tests and the implementation's own alike. When the
`reference` stage wrote an independent main.py (from the idea alone, never
seeing any test), a test that fails on the item's code is set aside if it
fails the same way, with the same values, on the reference: two programs
written apart agree and the test does not. Every other failure rejects. A
test is never set aside on the implementation's word alone, so a wrong
implementation gains nothing from it unless the reference has the same bug.

`qa.py --trust-tests` never sets a test aside (the gate as it was
before the reference stage; `ideamill eval --compare` measures the two).

Exit 0 passes. Exit 1 rejects: what this prints goes back to `implement` as
feedback. Any other failure is an error that ideamill retries.
"""
import ast
import builtins
import glob
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile

ACCEPTANCE = "test_acceptance.py"
# Seconds for the item's tests, then the reference's: both well inside the
# stage's `timeout` (2m in the scaffold), so a program that never ends is
# feedback too, never a stage timeout that every retry would repeat.
TIMEOUT = 60
REFERENCE_TIMEOUT = 30
# Address space of one test run: a runaway program (its own or the
# reference's) gets a MemoryError there, which is feedback, instead of
# filling the sandbox's memory limit, which ends the whole gate as an error
# that would repeat the same way on every retry.
TEST_MEMORY = 1 << 30
# Larger test files are run as they are, never parsed for repairs.
REPAIR_MAX_BYTES = 1 << 20

# Runs unittest discovery in the current folder and writes every test's
# outcome, as {id: [status, one-line error, traceback]}, to argv[2].
RUNNER = r"""
import json, sys, traceback, unittest

class Result(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes = {}

    def record(self, test, status, err=None):
        line = "".join(traceback.format_exception_only(err[0], err[1])).strip() if err else ""
        if self.outcomes.get(test.id(), ["pass"])[0] == "pass":
            self.outcomes[test.id()] = [status, line, self._exc_info_to_string(err, test) if err else ""]

    def addSuccess(self, test):
        super().addSuccess(test)
        self.record(test, "pass")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.record(test, "fail", err)

    def addError(self, test, err):
        super().addError(test, err)
        self.record(test, "error", err)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self.record(test, "fail", err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.record(test, "skip")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.record(test, "fail")

suite = unittest.defaultTestLoader.discover(".", pattern=sys.argv[1])
result = unittest.TextTestRunner(stream=sys.stderr, resultclass=Result, verbosity=1).run(suite)
with open(sys.argv[2], "w", encoding="utf-8") as out:
    json.dump(result.outcomes, out)
"""


def fenced_code(text, marker=None):
    """The first fenced code block of `text` (or, when `text` has none but
    contains `marker`, all of it).

    A first line that is only a file name (`test_acceptance.py`, as small
    models write it) is dropped: as code it would fail the import."""
    match = re.search(r"```[^\n]*\n(.*?)(?:```|\Z)", text, re.S)
    code = match.group(1) if match else (text if marker and marker in text else None)
    if code:
        first, _, rest = code.partition("\n")
        if re.fullmatch(r"\s*[\w./-]+\.py\s*", first):
            code = rest
    return code


def foreign_names(code, idea):
    """Names the tests import from main that neither the idea nor the plan
    mention (a small model may copy a prompt's example): such tests judge
    nothing."""
    names = []
    for module, line in re.findall(r"^\s*from ([\w.]+) import (.+)$", code, re.M):
        if module == "main":
            names += [n.strip(" ()") for n in line.split(",")]
        elif module.split(".")[0] not in sys.stdlib_module_names:
            # Not the program under test: a module nobody asked for.
            names.append("from %s" % module)
    return [n for n in names if n and n != "*" and not re.search(r"\b%s\b" % re.escape(n), idea)]


def top_level_names(tree):
    """The names a module defines at its top level."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def unbound_names(tree):
    """The names a module reads but never binds anywhere (no assignment,
    def, class, import, argument or handler of that name): a conservative
    set, a name bound in any scope counts as bound."""
    read, bound = set(), set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
    return read - bound


def repair_missing_imports():
    """Adds `from main import ...` to a test file that uses names main.py
    defines without importing them (a small model's tests often do, and
    then every round ends in the same NameError whatever the code does).
    Regular files only, never through a symlink; what was repaired, one
    line each."""
    try:
        with open("main.py", "rb") as f:
            provided = top_level_names(ast.parse(f.read(REPAIR_MAX_BYTES + 1)))
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        # Hostile or absurd text (nesting deep enough to exhaust the
        # parser) is run as it is: the test run reports it.
        return []
    notes = []
    for test_file in sorted(glob.glob("test_*.py")):
        if os.path.islink(test_file) or not os.path.isfile(test_file):
            continue
        if os.path.getsize(test_file) > REPAIR_MAX_BYTES:
            continue
        try:
            with open(test_file, encoding="utf-8") as f:
                text = f.read()
            tree = ast.parse(text)
        except (OSError, SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError):
            continue
        missing = sorted(n for n in unbound_names(tree) & provided if n.isidentifier())
        if not missing:
            continue
        line = "from main import %s\n" % ", ".join(missing)
        # After a docstring and `from __future__` imports, which must come first.
        at = 0
        for node in tree.body:
            is_doc = isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant)
            if is_doc or (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
                at = node.end_lineno
            else:
                break
        lines = text.splitlines(keepends=True)
        if at and lines and not lines[at - 1].endswith("\n"):
            lines[at - 1] += "\n"
        lines.insert(at, line)
        try:
            fd = os.open(test_file, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(lines))
        except OSError:
            continue
        notes.append("Repaired %s: it used %s from main.py without importing it (added `%s`)."
                     % (test_file, ", ".join(missing), line.strip()))
    return notes


def run_tests(folder, pattern, timeout=TIMEOUT):
    """Every test's outcome in `folder`, and the runner's own report; the
    outcomes are None when the run crashed or timed out."""
    scratch = tempfile.mkdtemp(prefix="qa-")
    out = os.path.join(scratch, "outcomes.json")
    report = ""
    try:
        # -B: no __pycache__, so a main.py rewritten within the same second
        # and at the same size as last round's never runs as last round's.
        result = subprocess.run(
            [sys.executable, "-B", "-c", RUNNER, pattern, out],
            cwd=folder, capture_output=True, text=True, timeout=timeout,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (TEST_MEMORY, TEST_MEMORY)),
        )
        report = (result.stdout + result.stderr).strip()
        with open(out, encoding="utf-8") as f:
            return json.load(f), report
    except subprocess.TimeoutExpired:
        return None, "The tests did not finish within %d seconds: look for an infinite loop or input()." % timeout
    except (OSError, ValueError):
        return None, report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def aliases(reference):
    """For an idea that names no function, the reference (which sees only
    the idea) may name its one function differently from the tests: lines
    binding each name the tests import from main, and the reference lacks,
    to that function."""
    defined = set(re.findall(r"^(?:def|class)\s+(\w+)|^(\w+)\s*=", reference, re.M))
    defined = {a or b for a, b in defined}
    functions = re.findall(r"^def\s+(\w+)", reference, re.M)
    if len(functions) != 1:
        return ""
    wanted = set()
    for test_file in glob.glob("test_*.py"):
        with open(test_file, encoding="utf-8", errors="replace") as f:
            for line in re.findall(r"^\s*from main import (.+)$", f.read(), re.M):
                wanted.update(n.strip(" ()") for n in line.split(","))
    missing = sorted(n for n in wanted if n.isidentifier() and n not in defined)
    return "".join("\n%s = %s\n" % (n, functions[0]) for n in missing)


def disputed_by_reference(reference, failing):
    """The failing tests that fail the same way, with a message that shows
    values, on the independent reference implementation (run beside copies
    of the workspace's top-level test files, and nothing else of it)."""
    folder = tempfile.mkdtemp(prefix="qa-reference-")
    try:
        with open(os.path.join(folder, "main.py"), "w", encoding="utf-8") as f:
            f.write(reference + aliases(reference))
        for test_file in glob.glob("test_*.py"):
            if os.path.isfile(test_file) and not os.path.islink(test_file):
                shutil.copyfile(test_file, os.path.join(folder, test_file))
        outcomes, _ = run_tests(folder, "test_*.py", REFERENCE_TIMEOUT)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    disputed = {}
    for test, (status, line, _) in failing.items():
        # The implementation's own test that errors (a missing import, a
        # typo) is its to fix; only a failed assertion is disputed.
        if status == "error" and not test.startswith("test_acceptance."):
            continue
        theirs = (outcomes or {}).get(test)
        # A bare `AssertionError` shows no value: agreeing on it proves nothing.
        if theirs and theirs[:2] == [status, line] and ":" in line:
            disputed[test] = line
    return disputed


def main():
    context = json.loads(sys.stdin.read() or "{}")
    outputs = context.get("outputs") or {}
    # The names the tests may use: the idea's, or the plan's when the idea
    # names none (the plan is what the tests stage was given).
    idea = ((context.get("item") or {}).get("text") or "") + "\n" + (outputs.get("outline") or "")
    written = outputs.get("tests")
    if written:
        # Whatever was there is replaced, or removed when the tests judge nothing.
        if os.path.lexists(ACCEPTANCE):
            os.unlink(ACCEPTANCE)
        code = fenced_code(written, "import unittest")
        why = None if code else "had no code block"
        if code:
            try:
                compile(code, ACCEPTANCE, "exec")
                foreign = foreign_names(code, idea)
                if foreign:
                    why = "import %s, which neither the idea nor the plan names" % ", ".join(foreign)
            except (SyntaxError, ValueError) as e:
                # Nothing the implementation does could make them pass.
                why = "do not parse (%s)" % e
        if why:
            print("The acceptance tests %s; running the item's own tests only." % why, file=sys.stderr)
        else:
            with open(ACCEPTANCE, "w", encoding="utf-8") as f:
                f.write(code)
    if not glob.glob("test_*.py") and not glob.glob("**/test_*.py", recursive=True):
        print("No tests found: write the tests in a file named test_main.py, in a fenced")
        print("code block whose opening line is: ```python test_main.py")
        return 1

    repairs = repair_missing_imports()
    for note in repairs:
        print(note)
    outcomes, report = run_tests(".", "test_*.py")
    if outcomes is None:
        print("The tests did not run to the end:")
        print(report[-4000:])
        return 1
    if not outcomes:
        print("No test ran:")
        print(report[-4000:])
        return 1
    failing = {t: o for t, o in outcomes.items() if o[0] in ("fail", "error")}
    reference = fenced_code(outputs.get("reference") or "")
    trusted = "--trust-tests" in sys.argv[1:]
    disputed = {}
    if reference and failing and not trusted:
        disputed = disputed_by_reference(reference, failing)
    genuine = {t: o for t, o in failing.items() if t not in disputed}
    passed = sum(1 for o in outcomes.values() if o[0] == "pass")

    summary = "Ran %d tests: %d passed, %d failed" % (len(outcomes), passed, len(genuine))
    if disputed:
        summary += ", %d set aside" % len(disputed)
    if not genuine and passed:
        print("Tests passed. " + summary + ".")
        print("\n".join("  ok: " + t for t, o in sorted(outcomes.items()) if o[0] == "pass"))
    elif not genuine:
        print("No test passed. " + summary + ": write your own tests of the idea in test_main.py.")
    else:
        print("Tests failed. " + summary + ".")
    for test, (status, _, trace) in sorted(genuine.items()):
        print("\n%s: %s\n%s" % ("FAIL" if status == "fail" else "ERROR", test, trace.strip()[-1500:]))
    if disputed:
        print("\nSet aside: these tests fail the same way on an independent implementation")
        print("of the idea, so they are likely wrong:")
        for test, line in sorted(disputed.items()):
            print("  %s: %s" % (test, line))
    return 0 if not genuine and passed else 1


if __name__ == "__main__":
    sys.exit(main())
