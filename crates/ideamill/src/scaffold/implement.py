#!/usr/bin/env python3
"""Stage `implement`: write code and its tests into the item's workspace.

A placeholder that runs without a model. It runs in the item's own folder;
QA feedback from an earlier round, if any, is in context["feedback"].
"""
import json
import os
import sys

context = json.load(sys.stdin)
idea = context["item"]["text"]
plan = context["outputs"].get("outline", "")


def write(path, text):
    # Written whole, then renamed, so a crash never leaves half a file.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


write("idea.py", f'"""{idea!r}"""\n\nPLAN = {plan!r}\n\n\ndef describe():\n    return {idea!r}\n')
write(
    "test_idea.py",
    "import unittest\n\nimport idea\n\n\n"
    "class IdeaTest(unittest.TestCase):\n"
    "    def test_describe(self):\n"
    f"        self.assertEqual(idea.describe(), {idea!r})\n\n\n"
    "if __name__ == '__main__':\n    unittest.main()\n",
)
print(f"Wrote idea.py and test_idea.py (round {context['round']}).")
if context.get("feedback"):
    print("Addressed QA feedback:", context["feedback"].strip().splitlines()[0])
