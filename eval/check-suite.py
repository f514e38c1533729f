#!/usr/bin/env python3
"""Check the evaluation suite (eval/suite.jsonl, eval/smoke.jsonl).

For every idea: the line is a JSON object with the expected keys, the id is
unique kebab-case, the tests import only the standard library and `main`, every
name they import from `main` is pinned in the idea (written `name(` or `name`
in backticks), and then, in a temporary directory:

  * reference/<id>.py as main.py + the tests as ideamill_hidden_tests.py must
    pass, run as `python3 -m unittest -q ideamill_hidden_tests`, within 2 s;
  * two wrong main.py files, which define every imported name but whose
    functions (and methods) return None, or raise NotImplementedError, must
    both fail: the tests have teeth.

smoke.jsonl entries must be identical to their suite.jsonl entries.

Usage: python3 eval/check-suite.py [--python PATH] [-v] [ID ...]
Exit status 0 when everything passes, 1 on any problem. Standard library only.
"""
import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EVAL_DIR = Path(__file__).resolve().parent
SUITE = EVAL_DIR / "suite.jsonl"
SMOKE = EVAL_DIR / "smoke.jsonl"
REFERENCE_DIR = EVAL_DIR / "reference"

# The hidden tests' file name in the workspace. It does not match unittest
# discovery's default pattern (test*.py), so a `unittest discover` run (the qa
# gate's) never picks it up, and it cannot collide with the model's own
# test_main.py.
HIDDEN_MODULE = "ideamill_hidden_tests"
TIMEOUT_SECONDS = 2.0
MIN_ASSERTS, MAX_ASSERTS = 4, 10

REQUIRED_KEYS = {"id": str, "idea": str, "tests": str}
OPTIONAL_KEYS = {"notes": str, "difficulty": str}
DIFFICULTIES = ("easy", "medium", "hard")
ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def load_jsonl(path, problems):
    """(line number, entry) for each line; shape problems go to `problems`."""
    entries = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        problems.append(f"{path.name}: cannot read: {e}")
        return entries
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path.name}:{number}"
        if not line.strip():
            problems.append(f"{where}: blank line")
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not JSON: {e}")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{where}: not a JSON object")
            continue
        bad = False
        for key, kind in REQUIRED_KEYS.items():
            if not isinstance(entry.get(key), kind) or not entry[key].strip():
                problems.append(f"{where}: missing or empty string key {key!r}")
                bad = True
        for key, kind in OPTIONAL_KEYS.items():
            if key in entry and not isinstance(entry[key], kind):
                problems.append(f"{where}: key {key!r} must be a string")
                bad = True
        unknown = set(entry) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS)
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
            bad = True
        if entry.get("difficulty", "easy") not in DIFFICULTIES:
            problems.append(f"{where}: difficulty must be one of {DIFFICULTIES}")
            bad = True
        if isinstance(entry.get("id"), str) and not ID_RE.match(entry["id"]):
            problems.append(f"{where}: id {entry['id']!r} is not kebab-case")
            bad = True
        if not bad:
            entries.append((number, entry))
    return entries


def static_checks(entry):
    """(names imported from main, assert count, problems) from the test text."""
    problems = []
    try:
        tree = ast.parse(entry["tests"])
    except SyntaxError as e:
        return [], 0, [f"tests do not parse: {e}"]
    names = []
    stdlib = getattr(sys, "stdlib_module_names", None)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                problems.append("tests use a relative import")
            elif node.module == "main":
                for alias in node.names:
                    if alias.name == "*":
                        problems.append("tests use `from main import *`: name the imports")
                    else:
                        names.append(alias.name)
            elif stdlib is not None and node.module.split(".")[0] not in stdlib:
                problems.append(f"tests import {node.module!r}, not in the standard library")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == "main":
                    problems.append("tests use `import main`: use `from main import name`")
                elif stdlib is not None and top not in stdlib:
                    problems.append(f"tests import {alias.name!r}, not in the standard library")
    if not names:
        problems.append("tests import nothing from main")
    if "unittest" not in entry["tests"]:
        problems.append("tests do not use unittest")
    for name in names:
        if not re.search(r"`" + re.escape(name) + r"[(`]", entry["idea"]):
            problems.append(f"idea does not pin the interface: no `{name}(...)` or `{name}` in it")
    if "main.py" not in entry["idea"]:
        problems.append("idea does not say main.py")
    asserts = sum(
        1
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr.startswith("assert")
    )
    if not MIN_ASSERTS <= asserts <= MAX_ASSERTS:
        problems.append(f"{asserts} assertions: want {MIN_ASSERTS} to {MAX_ASSERTS}")
    return names, asserts, problems


def stub_source(names, reference, mode):
    """A wrong main.py defining `names`: every function (and method) returns
    None (mode "none") or raises NotImplementedError (mode "raise")."""
    body = "return None" if mode == "none" else "raise NotImplementedError"
    defs = {
        node.name: node
        for node in reference.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }
    out = []
    for name in names:
        node = defs.get(name)
        if not isinstance(node, ast.ClassDef):
            out += [f"def {name}(*args, **kwargs):", f"    {body}", ""]
            continue
        bases = [ast.unparse(b) for b in node.bases]
        if any("Error" in b or "Exception" in b for b in bases):
            out += [f"class {name}(Exception):", "    pass", ""]
            continue
        out += [f"class {name}:", "    def __init__(self, *args, **kwargs):", "        pass"]
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name != "__init__":
                if any(ast.unparse(d) == "property" for d in item.decorator_list):
                    out.append("    @property")
                out += [f"    def {item.name}(self, *args, **kwargs):", f"        {body}"]
        out.append("")
    return "\n".join(out)


