"""``vlaser eval run | score | report | import | suite``."""

from __future__ import annotations

from pathlib import Path

from vlaser.cli.args import add_decode_options, at_least, decode_options
from vlaser.errors import UserInputError
from vlaser.eval.registry import IMPORTED, LAYOUTS, PROMPT_STYLES, REGISTRY, SERVERS


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserInputError(f"--option expects key=value, got {pair!r}")
        out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def _common(p) -> None:
    p.add_argument("--benchmark", required=True, metavar="NAME", help=f"one of: {', '.join(REGISTRY)}")
    p.add_argument("--data", required=True, type=Path, help="the benchmark's folder in its official layout")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--protocol", default=None,
                   help="the benchmark's protocol (default: the one Vlaser's numbers came from); "
                        "an unknown name lists the ones it has")
    p.add_argument("--option", action="append", default=[], help="benchmark option key=value (repeatable)")
    p.add_argument("--pictures", type=at_least(0), default=50, help="pictures of the first N items (0: none)")


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate on embodied benchmarks")
    verbs = p.add_subparsers(dest="eval_verb", required=True)
    r = verbs.add_parser("run", help="ask a model every item (resumable), then score")
    _common(r)
    _model_and_settings(r)
    r.add_argument("--workers", type=at_least(0), default=0,
                   help="processes that read and tile still images ahead of generation (0: this process); the "
                        "answers are the same for any number")
    s = verbs.add_parser("score", help="score a predictions file ({'id', 'response'} per line) from anywhere")
    _common(s)
    s.add_argument("--predictions", required=True, type=Path)
    rep = verbs.add_parser("report", help="one table across run folders, beside the paper's Table 1")
    rep.add_argument("outs", nargs="+", type=Path)
    imp = verbs.add_parser("import", help="read results a benchmark's own harness wrote (EmbodiedBench)")
    imp.add_argument("source", choices=["embodiedbench"])
    imp.add_argument("results_dir", type=Path, help="EmbodiedBench's running/ folder, an env folder or one run")
    imp.add_argument("--out", required=True, type=Path)
    imp.add_argument("--env", default=None, choices=["eb_alfred", "eb_habitat", "eb-alf", "eb-hab"])
    _add_suite(verbs)


def _add_suite(verbs) -> None:
    """``eval suite``: the model's source as ``eval run``; a data root instead of one benchmark's folder."""
    su = verbs.add_parser("suite", help="every benchmark found under a data root (resumable), one table beside the "
                                        "paper's Table 1")
    _model_and_settings(su)
    su.add_argument("--data-root", required=True, type=Path,
                    help="a folder holding one folder per benchmark, named as the benchmark: "
                         + "; ".join(f"{name}/ ({layout})" for name, layout in LAYOUTS.items())
                         + f"; {', '.join(IMPORTED)}: imported into --out with 'vlaser eval import'")
    su.add_argument("--out", required=True, type=Path, help="output folder: OUT/<benchmark>/ runs and the table")
    su.add_argument("--benchmarks", default=None,
                    help=f"comma-separated names from: {', '.join([*REGISTRY, *IMPORTED])} (default: every "
                         "registered benchmark, plus eb_alfred/eb_habitat when imported into OUT)")
    su.add_argument("--protocol", action="append", default=[], metavar="BENCHMARK=PROTOCOL",
                    help="a benchmark's protocol other than its default (repeatable)")
    su.add_argument("--option", action="append", default=[], metavar="BENCHMARK.KEY=VALUE",
                    help="a benchmark option (repeatable), e.g. vlabench.prompt_file=PATH")
    su.add_argument("--pictures", type=at_least(0), default=50, help="pictures of the first N items (0: none)")
    su.add_argument("--average-partial", action="store_true",
                    help="include partial columns (--limit left items out) in the averages beside the paper's "
                         "(default: left out, as a score over a few items is not comparable)")


