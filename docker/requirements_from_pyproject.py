"""Print pyproject.toml's dependencies (plus the named extras), one per line, for `pip install -r`.

The image installs exactly the pins of `make install` without keeping a second list: this reads them. A
replacement (`torch==2.13.0+cpu`) takes the place of the dependency of the same name, for a build that cannot
have the pinned release (docker/build-image.sh: no CPU build of the torch pin within reach).
Usage: python requirements_from_pyproject.py pyproject.toml [extra1,extra2] [replacement ...]
"""

import re
import sys
import tomllib


def name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", requirement.strip()).group()).lower()


with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
extras = [e.strip() for e in (sys.argv[2] if len(sys.argv) > 2 else "").split(",") if e.strip()]
missing = [e for e in extras if e not in project.get("optional-dependencies", {})]
if missing:
    sys.exit(
        f"pyproject.toml has no extra(s) {missing}; it has {sorted(project.get('optional-dependencies', {}))}"
    )
requirements = list(project["dependencies"])
for extra in extras:
    requirements += project["optional-dependencies"][extra]
replacements = {name(r): r for r in sys.argv[3:]}
unknown = set(replacements) - {name(r) for r in requirements}
if unknown:
    sys.exit(f"no dependency to replace for {sorted(unknown)}")
print("\n".join(replacements.get(name(r), r) for r in requirements))