def run_tests(python, main_source, tests):
    """Run the hidden tests against main_source: (passed, ran, bad, seconds, output)."""
    with tempfile.TemporaryDirectory(prefix="ideamill-suite-") as tmp:
        Path(tmp, "main.py").write_text(main_source, encoding="utf-8")
        Path(tmp, HIDDEN_MODULE + ".py").write_text(tests, encoding="utf-8")
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONPATH", None)
        start = time.monotonic()
        try:
            proc = subprocess.run(
                [python, "-m", "unittest", "-q", HIDDEN_MODULE],
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired:
            return False, 0, 0, time.monotonic() - start, f"timed out after {TIMEOUT_SECONDS} s"
        seconds = time.monotonic() - start
    output = proc.stdout + proc.stderr
    ran = re.search(r"^Ran (\d+) tests?", output, re.M)
    ran = int(ran.group(1)) if ran else 0
    bad = sum(int(n) for n in re.findall(r"(?:failures|errors)=(\d+)", output))
    return proc.returncode == 0 and ran > 0, ran, bad, seconds, output


def check_idea(python, entry, verbose):
    """(problems, summary text) for one idea."""
    names, asserts, problems = static_checks(entry)
    ref_path = REFERENCE_DIR / f"{entry['id']}.py"
    if not ref_path.is_file():
        return problems + [f"no reference solution {ref_path.relative_to(EVAL_DIR)}"], ""
    ref_source = ref_path.read_text(encoding="utf-8")
    try:
        reference = ast.parse(ref_source)
    except SyntaxError as e:
        return problems + [f"reference does not parse: {e}"], ""
    defined = set()
    for node in reference.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
    for name in names:
        if name not in defined:
            problems.append(f"reference defines no top-level {name!r}")
    if problems:
        return problems, ""

    ok, ran, _, seconds, output = run_tests(python, ref_source, entry["tests"])
    if not ok:
        lines = output.strip().splitlines() or ["no output"]
        detail = "\n" + output.strip()[-3000:] if verbose else lines[-1]
        problems.append(f"reference does not pass its tests ({seconds:.2f} s): {detail}")
        return problems, ""
    summary = f"{ran:2d} tests {asserts:2d} asserts  ref {seconds:.2f}s  stub failures+errors:"
    for mode in ("none", "raise"):
        stub = stub_source(names, reference, mode)
        passed, stub_ran, bad, _, output = run_tests(python, stub, entry["tests"])
        if passed:
            problems.append(f"tests pass against a stub whose functions {'return None' if mode == 'none' else 'raise'}: no teeth")
        elif stub_ran and stub_ran != ran:
            problems.append(f"stub run ran {stub_ran} tests, reference run {ran}")
        summary += f" {mode} {bad if stub_ran else 'import'}"
    return problems, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="check only these ideas")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the tests (default: this one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the test output of failures")
    args = parser.parse_args()

    problems = []
    suite = load_jsonl(SUITE, problems)
    smoke = load_jsonl(SMOKE, problems)
    by_id = {}
    for number, entry in suite:
        if entry["id"] in by_id:
            problems.append(f"suite.jsonl:{number}: duplicate id {entry['id']!r}")
        by_id.setdefault(entry["id"], entry)
    smoke_ids = set()
    for number, entry in smoke:
        if entry["id"] in smoke_ids:
            problems.append(f"smoke.jsonl:{number}: duplicate id {entry['id']!r}")
        smoke_ids.add(entry["id"])
        if by_id.get(entry["id"]) != entry:
            problems.append(f"smoke.jsonl:{number}: {entry['id']!r} differs from its suite.jsonl entry (or is missing there)")
    if not smoke:
        problems.append("smoke.jsonl: no entries")
    for path in sorted(REFERENCE_DIR.glob("*.py")):
        if path.stem not in by_id:
            problems.append(f"reference/{path.name}: no idea with id {path.stem!r}")
    unknown = [i for i in args.ids if i not in by_id]
    if unknown:
        problems.append(f"no such ids: {', '.join(unknown)}")
    for p in problems:
        print(f"FAIL  {p}")

    counts = {}
    failed = 0
    width = max((len(i) for i in by_id), default=0)
    for ident, entry in by_id.items():
        if args.ids and ident not in args.ids:
            continue
        difficulty = entry.get("difficulty", "-")
        counts[difficulty] = counts.get(difficulty, 0) + 1
        idea_problems, summary = check_idea(args.python, entry, args.verbose)
        mark = "FAIL" if idea_problems else "ok  "
        smoke_mark = " smoke" if ident in smoke_ids else ""
        print(f"{mark}  {ident:<{width}}  {difficulty:<6}  {summary}{smoke_mark}")
        for p in idea_problems:
            print(f"        {p}")
        failed += bool(idea_problems)

    checked = sum(counts.values())
    by_difficulty = ", ".join(f"{d} {counts[d]}" for d in (*DIFFICULTIES, "-") if d in counts)
    print(
        f"{checked} ideas checked ({by_difficulty}), smoke {len(smoke)}: "
        + ("all passed" if not (failed or problems) else f"{failed} ideas failed, {len(problems)} other problems")
    )
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
