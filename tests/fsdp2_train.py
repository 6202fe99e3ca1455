"""Run by tests/test_train_distributed.py, alone or under ``torchrun``: SFT steps of vlaser's model, data and
loss, sharded with torch's FSDP2 (``fully_shard`` on the layer classes the shipped recipes/fsdp config names)
when there are several processes, then the full state gathered and saved with ``save_checkpoint``.

Usage: fsdp2_train.py OUT GLOBAL_BATCH STEPS FSDP_CONFIG -- VLASER_TRAIN_FLAGS...
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from vlaser.data.collator import SFTCollator
from vlaser.data.dataset import SFTDataset
from vlaser.data.meta import check_datasets
from vlaser.model.loading import load_model
from vlaser.train.args import parse_args
from vlaser.train.saving import save_checkpoint
from vlaser.train.sft import data_config


def shard(model, config_path: str) -> None:
    """``fully_shard`` each module of the config's ``transformer_layer_cls_to_wrap`` classes, then the root."""
    classes = set(json.loads(Path(config_path).read_text())["transformer_layer_cls_to_wrap"])
    for module in model.modules():
        if type(module).__name__ in classes:
            fully_shard(module)
    fully_shard(model)


def main(out: Path, global_batch: int, steps: int, config_path: str, flags: list[str]) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    model_args, data_args, args = parse_args(flags)
    model, tokenizer = load_model(model_args.model_name_or_path, dtype=torch.float32, device="cpu")
    dataset = SFTDataset(data_args.meta_path, tokenizer, data_config(model, data_args, args.seed),
                         check_datasets(data_args.meta_path))
    if world > 1:
        shard(model, config_path)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    collator, share, losses = SFTCollator(tokenizer.pad_token_id), global_batch // world, []
    for step in range(steps):
        first = (step * global_batch + rank * share) % len(dataset)
        batch = collator([dataset[(first + i) % len(dataset)] for i in range(share)])
        batch = {k: v for k, v in batch.items() if k not in ("skipped", "n_tokens")}
        loss = model(**batch, loss_reduction=data_args.loss_reduction).loss
        loss.backward()  # FSDP2 averages the gradients over the processes (reduce-scatter)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        logged = loss.detach().clone()
        if world > 1:
            dist.all_reduce(logged)
        losses.append(logged.item() / world)
    state = (get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
             if world > 1 else None)
    if rank == 0:
        save_checkpoint(model, tokenizer, out, layout="original", source=Path(model_args.model_name_or_path),
                        state_dict=state)
        (out / "losses.json").write_text(json.dumps(losses))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    split = sys.argv.index("--")
    out, batch, steps, config = sys.argv[1:split]
    main(Path(out), int(batch), int(steps), config, sys.argv[split + 1:])
