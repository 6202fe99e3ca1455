"""InternVL's ``preprocess_internvl2_5``: conversation -> ``input_ids`` and ``labels``, rule for rule.

The template renders the conversation into role-tagged segments (``model.template``, the same pieces
inference joins into its prompt). Every segment is tokenised on its own and the pieces concatenated (no BPE
merges across turns). System and user segments are ignored (-100); in assistant segments the assistant
header and the final token (the ``\\n`` after the stop token) are ignored, so the answer text and the stop
token are supervised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlaser.errors import UserInputError
from vlaser.model.loss import IGNORE_INDEX
from vlaser.model.template import ASSISTANT, USER, ChatTemplate, Segment, expand_user_images

#: InternVL's data roles -> the template's roles.
_ROLES = {"human": USER, "gpt": ASSISTANT}


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
    system = None  # the template's own
    if conversations and conversations[0].get("from") == "system":
        system, conversations = conversations[0].get("value"), conversations[1:]
        if not isinstance(system, str):
            raise SampleError(f"system turn: 'value' must be a string, got {system!r}")
    for turn in conversations:
        if turn.get("from") not in _ROLES or not isinstance(turn.get("value"), str):
            raise SampleError(f"turn {turn!r}: 'from' must be human or gpt (after an optional leading system turn)")
    segments = template.segments([(_ROLES[turn["from"]], turn["value"]) for turn in conversations], system)
    if not text_only:
        try:
            segments = expand_user_images(segments, tiles, num_image_token)
        except ValueError as e:
            raise SampleError(str(e)) from None
    return tokenize_segments(segments, tokenizer, template, max_seq_length)


def tokenize_segments(segments: Sequence[Segment], tokenizer, template: ChatTemplate,
                      max_seq_length: int) -> Tokenized:
    """Tokenise each segment on its own and supervise the assistant answers and their stop token only.

    As the original: a tokenizer that adds a BOS token gets it once, before the system segment; the cut at
    ``max_seq_length`` is recorded in ``truncated``.
    """
    pieces = [segment.text for segment in segments]
    add_bos = bool(getattr(tokenizer, "add_bos_token", False))
    if add_bos:
        pieces[0] = tokenizer.bos_token + pieces[0]
    encoded = tokenizer(pieces, padding=False, truncation=False)["input_ids"]
    if add_bos:
        encoded = [ids[1:] for ids in encoded]
    header_len = len(tokenizer(template.header(ASSISTANT))["input_ids"]) - (1 if add_bos else 0)
    input_ids, labels = [], []
    for segment, ids in zip(segments, encoded):
        input_ids.extend(ids)
        if segment.role == ASSISTANT:
            target = list(ids)
            target[:header_len] = [IGNORE_INDEX] * min(header_len, len(target))
            target[-1:] = [IGNORE_INDEX]
            labels.extend(target)
        else:
            labels.extend([IGNORE_INDEX] * len(ids))
    truncated = len(input_ids) > max_seq_length
    return Tokenized(input_ids[:max_seq_length], labels[:max_seq_length], truncated)
