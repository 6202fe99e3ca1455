"""InternVL's ``preprocess_internvl2_5``: conversation -> ``input_ids`` and ``labels``, rule for rule.

Every turn is tokenised on its own and the pieces concatenated (no BPE merges across turns). System and
user turns are ignored (-100); in assistant turns the ``<|im_start|>assistant\\n`` prefix and the final
``\\n`` are ignored, so the answer text and ``<|im_end|>`` are supervised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlaser.errors import UserInputError
from vlaser.model.constants import IMAGE_PLACEHOLDER
from vlaser.model.loss import IGNORE_INDEX
from vlaser.model.template import ChatTemplate, image_tokens

_ROLES = {"human": "user", "gpt": "assistant"}


class SampleError(UserInputError):
    """A sample that cannot be trained on as it is; the dataset records it as a skip with this reason."""


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def n_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def expand_image_tags(conversations: list[dict], tiles: Sequence[int], num_image_token: int) -> list[dict]:
    """Replace each ``<image>`` of the human turns, in order, by the image tokens of its tiles.

    The number of tags must equal the number of images (the original asserts when there are fewer tags and
    leaves surplus tags as text; both are errors here).
    """
    n_tags = sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in conversations if turn["from"] == "human")
    if n_tags != len(tiles):
        raise SampleError(f"{n_tags} '{IMAGE_PLACEHOLDER}' tag(s) in the human turns but {len(tiles)} image(s)")
    out, index = [], 0
    for turn in conversations:
        value = turn["value"]
        if turn["from"] == "human":
            while IMAGE_PLACEHOLDER in value:
                value = value.replace(IMAGE_PLACEHOLDER, image_tokens(tiles[index], num_image_token), 1)
                index += 1
        out.append({"from": turn["from"], "value": value})
    return out


def preprocess_internvl2_5(
    conversations: list[dict],
    tokenizer,
    template: ChatTemplate,
    tiles: Sequence[int],
    num_image_token: int,
    max_seq_length: int,
    text_only: bool = False,
) -> Tokenized:
    """Tokenise one conversation exactly like InternVL's ``preprocess_internvl2_5`` (without padding).

    A leading ``system`` turn replaces the template's system message. ``tiles`` holds the tile count per
    image (ignored with ``text_only``). The result is cut at ``max_seq_length`` as in the original; the
    dataset decides whether a cut sample is usable.
    """
    if conversations and conversations[0]["from"] == "system":
        system, conversations = conversations[0]["value"], conversations[1:]
    else:
        system = template.system_message
    for turn in conversations:
        if turn.get("from") not in _ROLES or not isinstance(turn.get("value"), str):
            raise SampleError(f"turn {turn!r}: 'from' must be human or gpt (after an optional leading system turn)")
    if not text_only:
        conversations = expand_image_tags(conversations, tiles, num_image_token)
    pieces = [f"<|im_start|>system\n{system}<|im_end|>\n"]
    roles = ["system"]
    for turn in conversations:
        pieces.append(f"<|im_start|>{_ROLES[turn['from']]}\n{turn['value']}<|im_end|>\n")
        roles.append(turn["from"])
    add_bos = bool(getattr(tokenizer, "add_bos_token", False))
    if add_bos:
        pieces[0] = tokenizer.bos_token + pieces[0]
    encoded = tokenizer(pieces, padding=False, truncation=False)["input_ids"]
    if add_bos:
        encoded = [ids[1:] for ids in encoded]
    prefix_len = len(tokenizer(template.roles[1])["input_ids"]) - (1 if add_bos else 0)
    input_ids, labels = [], []
    for role, ids in zip(roles, encoded):
        input_ids.extend(ids)
        if role == "gpt":
            target = list(ids)
            target[:prefix_len] = [IGNORE_INDEX] * min(prefix_len, len(target))
            target[-1:] = [IGNORE_INDEX]
            labels.extend(target)
        else:
            labels.extend([IGNORE_INDEX] * len(ids))
    truncated = len(input_ids) > max_seq_length
    return Tokenized(input_ids[:max_seq_length], labels[:max_seq_length], truncated)
