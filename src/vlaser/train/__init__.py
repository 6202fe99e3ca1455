"""Second-stage SFT as InternVL's ``internvl_chat_finetune.py`` does it, on transformers' Trainer."""
