"""Render and validate the manifests (see check.sh).

Renders with `kubectl kustomize` when kubectl is installed, else with the
small renderer below, which supports what these manifests use: resources,
components, namespace, labels, images, replicas and strategic-merge patches
(maps merged, lists of named items merged by name, `$patch: delete`, null
deletes a key).
"""

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ["base", "overlays/postgres-workers", "overlays/postgres-workers-bubblewrap",
           "overlays/sqlite-single"]
# The oldest release whose schemas have every field used here (hostUsers,
# procMount for user-namespaced pods).
K8S_VERSION = os.environ.get("K8S_VERSION", "1.33.0")


def fail(msg):
    sys.stderr.write(f"check.py: {msg}\n")
    sys.exit(1)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def key(obj):
    return (obj.get("kind"), obj.get("metadata", {}).get("name"))


def merge(base, patch):
    """A strategic merge, enough for these manifests."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(
            isinstance(x, dict) and "name" in x for x in base + patch):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            for i, have in enumerate(out):
                if have["name"] == item["name"]:
                    out[i] = merge(have, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def render_own(directory):
    kfile = os.path.join(directory, "kustomization.yaml")
    (k,) = load_all(kfile)
    objs = []
    for r in k.get("resources", []):
        path = os.path.join(directory, r)
        objs += render_own(path) if os.path.isdir(path) else load_all(path)
    for c in k.get("components", []):
        objs = apply(objs, render_component(os.path.join(directory, c)), directory)
    return apply(objs, k, directory)


def render_component(directory):
    (k,) = load_all(os.path.join(directory, "kustomization.yaml"))
    k["_dir"] = directory
    return k


def apply(objs, k, directory):
    directory = k.get("_dir", directory)
    for p in k.get("patches", []):
        for patch in load_all(os.path.join(directory, p["path"])):
            target = key(patch)
            if patch.get("$patch") == "delete":
                objs = [o for o in objs if key(o) != target]
                continue
            hits = [i for i, o in enumerate(objs) if key(o) == target]
            if len(hits) != 1:
                fail(f"patch {p['path']} matches {len(hits)} objects")
            objs[hits[0]] = merge(objs[hits[0]], patch)
    for r in k.get("replicas", []):
        for o in objs:
            if key(o) == ("Deployment", r["name"]):
                o["spec"]["replicas"] = r["count"]
    for img in k.get("images", []):
        for o in objs:
            for c in o.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name, _, tag = c["image"].rpartition(":")
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"
    for lab in k.get("labels", []):
        for o in objs:
            o.setdefault("metadata", {}).setdefault("labels", {}).update(lab["pairs"])
    if "namespace" in k:
        for o in objs:
            if o["kind"] != "Namespace":
                o["metadata"]["namespace"] = k["namespace"]
    return objs


def render(target):
    directory = os.path.join(HERE, target)
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True)
        if out.returncode != 0:
            fail(f"kubectl kustomize {target}: {out.stderr.strip()}")
        return [d for d in yaml.safe_load_all(out.stdout) if d is not None]
    return render_own(directory)


def validate(validator, objs, label):
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, o in enumerate(objs):
            path = os.path.join(tmp, f"{i:02}-{o['kind']}-{o['metadata']['name']}.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(o, f)
            files.append(path)
        out = subprocess.run([validator, "--strict", "--no-warn", "-k", K8S_VERSION] + files,
                             capture_output=True, text=True)
        if out.returncode != 0:
            fail(f"{label} does not validate:\n{out.stdout}{out.stderr}")
    sys.stderr.write(f"{label}: {len(objs)} objects valid (Kubernetes {K8S_VERSION}, strict)\n")


def summary(target, objs):
    """What the test compares with the binary."""
    containers, configs = [], {}
    # In one order whichever renderer made them (kubectl sorts by kind).
    for o in sorted(objs, key=key):
        if o["kind"] == "ConfigMap" and "ideamill.toml" in o.get("data", {}):
            configs[o["metadata"]["name"]] = o["data"]["ideamill.toml"]
        pod = o.get("spec", {}).get("template", {}).get("spec")
        if not pod:
            continue
        for c in pod["containers"]:
            probes = {}
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                if kind in c:
                    probes[kind] = c[kind]["httpGet"]
            containers.append({
                "target": target, "workload": o["metadata"]["name"], "container": c["name"],
                "args": c.get("args", []), "ports": c.get("ports", []), "probes": probes,
                "grace": pod.get("terminationGracePeriodSeconds", 30),
                "security": c.get("securityContext", {}), "pod_security": pod.get("securityContext", {}),
            })
    return {"target": target, "containers": containers, "configs": configs,
            "kinds": sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)}


def main():
    validator, args = sys.argv[1], sys.argv[2:]
    out = []
    for target in TARGETS:
        objs = render(target)
        validate(validator, objs, target)
        out.append(summary(target, objs))
    extras = [os.path.join(HERE, "secrets.example.yaml"), os.path.join(HERE, "scaling/hpa.yaml")]
    for path in extras:
        validate(validator, load_all(path), os.path.relpath(path, HERE))
    if args == ["--json"]:
        json.dump(out, sys.stdout, indent=1)
    elif args:
        fail(f"unknown arguments {args}; the only one is --json")


main()
