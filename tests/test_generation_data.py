"""Prompt formatting and the generation data module, on the tiny Llama tokenizer and an in-memory QA benchmark."""
from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from xlt_runner.config import ConfigError, ModelConfig
from xlt_runner.data import GenerationExample
from xlt_runner.data.batching import TRAINING_BATCHES_KEY, GroupedEvalSampler, SortedEvalSampler
from xlt_runner.data.generation import (IGNORE_INDEX, GenerationDataModule, PromptFormat, check_prompt_config,
                                        prompt_prefix_groups, subsample_by_id)
from xlt_runner.models.tiny import build_tiny_tokenizer

# ChatML with the tiny tokenizer's specials: <s> opens a turn, </s> ends it.
CHATML = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
          "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
PLAIN = ModelConfig(name="tiny_llama", kind="decoder", tiny="llama")
CHAT = replace(PLAIN, format="chat", system_prompt="Answer briefly.")
LANGUAGES = ["en", "de", "fr"]


class SyntheticQA:
    """Parallel QA data in memory: question ``i`` has id ``<split>-<i>`` in every language;
    every ``long_every``-th question is 60 words long."""
    name = "synthetic_qa"
    task = "generation"
    location = "in-memory test data"

    def __init__(self, sizes=(40, 10, 12), long_every: int = 0) -> None:
        self.sizes = dict(zip(("train", "dev", "test"), sizes))
        self.long_every = long_every

    def languages(self) -> list[str]:
        return sorted(LANGUAGES)

    def load(self, lang: str, split: str) -> list[GenerationExample]:
        examples = []
        for i in range(self.sizes[split]):
            words = 60 if self.long_every and i % self.long_every == 0 else 1 + i % 3
            question = f"{lang} {' '.join(['Europa'] * words)} {i} END?"
            examples.append(GenerationExample(id=f"{split}-{i}", lang=lang, prompt=question,
                                              references=(f"Paris {i}", f"Rome {i}")))
        return examples

    def fingerprint(self) -> str:
        return hashlib.sha1(f"{self.sizes}|{self.long_every}".encode()).hexdigest()


@pytest.fixture
def tokenizer():
    return build_tiny_tokenizer("llama")


@pytest.fixture
def chat_tokenizer():
    tokenizer = build_tiny_tokenizer("llama")
    tokenizer.chat_template = CHATML
    return tokenizer


def make_dm(tokenizer, cache_dir, model_cfg=PLAIN, benchmark=None, **overrides) -> GenerationDataModule:
    kwargs = dict(source_languages=["en", "de"], target_languages=["fr", "en"], batch_size=4, eval_batch_size=5,
                  num_training_batches=30, seed=0, cache_dir=cache_dir, max_length=96, max_new_tokens=16)
    kwargs.update(overrides)
    prompt_format = PromptFormat(model_cfg, tokenizer, training=True)
    return GenerationDataModule(benchmark or SyntheticQA(), tokenizer, prompt_format, **kwargs)


def real_ids(batch, row: int) -> list[int]:
    return batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()


# ------------------------------------------------------------------------ prompt config
@pytest.mark.parametrize("changes, training, key", [
    (dict(template="Answer: {a}"), False, "model.template"),  # no {q}
    (dict(template="Q: {q} A:"), True, "model.template"),  # training needs {a}
    (dict(template="A: {a} Q: {q}"), False, "model.template"),  # {a} not at the end
    (dict(template="Q: {q}\nA: {a}\n"), True, "model.template"),
    (dict(format="json"), False, "model.format"),
    (dict(system_prompt="Be brief."), False, "model.system_prompt"),  # plain format has no system turn
])
def test_prompt_config_mistakes_name_the_key(changes, training, key):
    with pytest.raises(ConfigError, match=key):
        check_prompt_config(replace(PLAIN, **changes), training)


def test_generation_only_template_needs_no_answer_slot():
    check_prompt_config(replace(PLAIN, template="Q: {q} A:"), training=False)
    check_prompt_config(CHAT, training=True)


def test_chat_format_needs_a_chat_template(tokenizer):
    with pytest.raises(ConfigError, match="model.format=plain"):
        PromptFormat(CHAT, tokenizer, training=True)


