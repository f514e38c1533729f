#!/usr/bin/env python3
"""Stage `qa` (a gate): run the item's tests.

Exit 0 passes. Exit 1 rejects: what this prints goes back to `implement` as
feedback. Any other failure is an error that ideamill retries.
"""
import subprocess
import sys

sys.stdin.read()
result = subprocess.run(
    [sys.executable, "-m", "unittest", "discover", "-q"],
    capture_output=True,
    text=True,
    timeout=100,
)
report = (result.stdout + result.stderr).strip()
if result.returncode == 0:
    print("Tests passed.")
    print(report)
    sys.exit(0)
print("Tests failed:")
print(report)
sys.exit(1)
