"""InternVL-format SFT data: meta JSON + JSONL readers, exact tokenisation and labels, batching."""
