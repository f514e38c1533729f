#!/usr/bin/env python3
"""Stage `qa` (a gate): run the item's tests.

Exit 0 passes. Exit 1 rejects: what this prints goes back to `implement` as
feedback. Any other failure is an error that ideamill retries.
"""
import glob
import subprocess
import sys

sys.stdin.read()
if not glob.glob("test_*.py") and not glob.glob("**/test_*.py", recursive=True):
    print("No tests found: write the tests in a file named test_main.py, in a fenced")
    print("code block whose opening line is: ```python test_main.py")
    sys.exit(1)
try:
    result = subprocess.run(
        [sys.executable, "-m", "unittest", "discover", "-q"],
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
