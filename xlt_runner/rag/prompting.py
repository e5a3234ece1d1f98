"""Prompts of the RAG pipeline's LLM stages, rendered with each model's own chat template.

:class:`MessageRenderer` turns a (system, user) pair into prompt ids for one model: its chat
template when ``model.format=chat`` (never one hard-coded model's tokens), else the plain
fallback, the system text, a blank line and the user text put into ``model.template``'s
``{q}``. :func:`generator_prompt` builds the generator's prompt: originals first, translations
ordered by score, each translation followed by its quality tag; when the prompt does not fit,
the passages' texts are cut (all to the same token budget) and titles and tags are kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from xlt_runner.config import ConfigError


def fill(template: str, **values) -> str:
    """``template`` with each ``{name}`` of ``values`` replaced (other braces, e.g. a JSON
    example in a judge prompt, are left as they are)."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", str(value))
    return template


def localized(table: Mapping[str, str], lang: str, key: str) -> str:
    """``table[lang]`` (ISO 639-1), else ``table["en"]``; ConfigError naming ``key`` when neither exists."""
    if lang in table:
        return table[lang]
    if "en" in table:
        return table["en"]
    raise ConfigError(f"{key} has no entry for language {lang!r} and no English ('en') fallback")


class MessageRenderer:
    """(system, user) -> prompt token ids for one model, and the tokens that end its answer.

    ``model_cfg.format=chat``: ``tokenizer.apply_chat_template`` with a system turn (when given)
    and the user turn, generation prompt added. A tokenizer without a chat template is refused
    with a message naming ``key`` (set ``{key}.format=plain``). ``plain``: ``model.template`` up
    to ``{a}``, its ``{q}`` filled with the system text, a blank line and the user text.
    """

    def __init__(self, model_cfg, tokenizer, key: str) -> None:
        from xlt_runner.data.generation import PromptFormat
        if model_cfg.format == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"{key}.format=chat but the tokenizer of model {model_cfg.name!r} has no chat template; "
                              f"set {key}.format=plain (the prompt is then the system text, a blank line and the "
                              f"user text in {key}.template)")
        self._format = PromptFormat(_without_system(model_cfg), tokenizer, training=False)
        self.tokenizer = tokenizer
        self.chat = model_cfg.format == "chat"
        self.stop_token_ids = self._format.stop_token_ids

    def ids(self, system: str | None, user: str) -> list[int]:
        if self.chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
            return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                           return_dict=True)["input_ids"])
        return self._format.prompt_ids(f"{system}\n\n{user}" if system else user)


def _without_system(model_cfg):
    """``model_cfg`` with ``system_prompt`` unset (the pipeline passes its own system texts)."""
    from omegaconf import OmegaConf
    copy = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(model_cfg), resolve=True))
    copy.system_prompt = None
    return copy


@dataclass(frozen=True)
class ShownPassage:
    """A passage as the generator sees it: ``title``, ``text`` and ``tag`` (None: no tag)."""
    title: str
    text: str
    tag: str | None = None


@dataclass(frozen=True)
class GeneratorPrompt:
    ids: list[int]
    text_tokens_kept: int | None  # the per-passage text budget when texts were cut, else None
    truncated: tuple[bool, ...]  # per passage: its text was cut


def generator_prompt(renderer: MessageRenderer, prompts: Mapping, lang: str, language_name: str,
                     question: str, passages: Sequence[ShownPassage], *, room: int,
                     tags_shown: bool) -> GeneratorPrompt:
    """The generator's prompt ids for ``question`` with ``passages`` in the order given, at most
    ``room`` tokens. Texts are cut from the right, every passage to the same number of tokens (the
    largest that fits, found by bisection); titles, tags and the question are never cut. Raises
    ConfigError when even empty texts leave the prompt over ``room``."""
    system = fill(localized(prompts["system"], lang, "method.prompts.system"), language=language_name)
    if tags_shown:
        system += " " + fill(localized(prompts["tag_note"], lang, "method.prompts.tag_note"), language=language_name)
    document = localized(prompts["document"], lang, "method.prompts.document")
    question_block = fill(localized(prompts["question"], lang, "method.prompts.question"), question=question)
    tokenizer = renderer.tokenizer

    def render(texts: Sequence[str]) -> list[int]:
        blocks = []
        for i, (passage, text) in enumerate(zip(passages, texts), start=1):
            block = fill(document, index=i, title=passage.title, text=text)
            blocks.append(block + (f"\n{passage.tag}" if passage.tag else ""))
        return renderer.ids(system, "\n\n".join(blocks + [question_block]))

    full = [p.text for p in passages]
    ids = render(full)
    if len(ids) <= room:
        return GeneratorPrompt(ids, None, tuple(False for _ in passages))
    offsets = [tokenizer(t, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"] for t in full]

    def cut(budget: int) -> list[str]:
        return [t if len(o) <= budget else t[:o[budget - 1][1]] if budget else "" for t, o in zip(full, offsets)]

    low, high = 0, max(len(o) for o in offsets)
    if len(render(cut(0))) > room:
        raise ConfigError(f"the generator's prompt does not fit in {room} tokens even with every passage's text "
                          f"removed ({len(passages)} titles and tags and the question take "
                          f"{len(render(cut(0)))}); raise model.max_length or lower method.reranker.top_n")
    while low < high:  # the largest budget whose prompt fits
        middle = (low + high + 1) // 2
        if len(render(cut(middle))) <= room:
            low = middle
        else:
            high = middle - 1
    texts = cut(low)
    return GeneratorPrompt(render(texts), low, tuple(t != f for t, f in zip(texts, full)))
