#!/usr/bin/python3
"""A fake coding-agent CLI for the tests: installed under a preset's program
name (claude, codex, aider, gemini, opencode) it takes its prompt where that
CLI does, leaves a small program with passing tests in its working folder,
and prints its final message and usage in that CLI's output format. Under
any other name (`quiet-agent`) it prints plain text and no usage.

It also notes what it saw: `seen-<name>.txt` holds the prompt it got, and
`stdin-<name>.txt` whether its stdin was /dev/null, a pipe or else.
"""
import json
import os
import stat
import sys

name = os.path.basename(sys.argv[0])
args = sys.argv[1:]


def stdin_kind():
    st = os.fstat(0)
    if stat.S_ISCHR(st.st_mode) and os.path.samestat(st, os.stat("/dev/null")):
        return "devnull"
    if stat.S_ISFIFO(st.st_mode):
        return "pipe"
    return "other"


stdin = stdin_kind()
if name in ("claude", "codex") or (name == "quiet-agent" and stdin == "pipe"):
    prompt = sys.stdin.read()
elif name == "aider":
    prompt = open(args[args.index("--message-file") + 1], encoding="utf-8").read()
elif name == "gemini":
    prompt = args[args.index("-p") + 1]
else:
    prompt = args[-1] if args else ""

with open("seen-%s.txt" % name, "w", encoding="utf-8") as f:
    f.write(prompt)
with open("stdin-%s.txt" % name, "w", encoding="utf-8") as f:
    f.write(stdin)
with open("main.py", "w", encoding="utf-8") as f:
    f.write("def answer():\n    return 42\n")
with open("test_main.py", "w", encoding="utf-8") as f:
    f.write(
        "import unittest\nfrom main import answer\n\n\n"
        "class T(unittest.TestCase):\n    def test_answer(self):\n"
        "        self.assertEqual(answer(), 42)\n\n\n"
        "if __name__ == '__main__':\n    unittest.main()\n"
    )

message = "%s finished: wrote main.py" % name
if name == "claude":
    print(json.dumps({
        "type": "result", "subtype": "success", "is_error": False, "num_turns": 2,
        "result": message, "session_id": "fake", "total_cost_usd": 0.05,
        "usage": {"input_tokens": 100, "cache_creation_input_tokens": 20,
                  "cache_read_input_tokens": 30, "output_tokens": 40},
        "modelUsage": {"claude-fake": {"inputTokens": 100}},
    }))
elif name == "codex":
    for event in [
        {"type": "thread.started", "thread_id": "fake"},
        {"type": "turn.started"},
        {"type": "item.completed", "item": {"id": "i0", "type": "reasoning", "text": "hmm"}},
        {"type": "item.completed", "item": {"id": "i1", "type": "agent_message", "text": message}},
        {"type": "turn.completed", "usage": {"input_tokens": 1000, "cached_input_tokens": 0, "output_tokens": 500}},
    ]:
        print(json.dumps(event))
elif name == "aider":
    print("Aider v0.0 (fake)\n" + message)
    print("Tokens: 1.5k sent, 250 received. Cost: $0.02 message, $0.02 session.")
elif name == "gemini":
    print(json.dumps({
        "response": message,
        "stats": {"models": {"gemini-fake": {"tokens": {"prompt": 300, "candidates": 60, "thoughts": 0}}}},
    }))
elif name == "opencode":
    print(json.dumps({"type": "step_start", "part": {}}))
    print(json.dumps({"type": "text", "part": {"text": message}}))
    print(json.dumps({"type": "step_finish", "part": {"cost": 0.03, "tokens": {
        "input": 200, "output": 70, "reasoning": 0, "cache": {"read": 0, "write": 0}}}}))
else:
    print(message)
