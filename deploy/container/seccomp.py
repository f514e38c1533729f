#!/usr/bin/env python3
"""Print podman's default seccomp profile with what bubblewrap needs added.

    python3 deploy/container/seccomp.py > seccomp-bwrap.json
    podman run --security-opt seccomp=seccomp-bwrap.json --security-opt unmask=/proc/* ...

Podman's default (containers-common's seccomp.json, the argument, default
/usr/share/containers/seccomp.json) already allows unshare, clone and mount;
it allows sethostname and setdomainname only with CAP_SYS_ADMIN, which an
unprivileged container lacks. bubblewrap sets the host name of the stage's
own UTS namespace, so those two are allowed here: they change nothing
outside a namespace the caller owns. Everything else is left as it was.
"""

import json
import sys

NEEDED = ["sethostname", "setdomainname"]

path = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/containers/seccomp.json"
try:
    with open(path) as f:
        profile = json.load(f)
except (OSError, ValueError) as e:
    sys.exit(f"seccomp.py: cannot read the default profile {path}: {e}")
for rule in profile.get("syscalls", []):
    rule["names"] = [n for n in rule["names"] if n not in NEEDED]
profile["syscalls"] = [r for r in profile["syscalls"] if r["names"]]
profile["syscalls"].append({"names": NEEDED, "action": "SCMP_ACT_ALLOW"})
json.dump(profile, sys.stdout, indent=1)
sys.stdout.write("\n")