def _model_and_settings(p) -> None:
    """The model's source and the settings that override a protocol's (``eval run`` and ``eval suite``)."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint directory (local transformers backend)")
    source.add_argument("--api-base", help="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    p.add_argument("--api-model", help="model name on the server (with --api-base)")
    p.add_argument("--concurrency", type=at_least(1), default=8, help="parallel requests (with --api-base)")
    p.add_argument("--api-engine", choices=SERVERS, default="auto",
                   help="with --api-base: the server's engine, which decides where the images go in the request so "
                        "that it builds InternVL's prompt (default: ask the server's /models)")
    p.add_argument("--system-message", default=None,
                   help="with --api-base: the system message to send (default InternVL's; '' sends none)")
    p.add_argument("--batch-size", type=at_least(1), default=8,
                   help="items generated together (default 8); answers do not depend on it")
    p.add_argument("--limit", type=at_least(1), default=None,
                   help="only the first K items (of each benchmark); the scores are marked partial")
    p.add_argument("--max-num", dest="max_tiles", type=at_least(1), default=None,
                   help="tiles per image (default: the protocol's)")
    p.add_argument("--max-new-tokens", type=at_least(1), default=None, help="default: the protocol's")
    p.add_argument("--min-new-tokens", type=at_least(0), default=None, help="default: the protocol's")
    p.add_argument("--frames", type=at_least(1), default=None,
                   help="frames per video item (default: the protocol's; recorded in run.json)")
    p.add_argument("--prompt", default=None, choices=PROMPT_STYLES,
                   help="prompt builder (default: the protocol's): vlaser = the seed's point prefix")
    p.add_argument("--dtype", default="auto",
                   help="with --model: auto (the checkpoint's dtype), bfloat16, float16 or float32")
    p.add_argument("--device", default=None,
                   help="with --model: cpu, cuda, cuda:N or auto (default: cuda when available)")
    add_decode_options(p)


def _backend(args):
    """The backend ``--model`` or ``--api-base`` names (``eval run`` and ``eval suite``)."""
    from vlaser.eval.backends import OpenAIBackend, TransformersBackend

    if args.api_base:
        if not args.api_model:
            raise UserInputError("--api-base needs --api-model (the model name the server knows)")
        return OpenAIBackend(args.api_base, args.api_model, concurrency=args.concurrency,
                             system_message=args.system_message, server=args.api_engine)
    return TransformersBackend(args.model, dtype=args.dtype, device=args.device, **decode_options(args))


def _suite(args) -> int:
    """Names, protocols, options and settings are checked before the model loads; exit 1 when a benchmark
    failed or none ran."""
    from vlaser.eval.suite import OVERRIDES, check, run_suite, scoped, select

    names = select([n.strip() for n in args.benchmarks.split(",") if n.strip()] if args.benchmarks else None)
    protocols, options = scoped(args.protocol, "--protocol"), scoped(args.option, "--option")
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    check(names, overrides, protocols, options)
    table = run_suite(_backend(args), args.data_root, args.out, names, batch_size=args.batch_size, limit=args.limit,
                      protocols=protocols, options=options, pictures=args.pictures,
                      average_partial=args.average_partial, echo=lambda line: print(line, flush=True), **overrides)
    return 1 if table["failed"] or not table["columns"] else 0


def run(args) -> int:
    from vlaser.eval.benchmark import get_benchmark
    from vlaser.eval.report import cross_run_table

    if args.eval_verb == "report":
        print(cross_run_table(args.outs))
        return 0
    if args.eval_verb == "suite":
        return _suite(args)
    if args.eval_verb == "import":
        from vlaser.eval.embodiedbench import import_results

        for env, metrics in import_results(args.results_dir, args.out, env=args.env).items():
            print(f"{env}: {metrics['score']:.4f} over {metrics['n_scored']} episodes -> {args.out / env}/report.md")
        return 0
    benchmark = get_benchmark(args.benchmark, args.protocol, **_options(args.option))
    if args.eval_verb == "run":
        from vlaser.eval.runner import run as run_eval

        backend = _backend(args)
        metrics = run_eval(benchmark, backend, args.data, args.out, batch_size=args.batch_size, limit=args.limit,
                           prompt=args.prompt, max_tiles=args.max_tiles, max_new_tokens=args.max_new_tokens,
                           pictures=args.pictures, frames=args.frames, min_new_tokens=args.min_new_tokens,
                           workers=args.workers)
    else:
        from vlaser.eval.runner import read_predictions_once, score

        predictions, repeated = read_predictions_once(args.predictions)
        metrics = score(benchmark, benchmark.load(args.data), predictions, args.out, args.pictures,
                        duplicate_ids=repeated)
    print(f"{metrics['benchmark']}: {metrics['score']:.4f} over {metrics['n_scored']} items -> {args.out}/report.md")
    return 0
