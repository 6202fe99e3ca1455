"""transformers' InternVL with the original ``chat`` / ``batch_chat`` API on top.

The network is transformers' ``InternVLForConditionalGeneration``, unchanged; this class only adds the
prompt construction and decoding of ``InternVLChatModel.chat``/``batch_chat`` so that code written against
the seed runs by changing imports.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import InternVLForConditionalGeneration
from transformers.modeling_outputs import CausalLMOutputWithPast

from vlaser.model.constants import GROUNDING_TOKENS, IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN
from vlaser.model.image_features import image_features, write_image_features
from vlaser.model.loss import chunked_lm_loss, weighted_lm_loss
from vlaser.model.settings import ProcessorSettings
from vlaser.model.template import ChatTemplate, build_chat_prompt, get_template

PatchCounts = Sequence[int] | Sequence[Sequence[int]]


class InternVLChat(InternVLForConditionalGeneration):
    """``InternVLForConditionalGeneration`` plus InternVL's ``chat`` and ``batch_chat``."""

    @property
    def processor_settings(self) -> ProcessorSettings:
        """The checkpoint's tiling and prompt settings, read from the config each time so that a model being
        trained (whose config ``vlaser train`` updates) is always described as it is now."""
        return ProcessorSettings.from_config(self.config)

    @property
    def template(self) -> str:
        return self.processor_settings.template

    @property
    def conv_template(self) -> ChatTemplate:
        return get_template(self.template)

    @property
    def system_message(self) -> str:
        settings = self.processor_settings
        return get_template(settings.template).system_message if settings.system_message is None \
            else settings.system_message

    @property
    def num_image_token(self) -> int:
        return int(self.config.image_seq_length)

    @property
    def img_context_token_id(self) -> int:
        return int(self.config.image_token_id)

    # ---- the original API ---------------------------------------------------------------------------

    def chat(
        self, tokenizer, pixel_values: torch.Tensor | None, question: str, generation_config: dict,
        history: list[tuple[str, str]] | None = None, return_history: bool = False,
        num_patches_list: Sequence[int] | None = None, IMG_START_TOKEN: str = "<img>",  # noqa: N803
        IMG_END_TOKEN: str = "</img>", IMG_CONTEXT_TOKEN: str = IMG_CONTEXT_TOKEN,  # noqa: N803
        verbose: bool = False,
    ):
        """One turn of ``InternVLChatModel.chat``: same prompt, same decoding, same return values."""
        self._check_tokens(tokenizer, IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN)
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        _check_patch_total(pixel_values, num_patches_list)
        question, prompt = build_chat_prompt(question, self.conv_template, num_patches_list, self.num_image_token,
                                             history=history, system_message=self.system_message)
        response = self.generate_text(tokenizer, [prompt], pixel_values, generation_config)[0]
        history = [] if history is None else history
        history.append((question, response))
        if verbose:
            print(_printable(prompt), response)
        return (response, history) if return_history else response

    def batch_chat(
        self, tokenizer, pixel_values: torch.Tensor | None, questions: Sequence[str], generation_config: dict,
        num_patches_list: PatchCounts | None = None, history=None, return_history: bool = False,
        IMG_START_TOKEN: str = "<img>", IMG_END_TOKEN: str = "</img>",  # noqa: N803
        IMG_CONTEXT_TOKEN: str = IMG_CONTEXT_TOKEN, verbose: bool = False,  # noqa: N803
    ) -> list[str]:
        """``InternVLChatModel.batch_chat``: one prompt per question, left-padded, generated together.

        ``num_patches_list[i]`` is the tile count of question ``i``'s image (as in the original) or a list of
        tile counts for a question with several ``<image>`` tags (a vlaser extension).
        """
        if history is not None or return_history:
            raise NotImplementedError("batch_chat does not support multi-turn history (neither does the original)")
        self._check_tokens(tokenizer, IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN)
        if num_patches_list is None:
            if pixel_values is not None and len(questions) != 1:
                raise ValueError("batch_chat needs num_patches_list (tiles per question) for several questions")
            num_patches_list = [pixel_values.shape[0] if pixel_values is not None else 0] * len(questions)
        if len(num_patches_list) != len(questions):
            raise ValueError(f"{len(questions)} questions but num_patches_list has {len(num_patches_list)} entries")
        per_question = [[n] if isinstance(n, int) else list(n) for n in num_patches_list]
        _check_patch_total(pixel_values, [n for counts in per_question for n in counts])
        prompts = []
        for question, counts in zip(questions, per_question):
            counts = [n for n in counts if n] if pixel_values is not None else []
            prompts.append(build_chat_prompt(question, self.conv_template, counts, self.num_image_token,
                                             system_message=self.system_message)[1])
        responses = self.generate_text(tokenizer, prompts, pixel_values, generation_config)
        if verbose:
            for prompt, response in zip(prompts, responses):
                print(_printable(prompt), response)
        return responses

    # ---- training forward -------------------------------------------------------------------------

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, labels=None, image_flags=None,
                loss_reduction: str = "token", loss_weight=None, position_ids=None, loss_impl: str = "chunked",
                **kwargs):
        """transformers' forward, or, given ``image_flags``, InternVL's training forward.

        The training forward runs the vision tower on every tile, writes the features of tiles with flag 1
        over the ``<IMG_CONTEXT>`` embeddings (a count mismatch is an error, not a silently zeroed loss),
        keeps the flag-0 dummy tiles in the graph with weight 0 (no unused-parameter hangs under DDP/ZeRO)
        and weights the loss per sample as ``loss_reduction`` says (or by ``loss_weight`` per token, for packed
        rows, where ``position_ids`` restart at each sample and ``attention_mask`` is ``None`` so attention
        stays within each sample). With labels and ``loss_impl="chunked"`` the loss is computed chunk by chunk
        from the hidden states and no logits are returned (``"plain"`` builds the full logits, as before).
        """
        if image_flags is None:
            return super().forward(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                                   labels=labels, position_ids=position_ids, **kwargs)
        embeds = self.get_input_embeddings()(input_ids)  # (B, T, C)
        features = image_features(self, pixel_values)  # (tiles, tokens per tile, C)
        keep = image_flags.view(-1) == 1
        embeds = write_image_features(embeds, input_ids, features[keep], self.config.image_token_id)
        kwargs.setdefault("use_cache", False)  # a cache would also stop transformers seeing packed positions
        hidden = self.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                           position_ids=position_ids, **kwargs)[0]
        dummy = 0.0 * features[~keep].sum()
        if labels is not None and loss_impl == "chunked":
            loss = chunked_lm_loss(self.lm_head, hidden, labels, loss_reduction, loss_weight) + dummy
            return CausalLMOutputWithPast(loss=loss, logits=None)
        logits = self.lm_head(hidden)
        loss = None if labels is None else weighted_lm_loss(logits, labels, loss_reduction, loss_weight) + dummy
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    # ---- shared generation -------------------------------------------------------------------------

    def generate_text(
        self, tokenizer, prompts: Sequence[str], pixel_values: torch.Tensor | None, generation_config: dict,
        keep_grounding_tokens: bool = False,
    ) -> list[str]:
        """Tokenise fully rendered prompts (left padding), generate, and decode the new tokens.

        Decoding skips special tokens and cuts at the template's stop token like the original; with
        ``keep_grounding_tokens`` the ``<ref>``/``<box>``/``<quad>`` tags survive for box parsing.
        """
        return self.generate_answers(tokenizer, prompts, pixel_values, generation_config, keep_grounding_tokens)[0]

    @torch.inference_mode()
    def generate_answers(
        self, tokenizer, prompts: Sequence[str], pixel_values: torch.Tensor | None, generation_config: dict,
        keep_grounding_tokens: bool = False,
    ) -> tuple[list[str], list[bool]]:
        """:meth:`generate_text`, plus for each answer whether it was cut off: it reached ``max_new_tokens``
        without the end token (a point list cut there has no ``</point>`` and parses to nothing)."""
        stop = self.conv_template.stop_token
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            inputs = tokenizer(list(prompts), return_tensors="pt", padding=True).to(self.device)
        finally:
            tokenizer.padding_side = side
        kwargs = dict(generation_config)
        kwargs["eos_token_id"] = tokenizer.convert_tokens_to_ids(stop)
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        if pixel_values is not None:
            kwargs["pixel_values"] = pixel_values.to(self.device, self.dtype)
        out = self.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **kwargs)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        truncated = [kwargs["eos_token_id"] not in row for row in new_tokens.tolist()]
        decode = answer_decoder(tokenizer, stop, keep_grounding_tokens)
        return [decode(row).strip() for row in new_tokens.tolist()], truncated

    def _check_tokens(self, tokenizer, start: str, end: str, context: str) -> None:
        if tokenizer.convert_tokens_to_ids(context) != self.img_context_token_id:
            raise ValueError(
                f"the tokenizer maps {context!r} to {tokenizer.convert_tokens_to_ids(context)} but the model expects "
                f"image_token_id={self.img_context_token_id}; load the tokenizer from the same checkpoint"
            )
        if (start, end) != ("<img>", "</img>"):
            raise ValueError("InternVL3 checkpoints use <img>/</img> image delimiters")

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save, recording the plain transformers class so the output loads without vlaser."""
        super().save_pretrained(save_directory, *args, **kwargs)
        cfg_file = Path(save_directory) / "config.json"
        if cfg_file.is_file():
            config = json.loads(cfg_file.read_text())
            config["architectures"] = [InternVLForConditionalGeneration.__name__]
            cfg_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def answer_decoder(tokenizer, stop: str, keep_grounding_tokens: bool = False
                   ) -> Callable[[list[int]], str]:
    """How :meth:`InternVLChat.generate_answers` turns one row of new token ids into its answer (before stripping):
    cut at ``stop`` (the template's stop token), special tokens dropped except, if asked, the grounding tags (``<ref>``,
    ``<box>``, ``<quad>``). The server's streamer decodes growing rows with it, so streamed and final text agree."""
    if not keep_grounding_tokens:
        return lambda ids: tokenizer.decode(ids, skip_special_tokens=True).split(stop)[0]
    keep = {tokenizer.convert_tokens_to_ids(t) for t in GROUNDING_TOKENS}
    drop = (set(tokenizer.all_special_ids) | {
        i for t, i in tokenizer.get_added_vocab().items() if t.startswith("<") and t.endswith(">")
    }) - keep
    stop_id = tokenizer.convert_tokens_to_ids(stop)

    def decode(ids: list[int]) -> str:
        ids = ids[: ids.index(stop_id)] if stop_id in ids else ids
        return tokenizer.decode([i for i in ids if i not in drop], skip_special_tokens=False).split(stop)[0]

    return decode


def _check_patch_total(pixel_values: torch.Tensor | None, counts: Sequence[int]) -> None:
    total = 0 if pixel_values is None else pixel_values.shape[0]
    if sum(counts) != total:
        raise ValueError(f"num_patches_list sums to {sum(counts)} tiles but pixel_values holds {total}")


def _printable(prompt: str) -> str:
    return prompt.replace(IMG_CONTEXT_TOKEN, "").replace("<img></img>", IMAGE_PLACEHOLDER)
