"""`snakemake --lint`, with one lint answered by design rather than by code.

The workflow runs in ONE environment (the venv of `make setup`, or the conda env of environment.yml with the
package installed into it); rules carry no per-rule `conda:` env, because a notebook needs the `microface` package
and its Jupyter kernel, which an env that Snakemake builds from a copied YAML file does not have. So the lint
"Specify a conda environment or container for each rule" is expected; every other lint fails the check.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ACCEPTED = ("Specify a conda environment or container for each rule",)


def main() -> int:
    snakemake = Path(sys.executable).with_name("snakemake")
    result = subprocess.run([str(snakemake), "--lint"], capture_output=True, text=True)
    text = result.stdout + result.stderr
    lints = re.findall(r"^\s+\* (.+?):\s*$", text, flags=re.MULTILINE)
    other = [lint for lint in lints if not lint.startswith(ACCEPTED)]
    if other or (result.returncode != 0 and not lints):
        print(text)
        print(f"snakemake --lint: {len(other)} lint(s) besides the accepted ones: {sorted(set(other))}")
        return 1
    print(f"snakemake --lint: {len(lints)} accepted lint(s) ({ACCEPTED[0]!r}), nothing else")
    return 0


if __name__ == "__main__":
    sys.exit(main())
