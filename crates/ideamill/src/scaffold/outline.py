#!/usr/bin/env python3
"""Stage `outline`: turn the idea into a short plan.

A placeholder that runs without a model: replace it with your own program,
or with an LLM stage. The item arrives as JSON on stdin; print the result.
"""
import json
import sys

context = json.load(sys.stdin)
idea = context["item"]["text"]
print(f"# Plan for: {idea}\n")
print("1. Write a module `idea.py` whose `describe()` says what it does.")
print("2. Write `test_idea.py` that checks it.")
print("3. Run the tests (the qa stage does).")