# ------------------------------------------------------------------------------ prompts
def test_plain_prompt_is_the_template_up_to_the_answer_and_completion_ends_with_eos(tokenizer):
    pf = PromptFormat(PLAIN, tokenizer, training=True)
    prompt = pf.prompt_ids("Where is Paris?")
    assert prompt == [tokenizer.bos_token_id] + tokenizer("### Question: Where is Paris?\n ### Answer: ",
                                                          add_special_tokens=False)["input_ids"]
    assert pf.completion_ids("France") == tokenizer("France", add_special_tokens=False)["input_ids"] + [2]
    assert pf.stop_token_ids == (tokenizer.eos_token_id,)
    train_prompt, completion, *_ = pf.encode_example("Where is Paris?", "France", max_length=96)
    assert train_prompt == prompt, "training sees exactly the prompt tokens generation sees"


def test_chat_prompt_and_completion_split_the_full_conversation(chat_tokenizer):
    pf = PromptFormat(CHAT, chat_tokenizer, training=True)
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Where is Paris?"}]
    prompt = pf.prompt_ids("Where is Paris?")
    assert prompt == chat_tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    completion = pf.completion_ids("France")
    full = chat_tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": "France"}])["input_ids"]
    newline = chat_tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert prompt + completion + newline == full
    assert completion[-1] == pf.end_of_turn_id == chat_tokenizer.convert_tokens_to_ids("</s>")
    assert pf.stop_token_ids == (pf.end_of_turn_id,)
    assert pf.encode_example("Where is Paris?", "France", 96)[:2] == (prompt, completion)


def test_chat_template_whose_conversation_does_not_extend_the_prompt_is_refused(chat_tokenizer):
    chat_tokenizer.chat_template = CHATML.replace("<s>assistant\n{% endif %}", "<s>bot\n{% endif %}")
    with pytest.raises(ConfigError, match="generation prompt followed by the answer.*model.format=plain"):
        PromptFormat(CHAT, chat_tokenizer, training=True)


@pytest.mark.parametrize("model_cfg", [PLAIN, CHAT], ids=["plain", "chat"])
def test_long_questions_lose_their_start_not_the_template(model_cfg, chat_tokenizer):
    pf = PromptFormat(model_cfg, chat_tokenizer, training=True)
    question = "FIRST " + "Europa Asia " * 40 + "LAST?"
    room = pf.overhead + 12
    full, cut = pf.encode_prompt(question), pf.encode_prompt(question, room=room)
    assert full[1] is False and cut[1] is True and len(cut[0]) <= room
    text = chat_tokenizer.decode(cut[0])
    assert "LAST?" in text and "FIRST" not in text
    one, other = pf.prompt_ids("xyz"), pf.prompt_ids("abc")  # the template is what they share
    head = next(k for k in range(len(one)) if one[k] != other[k])
    tail = next(k for k in range(1, len(one)) if one[-k] != other[-k]) - 1
    assert cut[0][:head] == one[:head] and cut[0][-tail:] == one[-tail:]
    prompt, completion, prompt_cut, completion_cut = pf.encode_example(question, "Paris", max_length=room)
    assert len(prompt) + len(completion) <= room and prompt_cut and not completion_cut
    assert completion == pf.completion_ids("Paris")
    with pytest.raises(ConfigError, match="max_length"):
        pf.encode_prompt(question, room=pf.overhead - 1)


@pytest.mark.timeout(30)
def test_cutting_a_question_whose_first_tokens_share_a_character_terminates(tokenizer):
    pf = PromptFormat(PLAIN, tokenizer, training=False)
    question = "😀" * 40 + " LAST?"  # byte-level: 4 tokens share each emoji's character offset
    ids, cut = pf.encode_prompt(question, room=pf.overhead + 8)
    assert cut and len(ids) <= pf.overhead + 8 and "LAST?" in tokenizer.decode(ids)


# ---------------------------------------------------------------------------- datamodule
def test_training_batches_carry_loss_on_the_completion_only(tokenizer, tmp_path):
    dm = make_dm(tokenizer, tmp_path)
    dm.setup("fit")
    data = dm._datasets["train"]
    assert len(data) == 80 and dm.eval_languages == ["en", "de", "fr"]
    answers = {(lang, ex.id): ex.references[0] for lang in ("en", "de") for ex in SyntheticQA().load(lang, "train")}
    for i in (0, 41, 79):
        seq, prompt_length, lang, _ = data[i]
        lang_code = dm.eval_languages[lang]
        example_id = data.splits[lang].example_ids[i - data.starts[lang]]
        assert seq[prompt_length:].tolist() == dm.prompt_format.completion_ids(answers[lang_code, example_id])
    batch = dm.train_collator([data[i] for i in (0, 41, 79)])
    assert not batch["attention_mask"].all(), "the rows differ in length"
    for row in range(len(batch["input_ids"])):
        mask = batch["attention_mask"][row].bool()
        assert mask[0], "training batches are padded on the right"
        labels = batch["labels"][row]
        assert (labels[~mask] == IGNORE_INDEX).all()
        answer = labels[labels != IGNORE_INDEX]
        assert 0 < len(answer) < mask.sum() and answer[-1] == tokenizer.eos_token_id
        assert answer.tolist() == batch["input_ids"][row][mask][-len(answer):].tolist()


