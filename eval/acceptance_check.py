#!/usr/bin/env python3
"""How often are a model's acceptance tests right?

For each idea of a suite, asks the model (an OpenAI-compatible endpoint) to
write acceptance tests with a prompt template (the scaffold's tests.md by
default, the plan left empty), then runs them against the idea's reference
solution (eval/reference/ID.py). Right = the file imports and passes on the
reference. A gate that trusts such tests rejects correct code as often as
they are wrong; `ideamill eval` shows that as "gate rejected, passing".

    python3 eval/acceptance_check.py --url http://127.0.0.1:8091/v1 \\
        --model qwen-coder-1.5b --only clamp,digit-sum [--prompt FILE]

With `--set-aside`, it also asks for the scaffold's `reference` answer (an
independent main.py from the idea alone, reference.md) and counts, per test
method, what the QA gate (stages/qa.py) would do with a correct
implementation: a wrong test is set aside when it fails the same way on the
model's reference; a right test that the model's reference fails is one an
implementation sharing the reference's bug could have set aside.

The generated tests run unconfined, in a temporary folder: use it with a
model you trust, or inside a sandbox.
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import importlib.util
import tempfile
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SCAFFOLD = os.path.join(HERE, "..", "crates", "ideamill", "src", "scaffold")


def first_block(answer):
    """The first fenced block, less a first line that is only a file name."""
    match = re.search(r"```[^\n]*\n(.*?)(?:```|\Z)", answer, re.S)
    code = match.group(1) if match else ""
    first, _, rest = code.partition("\n")
    return rest if re.fullmatch(r"\s*[\w./-]+\.py\s*", first) else code


def ask(args, prompt):
    body = json.dumps({"model": args.model, "max_tokens": args.max_tokens,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    req = urllib.request.Request(args.url.rstrip("/") + "/chat/completions", body,
                                 {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=900))["choices"][0]["message"]["content"]


def load_gate():
    """The scaffold's stages/qa.py as a module, for its test runner."""
    path = os.path.join(SCAFFOLD, "qa.py")
    spec = importlib.util.spec_from_file_location("qa_gate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outcomes_on(gate, main_py, tests):
    """Each acceptance test method's [status, message] on `main_py`."""
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "main.py"), "w") as f:
            f.write(main_py)
        with open(os.path.join(d, "test_acceptance.py"), "w") as f:
            f.write(tests)
        outcomes, _ = gate.run_tests(d, "test_acceptance.py")
    return {t: o[:2] for t, o in (outcomes or {}).items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8091/v1")
    ap.add_argument("--model", required=True)
    ap.add_argument("--suite", default=os.path.join(HERE, "suite.jsonl"))
    ap.add_argument("--prompt", default=os.path.join(SCAFFOLD, "tests.md"))
    ap.add_argument("--set-aside", action="store_true",
                    help="also measure the gate's setting aside of wrong tests (see above)")
    ap.add_argument("--only", default="", help="comma-separated ids (default: all)")
    ap.add_argument("--max-tokens", type=int, default=800)
    args = ap.parse_args()
    cases = [json.loads(line) for line in open(args.suite) if line.strip()]
    if args.only:
        wanted = args.only.split(",")
        cases = [c for c in cases if c["id"] in wanted]
    template = open(args.prompt).read()
    ref_template = open(os.path.join(SCAFFOLD, "reference.md")).read()
    gate = load_gate()
    methods = collections.Counter()
    right = 0
    for case in cases:
        prompt = template.replace("{{ idea }}", case["idea"]).replace("{{ outputs.outline }}", "(none)")
        answer = ask(args, prompt)
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(HERE, "reference", case["id"] + ".py")) as f:
                reference = f.read()
            with open(os.path.join(d, "main.py"), "w") as f:
                f.write(reference)
            with open(os.path.join(d, "test_acceptance.py"), "w") as f:
                f.write(first_block(answer))
            run = subprocess.run([sys.executable, "-B", "-m", "unittest", "-q", "test_acceptance"],
                                 cwd=d, capture_output=True, text=True, timeout=60,
                                 stdin=subprocess.DEVNULL)
        ran = re.search(r"Ran (\d+) test", run.stderr)
        ok = run.returncode == 0 and ran is not None and ran.group(1) != "0"
        right += ok
        last = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ""
        print(f"{case['id']:24} {'right' if ok else 'WRONG'}  {last}", flush=True)
        if args.set_aside:
            model_ref = gate.fenced_code(ask(args, ref_template.replace("{{ idea }}", case["idea"])
                                                 .replace("{{ outputs.outline }}", "(none)"))) or ""
            on_truth = outcomes_on(gate, reference, first_block(answer))
            on_model = outcomes_on(gate, model_ref, first_block(answer))
            for test, outcome in on_truth.items():
                if outcome[0] == "pass":
                    methods["right"] += 1
                    methods["right, failed by the model reference"] += on_model.get(test, ["?"])[0] != "pass"
                else:
                    methods["wrong"] += 1
                    methods["wrong, set aside"] += on_model.get(test) == outcome and ":" in outcome[1]
            print(f"{'':24} methods so far: {dict(methods)}", flush=True)
    print(f"\nacceptance tests right on the reference: {right}/{len(cases)}")
    if args.set_aside:
        print(f"test methods: {methods['right']} right, {methods['wrong']} wrong on the reference solutions")
        print(f"wrong methods the gate sets aside for a correct implementation: "
              f"{methods['wrong, set aside']}/{methods['wrong']}")
        print(f"right methods the model's reference fails (could be set aside for an implementation "
              f"with the same bug): {methods['right, failed by the model reference']}/{methods['right']}")


if __name__ == "__main__":
    main()
