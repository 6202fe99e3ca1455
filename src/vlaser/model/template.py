"""The ``internvl2_5`` conversation template, the image tags and the image-token expansion.

This is the one place that knows the template's strings: a conversation renders into role-tagged
:class:`Segment` pieces; inference joins them into the prompt (``build_chat_prompt``), training tokenises
them one by one and supervises the assistant ones (``data.tokenize``), and ``ChatTemplate.jinja`` writes
the same strings as the transformers chat template of converted checkpoints. The image tag rules
(``<image>\\n`` for one image, ``Image-i:`` lines for several, ``Frame-i:`` lines for video frames) live
here too, so train and inference prompts cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from vlaser.errors import UserInputError
from vlaser.model.constants import (
    IMAGE_PLACEHOLDER,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    VIDEO_TOKEN,
)

INTERNVL2_5_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)


#: The image tag lines of a question: one image, each of several images, each video frame (``i`` from 1).
IMAGE_LINE = IMAGE_PLACEHOLDER + "\n"
MULTI_IMAGE_LINE = "Image-{i}: " + IMAGE_LINE
FRAME_LINE = "Frame-{i}: " + IMAGE_LINE
#: How a data record marks where its video's frame lines go (InternVL's ``<video>\\n``).
VIDEO_LINE = VIDEO_TOKEN + "\n"
#: The two speaking roles, in the order of ``ChatTemplate.roles``.
USER, ASSISTANT = "user", "assistant"


class Segment(NamedTuple):
    """One role-tagged piece of a rendered conversation, its text exactly as it appears in the prompt."""

    role: str  # "system", "user" or "assistant"
    text: str


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

    def header(self, role: str) -> str:
        """The text that opens a ``user`` or ``assistant`` turn (``<|im_start|>assistant\\n``)."""
        if role not in (USER, ASSISTANT):
            raise ValueError(f"unknown role {role!r}: a turn is {USER!r} or {ASSISTANT!r}")
        return self.roles[role == ASSISTANT]

    def segments(self, messages: Sequence[tuple[str, str | None]], system_message: str | None = None) -> list[Segment]:
        """The system block, then one piece per ``(role, text)`` message: header, text and separator.

        A ``None`` text renders the header alone: an open turn the model continues, such as the assistant
        header that ends a prompt. ``system_message=None`` uses the template's own.
        """
        system = self.system_message if system_message is None else system_message
        out = [Segment("system", self.system_template.format(system_message=system) + self.sep)]
        for role, text in messages:
            header = self.header(role)
            out.append(Segment(role, header if text is None else header + text + self.sep))
        return out

    def render(self, turns: Sequence[tuple[str, str | None]], system_message: str | None = None) -> str:
        """Render ``(user, assistant)`` turns; an assistant ``None`` (or ``""``) leaves the turn open.

        Matches ``Conversation.get_prompt``: the system block is always emitted, even when empty, and an
        empty message renders its header alone.
        """
        messages = [(role, message or None) for turn in turns for role, message in zip((USER, ASSISTANT), turn)]
        return "".join(segment.text for segment in self.segments(messages, system_message))

    def jinja(self, system_message: str | None = None) -> str:
        """This template as a transformers chat template, for checkpoints in the transformers layout.

        Renders what :meth:`segments` renders, with transformers' ``InternVLProcessor`` placeholders in
        place of the image tags: ``<IMG_CONTEXT>`` where vlaser writes ``<image>`` (so one image reads
        ``<IMG_CONTEXT>\\n``, several read ``Image-i: <IMG_CONTEXT>\\n``) and ``<video>\\n`` for a video,
        which the processor expands into its own frame lines. Without a system turn the default
        ``system_message`` (the template's own when ``None``) is used. Every string comes from this object;
        the Jinja body (``_JINJA_BODY``) only arranges them.
        """
        system_prefix, system_suffix = self.system_template.split("{system_message}")
        numbered_before, numbered_after = MULTI_IMAGE_LINE.replace(IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN).split("{i}")
        strings = {
            "system_prefix": system_prefix,
            "system_end": system_suffix + self.sep,
            "default_system": self.system_message if system_message is None else system_message,
            "user_header": self.header(USER),
            "assistant_header": self.header(ASSISTANT),
            "sep": self.sep,
            "image_line": IMAGE_LINE.replace(IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN),
            "numbered_image_before": numbered_before,
            "numbered_image_after": numbered_after,
            "video_line": VIDEO_LINE,
            "unknown_role": f"the {self.name} template has {USER} and {ASSISTANT} turns, not ",
        }
        # JSON string escapes are ones Jinja's string literals decode.
        return "".join(f"{{%- set {name} = {json.dumps(value, ensure_ascii=False)} -%}}\n"
                       for name, value in strings.items()) + _JINJA_BODY


#: How ``ChatTemplate.jinja`` arranges its strings: a system turn replaces the default system message; an
#: image is ``image_line``, or a numbered line when its message has several; an empty message renders its
#: header alone (as :meth:`ChatTemplate.segments` renders ``None``).
_JINJA_BODY = """\
{%- macro render(content) -%}
  {%- if content is string -%}{{- content -}}
  {%- else -%}
    {%- set n_images = content | selectattr('type', 'equalto', 'image') | list | length -%}
    {%- set ns = namespace(image=0) -%}
    {%- for item in content -%}
      {%- if item['type'] == 'image' -%}
        {%- set ns.image = ns.image + 1 -%}
        {%- if n_images > 1 -%}{{- numbered_image_before ~ ns.image ~ numbered_image_after -}}
        {%- else -%}{{- image_line -}}{%- endif -%}
      {%- elif item['type'] == 'video' -%}{{- video_line -}}
      {%- elif item['type'] == 'text' -%}{{- item['text'] -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
{%- endmacro -%}
{%- set headers = {'user': user_header, 'assistant': assistant_header} -%}
{%- if messages and messages[0]['role'] == 'system' -%}
  {%- set system = render(messages[0]['content']) -%}{%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set system = default_system -%}{%- set loop_messages = messages -%}
{%- endif -%}
{{- system_prefix + system + system_end -}}
{%- for message in loop_messages -%}
  {%- if message['role'] not in headers -%}{{- raise_exception(unknown_role + message['role']) -}}{%- endif -%}
  {%- set text = render(message['content']) -%}
  {%- if text -%}{{- headers[message['role']] + text + sep -}}
  {%- else -%}{{- headers[message['role']] -}}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- assistant_header -}}{%- endif -%}
"""


#: The template InternVL3 and Vlaser checkpoints use, and a checkpoint that names none gets.
DEFAULT_TEMPLATE = "internvl2_5"

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
    """Replace each ``<image>`` in order by its image tokens (inference: every tag of the whole prompt).

    Unlike the original (which leaves extra tags or ignores extra images silently), a count mismatch is an error.
    """
    _check_tag_count(prompt.count(IMAGE_PLACEHOLDER), num_patches_list, "the prompt has")
    return _replace_tags(prompt, iter(num_patches_list), num_image_token)


def expand_user_images(segments: Sequence[Segment], num_patches_list: Sequence[int],
                       num_image_token: int) -> list[Segment]:
    """Replace each ``<image>`` of the user segments, in order, by its image tokens.

    Training's rule: InternVL's ``preprocess_internvl2_5`` expands the tags of the human turns only. The
    original asserts on too few tags and leaves surplus ones as text; both are errors here.
    """
    n_tags = sum(segment.text.count(IMAGE_PLACEHOLDER) for segment in segments if segment.role == USER)
    _check_tag_count(n_tags, num_patches_list, "the user turns have")
    patches = iter(num_patches_list)
    return [Segment(s.role, _replace_tags(s.text, patches, num_image_token)) if s.role == USER else s
            for s in segments]


def _check_tag_count(n_tags: int, num_patches_list: Sequence[int], where: str) -> None:
    if n_tags != len(num_patches_list):
        raise ValueError(
            f"{where} {n_tags} '{IMAGE_PLACEHOLDER}' tag(s) but {len(num_patches_list)} image(s) were given "
            f"(num_patches_list={list(num_patches_list)}); put one '{IMAGE_PLACEHOLDER}' per image"
        )


def _replace_tags(text: str, patches: Iterator[int], num_image_token: int) -> str:
    head, *rest = text.split(IMAGE_PLACEHOLDER)
    return head + "".join(image_tokens(next(patches), num_image_token) + part for part in rest)


def images_first(text: str, n_images: int) -> str:
    """InternVL's layout of still images before a text: ``<image>\\n`` for one, ``Image-i: <image>\\n`` lines
    for several (``model.chat``'s single- and multi-image prompts)."""
    if n_images == 0:
        return text
    return (IMAGE_LINE if n_images == 1 else multi_image_prefix(n_images)) + text


def frame_lines(n_frames: int, line: str = FRAME_LINE) -> str:
    """One ``line`` (``"Frame-{i}: <image>\\n"`` or a benchmark's own) per video frame, numbered from 1."""
    return "".join(line.format(i=i + 1) for i in range(n_frames))


def with_image_tag(text: str) -> str:
    """``<image>\\n`` + ``text`` unless ``text`` already has an ``<image>`` tag: where a single image goes
    when the question does not say (``model.chat`` on a first turn, and a single-image training record)."""
    return text if IMAGE_PLACEHOLDER in text else images_first(text, 1)


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
    if history is None and num_patches_list:
        question = with_image_tag(question)
    turns: list[tuple[str, str | None]] = [(q, a) for q, a in (history or [])]
    turns.append((question, None))
    prompt = template.render(turns, system_message)
    return question, expand_images(prompt, num_patches_list, num_image_token)


def multi_image_prefix(n_images: int) -> str:
    """``Image-1: <image>\\nImage-2: <image>\\n...``, the seed's multi-image prompt prefix."""
    return "".join(MULTI_IMAGE_LINE.format(i=i + 1) for i in range(n_images))


def video_prefix(n_frames: int) -> str:
    """``Frame-1: <image>\\n...``, the prefix InternVL uses for sampled video frames."""
    return frame_lines(n_frames)


def with_video_frames(text: str, n_frames: int) -> str:
    """Replace a training record's ``<video>\\n`` by the frame lines of its ``n_frames`` sampled frames
    (InternVL's video path); a record without it cannot place its frames."""
    if VIDEO_LINE not in text:
        raise ValueError(f"a video sample needs {VIDEO_LINE!r} in its first human turn")
    return text.replace(VIDEO_LINE, video_prefix(n_frames))
