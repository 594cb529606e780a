"""Print pyproject.toml's dependencies (plus the named extras), one per line, for `pip install -r`.

The image installs exactly the pins of `make install` without keeping a second list: this reads them.
Usage: python requirements_from_pyproject.py pyproject.toml [extra1,extra2]
"""

import sys
import tomllib

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
print("\n".join(requirements))
