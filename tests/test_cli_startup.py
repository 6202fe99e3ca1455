"""The command line answers at once: help, ``--version`` and usage errors import neither torch nor transformers
(``bench/bench_cli_startup.py`` measures the time). ``vlaser train`` and ``vlaser vla train`` are the exception:
their help lists transformers' ``TrainingArguments`` flags and their flags are parsed by ``HfArgumentParser``
(issue 29: the VLA's arguments extend ``TrainingArguments`` as SFT's do), which only transformers can give."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vlaser.cli import build_parser

HEAVY = ("torch", "transformers")

#: usage errors: an unknown verb, no verb, a bad value, a missing required flag, a flag the verb does not take
ERRORS = [["nosuch"], [], ["eval", "run", "--benchmark", "x", "--limit", "0"], ["serve", "--port", "x"],
          ["eval", "score", "--benchmark", "b", "--data", "d", "--out", "o", "--predictions", "p", "--bogus"],
          ["chat", "--model"]]
TRAINING = (["train", "--help"], ["vla", "train", "--help"])  #: TrainingArguments' flags: transformers gives them

#: each argv, then the heavy modules imported so far, in one fresh interpreter (``main`` exits on each)
PROBE = """
import json, sys
from vlaser.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit:
        pass
    print(json.dumps([argv, [m for m in {heavy!r} if m in sys.modules]]), file=sys.__stderr__, flush=True)
"""


def _help_commands(parser=None, prefix=()) -> list[list[str]]:
    """``[..., "--help"]`` for the command and every subcommand under it, read from the parser itself."""
    parser = parser or build_parser()
    out = [[*prefix, "--help"]]
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in action.choices.items():
            out += _help_commands(sub, (*prefix, name))
    return out


def _probe(argvs: list[list[str]]) -> list[tuple[list[str], list[str]]]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(argvs)],
                          capture_output=True, text=True, timeout=300)
    rows = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("[[")]
    assert len(rows) == len(argvs), done.stderr[-3000:]
    return [(argv, heavy) for argv, heavy in rows]


def test_help_version_and_usage_errors_import_neither_torch_nor_transformers():
    helps = [argv for argv in _help_commands() if argv not in TRAINING]
    assert ["--help"] in helps and ["eval", "run", "--help"] in helps and ["vla", "quickstart", "--help"] in helps
    argvs = [["--version"], *helps, *ERRORS]
    heavy = [(argv, modules) for argv, modules in _probe(argvs) if modules]
    assert not heavy, f"first to import {HEAVY}: {heavy[0]}"  # the first is the one that did it


def test_version_is_the_installed_packages(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"vlaser {version('vlaser')}\n"


def test_the_public_names_import_on_first_use():
    import vlaser

    assert set(vlaser.__all__) <= set(dir(vlaser))
    for name in vlaser.__all__:
        assert getattr(vlaser, name) is getattr(sys.modules[vlaser._EXPORTS[name]], name), name
    with pytest.raises(AttributeError, match="no_such_name"):
        vlaser.no_such_name  # noqa: B018