def test_training_batches_mix_sources_and_are_a_function_of_seed_and_index(tokenizer, tmp_path):
    dm = make_dm(tokenizer, tmp_path)
    dm.setup("fit")
    full = [b["input_ids"].tolist() for b in dm.train_dataloader()]
    assert len(full) == 30
    assert {int(lang) for b in dm.train_dataloader() for lang in b["lang"]} == {0, 1}
    again = make_dm(tokenizer, tmp_path)
    again.setup("fit")
    assert [b["input_ids"].tolist() for b in again.train_dataloader()] == full
    again.load_state_dict({TRAINING_BATCHES_KEY: 12})  # what a resume restores
    assert [b["input_ids"].tolist() for b in again.train_dataloader()] == full[12:], "resume continues exactly"
    other = make_dm(tokenizer, tmp_path, seed=1)
    other.setup("fit")
    assert [b["input_ids"].tolist() for b in other.train_dataloader()] != full
    assert dm.optimizer_steps_per_epoch() == 20 and dm.optimizer_steps_per_epoch(2, 2) == 5


def test_validation_is_teacher_forced_per_source_language(tokenizer, tmp_path):
    dm = make_dm(tokenizer, tmp_path)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert sum(len(b["lang"]) for b in batches) == 20
    assert {int(lang) for b in batches for lang in b["lang"]} == {0, 1}
    assert all((b["labels"] != IGNORE_INDEX).any(dim=1).all() for b in batches)


def test_test_batches_are_left_padded_prompts_of_one_language_sorted_by_length(tokenizer, tmp_path):
    # SyntheticQA's questions start with their language's code: each language's prompts share a
    # longer start than all prompts do, so each language is batched on its own
    dm = make_dm(tokenizer, tmp_path)
    dm.setup("test")
    assert [(ex.lang, ex.id) for ex in dm.eval_examples] == [(lang, f"test-{i}") for lang in ("fr", "en")
                                                              for i in range(12)]
    batches = list(dm.test_dataloader())
    lengths: dict[str, list[int]] = {}
    for batch in batches:
        assert set(batch) == {"input_ids", "attention_mask", "index", "lang"}
        for row, index in enumerate(batch["index"].tolist()):
            example = dm.eval_examples[index]
            assert batch["attention_mask"][row, -1] == 1, "generation batches are padded on the left"
            assert real_ids(batch, row) == dm.prompt_format.prompt_ids(example.prompt)
            assert dm.eval_languages[int(batch["lang"][row])] == example.lang
            lengths.setdefault(example.lang, []).append(int(batch["attention_mask"][row].sum()))
    assert all(len(set(b["lang"].tolist())) == 1 for b in batches), "a batch never mixes languages"
    assert set(lengths) == {"fr", "en"}
    for lang, seen in lengths.items():
        assert seen == sorted(seen, reverse=True), f"{lang}: sorted by length, longest first, within the language"
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths, reverse=True), "the widest batch first"
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(24))
    shards = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        rank_batches = list(dm.test_dataloader())
        assert [b["index"].tolist() for b in rank_batches] == [b["index"].tolist() for b in batches[rank::2]]
        shards.append([i for b in rank_batches for i in b["index"].tolist()])
    assert sorted(shards[0] + shards[1]) == list(range(24)) and not set(shards[0]) & set(shards[1])
    assert [b["index"].tolist() for b in dm.predict_dataloader()] == [b["index"].tolist() for b in batches[1::2]]


