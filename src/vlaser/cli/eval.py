"""``vlaser eval run | score | report``."""

from __future__ import annotations

from pathlib import Path

from vlaser.cli.args import at_least


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--option expects key=value, got {pair!r}")
        out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def _common(p) -> None:
    p.add_argument("--benchmark", required=True, help="registered name, e.g. where2place")
    p.add_argument("--data", required=True, type=Path, help="the benchmark's folder in its official layout")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--protocol", default=None,
                   help="the benchmark's protocol (default: the one Vlaser's numbers came from); see its docstring")
    p.add_argument("--option", action="append", default=[], help="benchmark option key=value (repeatable)")
    p.add_argument("--pictures", type=at_least(0), default=50, help="pictures of the first N items (0: none)")


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate on embodied benchmarks")
    verbs = p.add_subparsers(dest="eval_verb", required=True)
    r = verbs.add_parser("run", help="ask a model every item (resumable), then score")
    _common(r)
    source = r.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint directory (local transformers backend)")
    source.add_argument("--api-base", help="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    r.add_argument("--api-model", help="model name on the server (with --api-base)")
    r.add_argument("--concurrency", type=at_least(1), default=8, help="parallel requests (with --api-base)")
    r.add_argument("--system-message", default=None,
                   help="with --api-base: the system message to send (default InternVL's; '' sends none)")
    r.add_argument("--batch-size", type=at_least(1), default=8)
    r.add_argument("--max-num", type=at_least(1), default=None, help="tiles per image (default: the protocol's)")
    r.add_argument("--max-new-tokens", type=at_least(1), default=None, help="default: the protocol's")
    r.add_argument("--min-new-tokens", type=at_least(0), default=None, help="default: the protocol's")
    r.add_argument("--frames", type=at_least(1), default=None,
                   help="frames per video item (default: the benchmark's; recorded in run.json)")
    r.add_argument("--limit", type=at_least(1), default=None, help="only the first K items")
    r.add_argument("--prompt", default=None, choices=["vlaser", "official"],
                   help="prompt builder (default: the protocol's): vlaser = the seed's point prefix")
    r.add_argument("--dtype", default="auto")
    r.add_argument("--device", default=None)
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


def run(args) -> int:
    from vlaser.eval.benchmark import get_benchmark
    from vlaser.eval.report import cross_run_table

    if args.eval_verb == "report":
        print(cross_run_table(args.outs))
        return 0
    if args.eval_verb == "import":
        from vlaser.eval.embodiedbench import import_results

        for env, metrics in import_results(args.results_dir, args.out, env=args.env).items():
            print(f"{env}: {metrics['score']:.4f} over {metrics['n_scored']} episodes -> {args.out / env}/report.md")
        return 0
    benchmark = get_benchmark(args.benchmark, args.protocol, **_options(args.option))
    if args.eval_verb == "run":
        from vlaser.eval.backends import OpenAIBackend, TransformersBackend
        from vlaser.eval.runner import run as run_eval

        if args.api_base:
            if not args.api_model:
                raise ValueError("--api-base needs --api-model (the model name the server knows)")
            backend = OpenAIBackend(args.api_base, args.api_model, concurrency=args.concurrency,
                                    system_message=args.system_message)
        else:
            backend = TransformersBackend(args.model, dtype=args.dtype, device=args.device)
        metrics = run_eval(benchmark, backend, args.data, args.out, batch_size=args.batch_size, limit=args.limit,
                           prompt=args.prompt, max_num=args.max_num, max_new_tokens=args.max_new_tokens,
                           pictures=args.pictures, frames=args.frames, min_new_tokens=args.min_new_tokens)
    else:
        from vlaser.eval.runner import read_predictions, score

        metrics = score(benchmark, benchmark.load(args.data), read_predictions(args.predictions), args.out,
                        args.pictures)
    print(f"{metrics['benchmark']}: {metrics['score']:.4f} over {metrics['n_scored']} items -> {args.out}/report.md")
    return 0
