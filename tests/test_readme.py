"""The README's commands work as written: the set-up commands are the ones CI runs, the install script is sound
(and skips the system package manager where chromium is already there), and every ``vlaser`` command and flag
the README shows parses with the real command-line parser."""

import argparse
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import tomllib

from vlaser.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
INSTALL = ROOT / "install.sh"


def _command(readme: str, label: str) -> str:
    match = re.search(rf"^(.+?)\s+# {label}\b", readme, re.MULTILINE)
    assert match, f"README has no command marked '# {label}'"
    return match.group(1).strip()


def _code_block_commands(text: str, program: str) -> list[str]:
    """Every command line in the README's fenced code blocks that starts with ``program``, continuation lines
    (ending in a backslash) joined and trailing comments dropped."""
    commands, joined, in_block = [], "", False
    for line in text.splitlines():
        if line.startswith("```"):
            in_block, joined = not in_block, ""
            continue
        if not in_block:
            continue
        line = joined + re.sub(r"\s+#\s.*$", "", line).strip()
        if line.endswith("\\"):
            joined = line[:-1] + " "
            continue
        joined = ""
        if line.startswith(program + " "):
            commands.append(line)
    return commands


def _subparser(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser that the leading verb words select: ``eval run`` gives the parser of ``vlaser eval run``."""
    for word in words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
    return parser


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    install, test = _command(README, "install"), _command(README, "test")
    assert install == "./install.sh"
    assert re.search(r"^\./install\.sh\s", ci, re.MULTILINE), ".ci/run does not call ./install.sh"
    assert 'pip install --quiet --no-build-isolation "deepspeed>=0.15"' in ci  # DeepSpeed stays CI's own
    assert re.search(rf"^{re.escape(test)}\s", ci, re.MULTILINE), f".ci/run does not run the README's '{test}'"


def test_install_script_pins_cpu_torch_then_the_project():
    assert os.access(INSTALL, os.X_OK), "install.sh is not executable"
    subprocess.run(["bash", "-n", str(INSTALL)], check=True)
    text = INSTALL.read_text()
    torch, project = text.index("pip install torch==2.13.0"), text.index('pip install -e ".[dev]"')
    assert torch < project


def _fake_bin(tmp_path: Path, names: list[str]) -> Path:
    """A PATH folder of logging fakes for ``names`` plus the few real tools install.sh needs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "log"
    for name in names:
        (bin_dir / name).write_text(f'#!/bin/bash\necho "{name} $*" >> {log}\n')
        (bin_dir / name).chmod(0o755)
    for tool in ("dirname", "env"):
        (bin_dir / tool).symlink_to(subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True,
                                                   text=True, check=True).stdout.strip())
    return bin_dir


def _run_install(tmp_path: Path, names: list[str], id_prints: str = "0",
                 osmesa: bool = False) -> tuple[subprocess.CompletedProcess, list[str]]:
    """install.sh run with only fakes on PATH (``id -u`` prints ``id_prints``; ``ldconfig -p`` lists OSMesa when
    ``osmesa``): its result and the calls made."""
    bin_dir = _fake_bin(tmp_path, names)
    if osmesa:
        listing = "\tlibOSMesa.so.8 (libc6,x86-64) => /usr/lib/libOSMesa.so.8"
        (bin_dir / "ldconfig").write_text(f"#!/bin/bash\necho '{listing}'\n")
        (bin_dir / "ldconfig").chmod(0o755)
    (bin_dir / "id").write_text(f"#!/bin/bash\necho {id_prints}\n")
    (bin_dir / "id").chmod(0o755)
    done = subprocess.run(["/bin/bash", str(INSTALL)], env={"PATH": str(bin_dir)}, capture_output=True, text=True)
    log = tmp_path / "log"
    return done, log.read_text().splitlines() if log.exists() else []


def test_install_skips_apt_where_chromium_is_present(tmp_path):
    done, calls = _run_install(tmp_path, ["chromium", "python", "apt-get", "sudo"], osmesa=True)
    assert done.returncode == 0, done.stderr
    assert calls == ["python -m pip install torch==2.13.0", 'python -m pip install -e .[dev]']


@pytest.mark.parametrize(("uid", "prefix"), [("0", ""), ("1000", "sudo ")])
def test_install_apt_installs_chromium_where_missing(tmp_path, uid, prefix):
    done, calls = _run_install(tmp_path, ["python", "apt-get", "sudo"], id_prints=uid)
    assert done.returncode == 0, done.stderr
    install = "sudo env DEBIAN_FRONTEND=noninteractive apt-get" if prefix else "apt-get"  # the fake sudo runs nothing
    assert calls == [f"{prefix}apt-get update -qq", f"{install} install -y -qq chromium",
                     f"{install} install -y -qq libosmesa6",  # one update for both packages
                     "python -m pip install torch==2.13.0", "python -m pip install -e .[dev]"]


def test_install_without_a_package_manager_says_so(tmp_path):
    done, calls = _run_install(tmp_path, ["python"])
    assert done.returncode == 1
    assert "chromium is missing and there is no apt-get" in done.stderr
    assert calls == []  # nothing half installed


@pytest.mark.parametrize("line", _code_block_commands(README, "vlaser"))
def test_readme_vlaser_commands_parse(line):
    words = [w for w in shlex.split(line)[1:] if w != "..."]
    parser = build_parser()
    if "--help" in words:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_known_args(words)
        assert exit_.value.code == 0
        return
    if "..." in line:  # required arguments elided: every flag shown must still exist
        known = _options(_subparser(parser, words[:2]))
        assert all(w in known for w in words if w.startswith("--")), f"{line}: a flag its verb does not take"
        return
    args, extra = parser.parse_known_args(words)
    assert not extra or hasattr(args, "passthrough"), f"{line}: unrecognized arguments {extra}"


def test_readme_inline_vlaser_flags_exist():
    spans = re.findall(r"`(vlaser [^`]+)`", README)
    assert spans
    for span in spans:
        words = span.split()[1:]
        parser = _subparser(build_parser(), [w for w in words if not w.startswith("-")][:2])
        known = _options(parser)
        if any(isinstance(a, argparse._StoreAction) and a.dest == "passthrough" for a in parser._actions):
            continue
        for flag in re.findall(r"(?<![\w-])--?[a-z][\w-]*", span):
            assert flag in known, f"README's `{span}`: {parser.prog} has no {flag}"


def test_readme_pytest_markers_exist():
    markers = {m.split(":")[0] for m in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
               ["ini_options"]["markers"]}
    used = re.findall(r"pytest [^`\n]*-m \"([^\"]+)\"", README)
    assert used
    for expression in used:
        for name in re.findall(r"[a-z_]+", expression):
            assert name in markers | {"not", "and", "or"}, f"README's pytest -m \"{expression}\": no marker {name}"