def test_test_batches_of_few_shot_prompts_share_each_languages_prefix(tokenizer, tmp_path):
    """Prompts of one language start with the same exemplars (as MGSM's do), and a batch's rows
    must share them for generation to prefill them once: batches never mix languages, even when
    sorting by length alone would interleave them (fr prompts are shorter and longer than en ones)."""

    class FewShotQA(SyntheticQA):
        def load(self, lang, split):
            shots = {"en": "Q: one plus one A: two Q: two plus two A: four", "fr": "Q: un et un R: deux"}[lang]
            words = {"en": lambda i: 2, "fr": lambda i: 1 + 2 * (i % 7)}[lang]  # fr: short to long questions
            return [replace(ex, prompt=f"{shots} Q: {' '.join(['Europa'] * words(i))} {i}?")
                    for i, ex in enumerate(super().load(lang, split))]

    dm = make_dm(tokenizer, tmp_path, benchmark=FewShotQA(sizes=(40, 10, 30)), eval_batch_size=4,
                 max_length=160)
    dm.setup("test")
    lengths = dm._datasets["test"].lengths()
    assert any(len({int(x) >= 30 for x in b}) > 1 for b in SortedEvalSampler(lengths, 4)), \
        "the languages' lengths interleave, so sorting by length alone would mix them"
    for world_size in (1, 2, 3):
        seen = []
        for rank in range(world_size):
            dm.trainer = SimpleNamespace(global_rank=rank, world_size=world_size)
            for batch in dm.test_dataloader():
                rows = [real_ids(batch, r) for r in range(len(batch["index"]))]
                shared = min(len(r) for r in rows)
                while any(r[:shared] != rows[0][:shared] for r in rows):
                    shared -= 1
                assert len(set(batch["lang"].tolist())) == 1, "a test batch mixes languages"
                assert shared > len(tokenizer("Q: un et un R: deux")["input_ids"]), \
                    "a batch's rows share their language's exemplars"
                seen += batch["index"].tolist()
        assert sorted(seen) == list(range(60)), "every example exactly once over the ranks"


def test_languages_that_share_only_the_template_are_batched_together_by_length(tokenizer, tmp_path):
    """Prompts that share only what every prompt shares (a chat system turn, a template's start)
    gain nothing from batches of one language: those are sorted by length across languages, as
    before (less padding)."""

    class TemplateOnlyQA(SyntheticQA):
        def load(self, lang, split):
            return [replace(ex, prompt=f"{i} {lang} {' '.join(['Europa'] * (1 + (i * 7) % 11))}?")
                    for i, ex in enumerate(super().load(lang, split))]

    dm = make_dm(tokenizer, tmp_path, benchmark=TemplateOnlyQA(sizes=(40, 10, 30)), eval_batch_size=4)
    dm.setup("test")
    batches = [b["index"].tolist() for b in dm.test_dataloader()]
    assert batches == list(SortedEvalSampler(dm._datasets["test"].lengths(), 4))
    assert any(len({dm.eval_examples[i].lang for i in b}) > 1 for b in batches)


def test_prompt_prefix_groups_follow_the_start_a_languages_prompts_share():
    template = [1, 7, 7]
    shots = {"en": [20, 21, 22, 23], "zh": [30, 31, 32], "sw": [20, 21, 22, 23]}  # sw: en's exemplars
    prompts, languages = [], []
    for lang in ("en", "zh", "xx", "sw", "yy", "solo"):
        for question in ([[5], [6, 6], [7, 7, 7]] if lang != "solo" else [[40, 41, 42, 43, 44]]):
            prompts.append(template + shots.get(lang, []) + question)
            languages.append(lang)
    groups = prompt_prefix_groups(prompts, languages)
    by_lang = {lang: set(groups[[i for i, x in enumerate(languages) if x == lang]].tolist()) for lang in languages}
    assert all(len(g) == 1 for g in by_lang.values())
    assert by_lang["en"] == by_lang["sw"], "languages with the very same exemplars share a group"
    assert by_lang["xx"] == by_lang["yy"] == by_lang["solo"], "only the template shared: one group"
    assert len({*by_lang["en"], *by_lang["zh"], *by_lang["xx"]}) == 3
    assert prompt_prefix_groups([template + [5], template + [6]], ["en", "en"]).tolist() == [0, 0]
    assert prompt_prefix_groups([], []).tolist() == []


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_grouped_eval_sampler_never_mixes_groups_and_covers_every_example_once(world_size):
    rng = np.random.default_rng(3)
    lengths, groups = rng.integers(1, 90, size=103), rng.integers(0, 4, size=103)
    everything = list(GroupedEvalSampler(lengths, groups, 10))
    assert everything == list(GroupedEvalSampler(lengths, groups, 10)), "deterministic"
    assert all(len(set(groups[b])) == 1 for b in everything)
    assert all(list(lengths[b]) == sorted(lengths[b], reverse=True) for b in everything)
    assert [max(lengths[b]) for b in everything] == sorted((max(lengths[b]) for b in everything), reverse=True)
    assert max(lengths[everything[0]]) == max(lengths), "the longest example comes in the first batch"
    shards = [list(GroupedEvalSampler(lengths, groups, 10, r, world_size)) for r in range(world_size)]
    assert [shard for shard in shards] == [everything[r::world_size] for r in range(world_size)]
    assert sorted(i for shard in shards for b in shard for i in b) == list(range(103))


