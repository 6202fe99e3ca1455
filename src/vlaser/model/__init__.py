"""Everything specific to InternVL3 checkpoints: layouts, conversion, preprocessing, templates, chat."""
