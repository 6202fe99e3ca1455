"""The offline quickstart: synthetic embodied scenes, a tiny InternVL3, SFT, evaluation and a report."""