def test_capped_evaluation_takes_the_same_seeded_questions_in_every_language(tokenizer, tmp_path):
    examples = SyntheticQA(sizes=(40, 10, 30)).load("en", "test")
    chosen = [ex.id for ex in subsample_by_id(examples, 8)]
    assert chosen != [ex.id for ex in examples[:8]], "a cap is a seeded sample, not the first N"
    assert [ex.id for ex in examples if ex.id in chosen] == chosen, "kept in file order"
    for seed in (0, 7):
        dm = make_dm(tokenizer, tmp_path, benchmark=SyntheticQA(sizes=(40, 10, 30)), seed=seed,
                     max_eval_examples_per_language=8)
        dm.setup("test")
        assert dm.subsampled_ids["test"] == {"fr": chosen, "en": chosen}
        assert [ex.id for ex in dm.eval_examples] == chosen + chosen


def test_tokenised_data_are_cached_atomically_and_rebuilt_when_unreadable(tokenizer, tmp_path, caplog):
    first = make_dm(tokenizer, tmp_path)
    first.setup(None)
    assert (first.cache_hits, first.cache_misses) == (0, 6)
    files = sorted((tmp_path / "tokenized").iterdir())
    assert len(files) == 6 and all(f.suffix == ".npz" and not f.name.startswith(".") for f in files)
    second = make_dm(tokenizer, tmp_path)
    second.setup(None)
    assert (second.cache_hits, second.cache_misses) == (6, 0), "a second run does not re-tokenise"
    for stage in ("train", "dev", "test"):
        assert np.array_equal(first._datasets[stage].lengths(), second._datasets[stage].lengths())
    assert second.eval_examples == first.eval_examples
    other = make_dm(tokenizer, tmp_path, model_cfg=replace(PLAIN, template="Q: {q}\nA: {a}"))
    other.setup("test")
    assert other.cache_misses == 2, "another template is another cache entry"
    files[0].write_bytes(b"not an npz")
    third = make_dm(tokenizer, tmp_path)
    with caplog.at_level(logging.WARNING):
        third.setup(None)
    assert third.cache_misses == 1 and "unreadable" in caplog.text


def test_one_warning_counts_the_truncated_prompts(tokenizer, tmp_path):
    dm = make_dm(tokenizer, tmp_path, benchmark=SyntheticQA(long_every=5), max_length=72)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup(None)
    messages = [str(w.message) for w in caught if "prompts were longer" in str(w.message)]
    # questions 0, 5, 10, ... of each split are long: train 8, dev 2, test 3 per language
    assert dm.truncated_prompts == {"train": {"en": 8, "de": 8}, "dev": {"en": 2, "de": 2},
                                    "test": {"fr": 3, "en": 3}}
    assert len(messages) == 1 and messages[0].startswith("26 of 124 prompts")
    room = 72 - 16
    batch_rows = [real_ids(b, r) for b in dm.test_dataloader() for r in range(len(b["index"]))]
    assert max(map(len, batch_rows)) <= room
    assert all(len(seq) <= 72 for seq, *_ in dm._datasets["train"])


def test_fitting_needs_a_prompt_format_checked_for_training(tokenizer, tmp_path):
    generation_only = PromptFormat(replace(PLAIN, template="Q: {q} A:"), tokenizer, training=False)
    dm = GenerationDataModule(SyntheticQA(), tokenizer, generation_only, source_languages=["en"],
                              target_languages=["fr"], batch_size=4, eval_batch_size=4, num_training_batches=2, seed=0,
                              cache_dir=tmp_path, max_length=96, max_new_tokens=16)
    dm.setup("test")
    with pytest.raises(ConfigError, match="training=True"):
        dm.setup("fit")


def test_prompt_room_too_small_for_the_template_is_a_config_error(tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="max_new_tokens"):
        make_dm(tokenizer, tmp_path, max_length=32, max_new_tokens=30)
