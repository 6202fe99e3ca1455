"""``vlaser data preview``: the exact tokenised samples training would see, one JSON line each."""

from __future__ import annotations

import contextlib
import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="inspect SFT data")
    verbs = p.add_subparsers(dest="data_verb", required=True)
    pv = verbs.add_parser("preview", help="print tokenised samples with the supervised spans marked")
    pv.add_argument("--meta", "--meta_path", dest="meta", required=True, help="meta JSON")
    pv.add_argument("--model", required=True, help="checkpoint whose tokenizer and image settings apply")
    pv.add_argument("--n", type=int, default=5, help="how many samples (default 5)")
    pv.add_argument("--out", help="write JSON lines here instead of stdout")
    pv.set_defaults(passthrough=[])  # data flags as for vlaser train: --max_dynamic_patch 6 --use_thumbnail True


def mark_supervised(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """The rendered sample with each supervised span wrapped in ``[[`` ``]]``; image tokens collapsed."""
    out, span, supervised = [], [], False
    for token, label in zip(input_ids, labels):
        is_sup = label != -100
        if is_sup != supervised and span:
            text = tokenizer.decode(span)
            out.append(f"[[{text}]]" if supervised else text)
            span = []
        supervised = is_sup
        span.append(token)
    if span:
        text = tokenizer.decode(span)
        out.append(f"[[{text}]]" if supervised else text)
    rendered = "".join(out)
    while "<IMG_CONTEXT><IMG_CONTEXT>" in rendered:
        rendered = rendered.replace("<IMG_CONTEXT><IMG_CONTEXT>", "<IMG_CONTEXT>")
    return rendered


def run(args) -> int:
    from transformers import HfArgumentParser

    from vlaser.data.dataset import SFTDataset
    from vlaser.model.loading import load_model
    from vlaser.train.args import DataTrainingArguments, translate_legacy
    from vlaser.train.sft import data_config

    (data_args,) = HfArgumentParser(DataTrainingArguments).parse_args_into_dataclasses(
        args=["--meta_path", args.meta, *translate_legacy(args.passthrough)])
    model, tokenizer = load_model(args.model, dtype="float32", device="cpu")
    dataset = SFTDataset(args.meta, tokenizer, data_config(model, data_args))
    with open(args.out, "w") if args.out else contextlib.nullcontext(sys.stdout) as stream:
        for index in range(min(args.n, len(dataset))):
            item = dataset[index]
            ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
            line = {"id": item["id"], "dataset": item["dataset"], "line": item["line"], "tiles": item["tiles"],
                    "n_tokens": len(ids), "n_supervised": sum(label != -100 for label in labels),
                    "text": mark_supervised(tokenizer, ids, labels), "input_ids": ids, "labels": labels,
                    "skipped": [str(s) for s in item["skipped"]]}
            stream.write(json.dumps(line, ensure_ascii=False) + "\n")
    for skip in dataset.load_skips:
        print(f"skipped: {skip}", file=sys.stderr)
    return 0
