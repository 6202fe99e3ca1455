#!/usr/bin/env bash
# Every GPU check the open issues name, in the order a short GPU window should run them, as one command:
#   bash bench/gpu_checks.sh [OUT]       (OUT: where the logs go, default gpu-checks/)
# Each step has its own time limit and the script goes on when one fails, so a short window yields what it can.
# 1. the gpu-marked tests (varlen kernel, static engine + CUDA graphs, ...)
# 2. SFT: 2B chunked vs plain, then 8B (issue 18)
# 3. decoding: the engine (static cache + CUDA graphs) vs batch_chat and the chat loop, 2B shapes (issue 17)
# 4. VLA: chunks/s with the 2B shapes, bf16 (issue 19)
set -u
OUT=${1:-gpu-checks}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "   exit $? after $((SECONDS - start)) s; last lines:"
    tail -n 6 "$OUT/$name.log" | sed 's/^/   /'
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
step gpu_tests 240 python -m pytest -q -m gpu tests/
step sft_2b_chunked 150 python bench/gpu_train_throughput.py --size 2b --loss chunked
step sft_2b_plain 150 python bench/gpu_train_throughput.py --size 2b --loss plain
step sft_8b_chunked 240 python bench/gpu_train_throughput.py --size 8b --loss chunked
step decode_2b_engine 240 python bench/gpu_eval_throughput.py --engine
step decode_2b_fp32_answers 240 python bench/gpu_eval_throughput.py --engine --dtype float32 --items 16
step vla_2b 120 python bench/bench_vla.py --size 2b --device cuda --dtype bfloat16
echo "logs in $OUT/"
