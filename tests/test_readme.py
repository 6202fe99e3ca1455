"""The README's set-up commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command(readme: str, label: str) -> str:
    match = re.search(rf"^(.+?)\s+# {label}\b", readme, re.MULTILINE)
    assert match, f"README has no command marked '# {label}'"
    return match.group(1).strip()


def test_ci_runs_the_readme_install_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    install, test = _command(readme, "install"), _command(readme, "test")
    assert install == 'pip install torch==2.13.0 && pip install -e ".[dev]"'
    assert "pip install --quiet torch==2.13.0" in ci and 'pip install --quiet -e ".[dev]"' in ci
    assert test in ci
