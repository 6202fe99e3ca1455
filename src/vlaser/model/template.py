"""The ``internvl2_5`` conversation template and the image-token expansion InternVL's ``chat`` applies.

This is the one place prompts are rendered; chat, batch_chat, training and serving all call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlaser.errors import UserInputError
from vlaser.model.constants import IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN

INTERNVL2_5_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)


@dataclass(frozen=True)
class ChatTemplate:
    """A conversation template in InternVL's ``SeparatorStyle.MPT`` form (the only style InternVL3 uses)."""

    name: str
    system_template: str
    system_message: str
    roles: tuple[str, str]
    sep: str

    @property
    def stop_token(self) -> str:
        """The end-of-turn token generation stops at (``<|im_end|>``)."""
        return self.sep.strip()

    def render(self, turns: Sequence[tuple[str, str | None]], system_message: str | None = None) -> str:
        """Render ``(user, assistant)`` turns; an assistant ``None`` (or ``""``) leaves the turn open.

        Matches ``Conversation.get_prompt``: the system block is always emitted, even when empty.
        """
        system = self.system_message if system_message is None else system_message
        out = self.system_template.format(system_message=system) + self.sep
        for user, assistant in turns:
            for role, message in zip(self.roles, (user, assistant)):
                out += role + message + self.sep if message else role
        return out


TEMPLATES: dict[str, ChatTemplate] = {
    "internvl2_5": ChatTemplate(
        name="internvl2_5",
        system_template="<|im_start|>system\n{system_message}",
        system_message=INTERNVL2_5_SYSTEM_MESSAGE,
        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
        sep="<|im_end|>\n",
    ),
}


def get_template(name: str) -> ChatTemplate:
    """Look a template up by the name InternVL checkpoints store in ``config.template``."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UserInputError(
            f"unknown conversation template {name!r}; vlaser supports {sorted(TEMPLATES)} "
            "(InternVL3 and Vlaser checkpoints use 'internvl2_5')"
        ) from None


def image_tokens(num_patches: int, num_image_token: int) -> str:
    """``<img>`` + ``<IMG_CONTEXT>`` x (tokens per tile x tiles) + ``</img>`` for one image."""
    return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * (num_image_token * num_patches) + IMG_END_TOKEN


def expand_images(prompt: str, num_patches_list: Sequence[int], num_image_token: int) -> str:
    """Replace each ``<image>`` in order by its image tokens.

    Unlike the original (which leaves extra tags or ignores extra images silently), a count mismatch is an error.
    """
    n_tags = prompt.count(IMAGE_PLACEHOLDER)
    if n_tags != len(num_patches_list):
        raise ValueError(
            f"the prompt has {n_tags} '{IMAGE_PLACEHOLDER}' tag(s) but {len(num_patches_list)} image(s) were given "
            f"(num_patches_list={list(num_patches_list)}); put one '{IMAGE_PLACEHOLDER}' per image"
        )
    for num_patches in num_patches_list:
        prompt = prompt.replace(IMAGE_PLACEHOLDER, image_tokens(num_patches, num_image_token), 1)
    return prompt


def build_chat_prompt(
    question: str,
    template: ChatTemplate,
    num_patches_list: Sequence[int],
    num_image_token: int,
    history: Sequence[tuple[str, str]] | None = None,
    system_message: str | None = None,
) -> tuple[str, str]:
    """Build the prompt ``model.chat`` sends; returns ``(question as recorded in history, prompt)``.

    As in the original, ``<image>\\n`` is prepended only when ``history is None`` (an empty list does not
    count as no history), images are given and the question has no tag.
    """
    if history is None and num_patches_list and IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER + "\n" + question
    turns: list[tuple[str, str | None]] = [(q, a) for q, a in (history or [])]
    turns.append((question, None))
    prompt = template.render(turns, system_message)
    return question, expand_images(prompt, num_patches_list, num_image_token)


def multi_image_prefix(n_images: int) -> str:
    """``Image-1: <image>\\nImage-2: <image>\\n...``, the seed's multi-image prompt prefix."""
    return "".join(f"Image-{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(n_images))


def video_prefix(n_frames: int) -> str:
    """``Frame-1: <image>\\n...``, the prefix InternVL uses for sampled video frames."""
    return "".join(f"Frame-{i + 1}: {IMAGE_PLACEHOLDER}\n" for i in range(n_frames))
