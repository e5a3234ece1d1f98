"""The RAG pipeline of one run: retrieve, rerank, identify, translate, judge, rewrite, filter, generate.

Every model stage runs in Lightning's predict loop (:mod:`xlt_runner.rag.predict`) on the run's
trainer. Everything upstream of generation is cached by content in a :class:`~xlt_runner.rag.cache.RagCache`
(stages ``retrieval``, ``translation``, ``judgement``, ``rewrite``), so a sweep over generators
retrieves, translates and judges each passage once; a stage model is loaded only when some of its
work is not cached, so a warm rerun loads the generator alone. :meth:`RagPipeline.run` returns one
row per query (what ``predictions.jsonl`` holds) and :attr:`RagPipeline.summary` the counters and
timings the run record keeps under ``rag``.

Which passages the generator sees (``method``): ``translate`` (foreign passages replaced by their
translation into the query language), ``tags`` (each translation followed by its judged quality,
translations ordered by score after the passages already in the query language), ``hard_filter``
(translations dropped by the judge's scores), ``rewrite`` (DKM-RAG: each translation rewritten by an
LLM for the question). ``rag_base`` sets none of them: the passages as retrieved.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from xlt_runner.config import ConfigError
from xlt_runner.data import GenerationExample
from xlt_runner.rag import Passage
from xlt_runner.rag.cache import RagCache, content_key
from xlt_runner.rag.predict import BatchPredictor, predict_items

#: Cache stages (the ``stage`` column of the store; counters in the record are keyed by them).
#: ``translation_chunk`` holds the translations of a long text's chunks as their batches finish.
RETRIEVAL, TRANSLATION, TRANSLATION_CHUNK = "retrieval", "translation", "translation_chunk"
JUDGEMENT, REWRITE = "judgement", "rewrite"
#: Schema of cached values; part of every key, so a change of what a stage stores never reads old entries.
CACHE_VERSION = 1


def _model_fields(model_cfg, keys: Sequence[str]) -> dict[str, Any]:
    data = OmegaConf.to_container(OmegaConf.create(model_cfg), resolve=True) if not isinstance(model_cfg, dict) else model_cfg
    return {k: data.get(k) for k in keys}


#: What a loaded model is: the weights' source, their dtype and how the loader builds the model.
WEIGHT_FIELDS = ("kind", "pretrained", "gguf_file", "packaged", "tiny", "revision", "dtype", "trust_remote_code")


def model_identity(model_cfg) -> dict[str, Any]:
    """What determines a stage model's outputs besides its inputs (part of every cache key): its
    source, dtype, prompt format, input length limit and pooling."""
    return _model_fields(model_cfg, ("kind", "pretrained", "gguf_file", "packaged", "tiny", "revision", "dtype",
                                     "format", "template", "max_length", "pooling"))


class ModelPool:
    """Stage models, loaded on first use and shared: a stage whose model has the generator's (or
    another stage's) weights (:data:`WEIGHT_FIELDS`) uses the same loaded model, whatever its
    ``max_length``, prompt format or pooling (each stage applies its own). ``loaded`` lists what was loaded."""

    def __init__(self, generator_cfg, generator, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self._models: dict[str, Any] = {self._key(generator_cfg): generator}
        self.loaded: list[str] = []

    @staticmethod
    def _key(model_cfg) -> str:
        return json.dumps(_model_fields(model_cfg, WEIGHT_FIELDS), sort_keys=True)

    def get(self, model_cfg, role: str):
        from xlt_runner.models import load_backbone
        key = self._key(model_cfg)
        if key not in self._models:
            print(f"[xlt-run] rag: loading the {role} model {model_cfg.name}")
            self._models[key] = load_backbone(model_cfg, self.cache_dir)
            self.loaded.append(f"{role}:{model_cfg.name}")
        return self._models[key]

    def cross_encoder(self, model_cfg):
        """A reranker: ``AutoModelForSequenceClassification`` from ``model.pretrained`` (hub id or directory)."""
        key = "cross-encoder:" + self._key(model_cfg)
        if key not in self._models:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
            if not model_cfg.pretrained:
                raise ConfigError("method.reranker.model needs model.pretrained (a cross-encoder's hub id or directory)")
            print(f"[xlt-run] rag: loading the reranker {model_cfg.name}")
            model = AutoModelForSequenceClassification.from_pretrained(model_cfg.pretrained, revision=model_cfg.revision)
            self._models[key] = (model.eval(), AutoTokenizer.from_pretrained(model_cfg.pretrained, revision=model_cfg.revision))
            self.loaded.append(f"reranker:{model_cfg.name}")
        return self._models[key]


@dataclass
class QueryState:
    """One query on its way through the pipeline."""
    example: GenerationExample
    iso: str  # ISO 639-1 of the query language
    retrieved: list[dict] = field(default_factory=list)  # top-n, in rank order: pid, dense, rerank
    top_k: list[str] = field(default_factory=list)  # pids of the top-k dense candidates


def _device(model) -> torch.device:
    return next(model.parameters()).device


class RagPipeline:
    """One run's pipeline. ``cfg``: the method section; ``generator``: the run's decoder backbone
    and ``generator_cfg`` its model section; ``corpus`` the benchmark's corpus; ``cache`` the shared store."""

    def __init__(self, cfg: DictConfig, generator, generator_cfg, *, corpus, cache: RagCache, cache_dir: str,
                 max_new_tokens: int, stop_strings: Sequence[str], identifier, batch_size: int) -> None:
        self.cfg, self.generator, self.generator_cfg = cfg, generator, generator_cfg
        self.corpus, self.cache, self.cache_dir = corpus, cache, cache_dir
        self.max_new_tokens, self.stop_strings = max_new_tokens, list(stop_strings)
        self.identifier = identifier  # the language of every shown passage and of every answer
        self.batch_size = batch_size  # the generator's (benchmark.eval_batch_size)
        self.pool = ModelPool(generator_cfg, generator, cache_dir)
        self.summary: dict[str, Any] = {"timings_s": {}, "index": None}  # index: None when retrieval was all cached
        self._by_pid = {p.pid: p for p in corpus.passages}

    # ------------------------------------------------------------------------ driver
    def run(self, trainer, examples: Sequence[GenerationExample]) -> list[dict]:
        from xlt_runner.metrics.language_id import iso639_1
        from xlt_runner.rag.prompting import MessageRenderer
        MessageRenderer(self.generator_cfg, self.generator.tokenizer, "model")  # model.format=chat without a template fails here, before any stage
        states = [QueryState(e, iso639_1(e.lang)) for e in examples]
        self._timed("retrieval", self.retrieve, trainer, states)
        shown = self._timed("language_id", self.identify, states)
        translations = self._timed("translation", self.translate, trainer, states, shown) if self.cfg.translate else {}
        judgements = (self._timed("judgement", self.judge, trainer, translations)
                      if self.cfg.translate and (self.cfg.tags or self.cfg.hard_filter is not None) else {})
        rewrites = (self._timed("rewrite", self.rewrite_passages, trainer, states, shown, translations)
                    if self.cfg.translate and self.cfg.rewrite else {})
        rows = self._timed("generation", self.generate, trainer, states, shown, translations, judgements, rewrites)
        self.summary["cache"] = self.cache.counters
        self.summary["models_loaded"] = list(self.pool.loaded)
        return rows

    def _timed(self, name: str, function, *args):
        start = time.perf_counter()
        result = function(*args)
        self.summary["timings_s"][name] = round(time.perf_counter() - start, 3)
        return result

    # ------------------------------------------------------------------- retrieval
    def retrieval_identity(self) -> dict[str, Any]:
        r, rr = self.cfg.retriever, self.cfg.reranker
        return {"version": CACHE_VERSION, "corpus": self.corpus.fingerprint, "encoder": model_identity(r.model),
                "query_prefix": r.query_prefix, "passage_prefix": r.passage_prefix, "normalize": r.normalize,
                "top_k": r.top_k, "top_n": rr.top_n,
                "reranker": None if rr.model is None else {**model_identity(rr.model), "max_length": rr.max_length}}

    def retrieve(self, trainer, states: list[QueryState]) -> None:
        """Top-k dense candidates of every query, reranked to top-n; cached per query text."""
        identity = self.retrieval_identity()
        keys = [content_key(RETRIEVAL, identity, s.example.prompt) for s in states]
        cached = self.cache.get_many(RETRIEVAL, list(dict.fromkeys(keys)))
        todo = [i for i, k in enumerate(keys) if k not in cached]
        if todo:
            computed = self._retrieve_uncached(trainer, [states[i].example.prompt for i in todo])
            fresh = {keys[i]: value for i, value in zip(todo, computed)}
            self.cache.put_many(RETRIEVAL, fresh)
            cached.update(fresh)
        for state, key in zip(states, keys):
            value = cached[key]
            state.retrieved, state.top_k = value["shown"], value["top_k"]

    def _retrieve_uncached(self, trainer, questions: list[str]) -> list[dict]:
        from xlt_runner.rag.retrieval import ExactIndex, query_input
        r = self.cfg.retriever
        encoder = self.pool.get(r.model, "retriever")
        embeddings = self._corpus_embeddings(trainer, encoder)
        queries = self._encode(trainer, encoder, [query_input(q, r.query_prefix) for q in questions])
        index = ExactIndex(embeddings, backend=r.index)
        scores, indices = index.search(torch.stack(queries), min(r.top_k, len(self.corpus.passages)))
        candidates = [[(self.corpus.passages[j].pid, float(s)) for s, j in zip(row_s.tolist(), row_i.tolist())]
                      for row_s, row_i in zip(scores, indices)]
        rr = self.cfg.reranker
        rerank = self._rerank(trainer, questions, candidates) if rr.model is not None else None
        results = []
        for q, cands in enumerate(candidates):
            order = list(range(len(cands)))
            if rerank is not None:
                order.sort(key=lambda j: (-rerank[q][j], j))
            shown = [{"pid": cands[j][0], "dense": cands[j][1], "rerank": None if rerank is None else rerank[q][j]}
                     for j in order[:rr.top_n]]
            results.append({"shown": shown, "top_k": [pid for pid, _ in cands]})
        return results

    def _corpus_embeddings(self, trainer, encoder) -> torch.Tensor:
        """The corpus' passage embeddings: from ``<cache_dir>/rag_index/<key>.safetensors``, or encoded
        (in the predict loop) and saved there."""
        from xlt_runner.rag.retrieval import index_key, index_path, load_embeddings, passage_input, save_embeddings
        r = self.cfg.retriever
        key = index_key(self.corpus.fingerprint, r, encoder.source)
        path = index_path(self.cache_dir, key)
        loaded = load_embeddings(path)
        self.summary["index"] = {"key": key, "path": str(path), "passages": len(self.corpus.passages),
                                 "built": loaded is None}
        if loaded is not None:
            return loaded[0]
        start = time.perf_counter()
        texts = [passage_input(p, r.passage_prefix) for p in self.corpus.passages]
        print(f"[xlt-run] rag: encoding {len(texts):,} passages with {r.model.name} (once per corpus and encoder)")
        embeddings = torch.stack(self._encode(trainer, encoder, texts))
        if trainer.is_global_zero:
            save_embeddings(path, embeddings, {"corpus": self.corpus.fingerprint, "encoder": r.model.name})
        self.summary["index"]["build_s"] = round(time.perf_counter() - start, 3)
        return embeddings

    def _encode(self, trainer, encoder, texts: list[str]) -> list[torch.Tensor]:
        """The retriever's vector of each text (CPU), encoded in the predict loop."""
        from xlt_runner.rag.retrieval import encode_texts
        r = self.cfg.retriever
        step = lambda batch: list(encode_texts(encoder.model, encoder.tokenizer, batch, pooling=r.model.pooling,
                                               normalize=r.normalize, max_length=r.model.max_length).cpu())
        return predict_items(trainer, BatchPredictor({"encoder": encoder.model}, step), texts, batch_size=r.batch_size,
                             length=len)

    def _rerank(self, trainer, questions: list[str], candidates: list[list[tuple[str, float]]]) -> list[list[float]]:
        from xlt_runner.rag.retrieval import rerank_scores
        rr = self.cfg.reranker
        model, tokenizer = self.pool.cross_encoder(rr.model)
        pairs = [(q, self._passage_text(pid)) for q, cands in zip(questions, candidates) for pid, _ in cands]
        step = lambda batch: rerank_scores(model, tokenizer, batch, max_length=rr.max_length).cpu().tolist()
        flat = predict_items(trainer, BatchPredictor({"reranker": model}, step), pairs, batch_size=rr.batch_size,
                             length=lambda pair: len(pair[1]))
        out, at = [], 0
        for cands in candidates:
            out.append(flat[at:at + len(cands)])
            at += len(cands)
        return out

    def _passage_text(self, pid: str) -> str:
        from xlt_runner.rag.retrieval import passage_input
        return passage_input(self._by_pid[pid], "")

    # ----------------------------------------------------------------- language ID
    def identify(self, states: list[QueryState]) -> dict[str, str | None]:
        """The language (ISO 639-1) of every shown passage: the identifier's, else the corpus'
        declared language, else None (then the passage is shown untranslated and counted)."""
        from xlt_runner.metrics.language_id import iso639_1
        languages: dict[str, str | None] = {}
        unidentified = 0
        for state in states:
            for hit in state.retrieved:
                pid = hit["pid"]
                if pid in languages:
                    continue
                passage = self._by_pid[pid]
                found = self.identifier.identify(passage.text)
                if found is None and passage.lang:
                    found = iso639_1(passage.lang)
                unidentified += found is None
                languages[pid] = found
        self.summary["language_id"] = {"passages": len(languages), "unidentified": unidentified}
        return languages

    # ------------------------------------------------------------------- translation
    def translator_identity(self) -> dict[str, Any]:
        t = self.cfg.translator
        return {"version": CACHE_VERSION, "model": model_identity(t.model), "max_input_tokens": t.max_input_tokens,
                "ratio": t.max_new_tokens_ratio, "extra": t.max_new_tokens_extra, "num_beams": t.num_beams,
                "language_codes": dict(t.language_codes or {}),
                "prompt": t.prompt if t.model.kind == "decoder" else None,
                "stop_strings": list(t.stop_strings) if t.model.kind == "decoder" else None}

    def _translation_code(self, lang: str) -> str:
        """The translator's code for ``lang``: NLLB's for a seq2seq model (ConfigError when there is
        none), the ISO code itself for an LLM (whose prompt names the language)."""
        from xlt_runner.rag.translation import nllb_code
        t = self.cfg.translator
        return nllb_code(lang, dict(t.language_codes or {})) if t.model.kind == "seq2seq" else lang

    def translate(self, trainer, states: list[QueryState], languages: dict[str, str | None]) -> dict[tuple[str, str], dict]:
        """``(pid, target ISO) -> {"title", "text", "source"}`` for every shown passage whose language
        differs from its query's (passages of unknown language stay untranslated)."""
        wanted: dict[tuple[str, str], str] = {}
        for state in states:
            for hit in state.retrieved:
                source = languages[hit["pid"]]
                if source is not None and source != state.iso:
                    wanted[(hit["pid"], state.iso)] = source
        for lang in {t for _, t in wanted} | set(wanted.values()):
            self._translation_code(lang)  # a language without a translation code fails here, before any model loads
        identity = self.translator_identity()
        texts: dict[str, tuple[str, str, str]] = {}  # key -> (text, source, target)
        for (pid, target), source in wanted.items():
            p = self._by_pid[pid]
            for part in (p.title, p.text):
                if part:
                    texts.setdefault(content_key(TRANSLATION, identity, part, source, target), (part, source, target))
        done = self.cache.get_many(TRANSLATION, list(texts))
        todo = {k: v for k, v in texts.items() if k not in done}
        if todo:
            fresh = self._translate_uncached(trainer, todo, identity)
            self.cache.put_many(TRANSLATION, fresh)
            done.update(fresh)
        out = {}
        for (pid, target), source in wanted.items():
            p = self._by_pid[pid]
            get = lambda part: done[content_key(TRANSLATION, identity, part, source, target)] if part else ""
            out[(pid, target)] = {"title": get(p.title), "text": get(p.text), "source": source}
        self.summary["translation"] = {"passages": len(wanted), "texts": len(texts), "computed": len(todo)}
        return out

    def _translate_uncached(self, trainer, todo: dict[str, tuple[str, str, str]], identity: dict) -> dict[str, str]:
        """Translations of the ``todo`` texts (key -> (text, source, target)). Long texts are split
        into chunks; each chunk's translation is stored (stage ``translation_chunk``) as its batch
        finishes, so a killed job resumes from its last batch."""
        from xlt_runner.rag.translation import assemble, build_translator, translation_plan
        t = self.cfg.translator
        backbone = self.pool.get(t.model, "translator")
        translator = build_translator(backbone.model, backbone.tokenizer, t)
        keys = list(todo)
        chunks, owners = translation_plan([todo[k][0] for k in keys], translator.count_tokens, t.max_input_tokens)
        items = [(chunk, self._translation_code(todo[keys[o]][1]), self._translation_code(todo[keys[o]][2]))
                 for chunk, o in zip(chunks, owners)]
        chunk_keys = [content_key(TRANSLATION_CHUNK, identity, *item) for item in items]
        done = self.cache.get_many(TRANSLATION_CHUNK, list(dict.fromkeys(chunk_keys)))
        missing = [i for i, key in enumerate(chunk_keys) if key not in done]
        print(f"[xlt-run] rag: translating {len(keys):,} texts ({len(missing):,} of {len(chunks):,} chunks to do) "
              f"with {t.model.name}")

        def store(indices: list[int], outputs: list[str]) -> None:
            self.cache.put_many(TRANSLATION_CHUNK, {chunk_keys[missing[i]]: out for i, out in zip(indices, outputs)})

        new = predict_items(trainer, BatchPredictor({"translator": backbone.model}, translator.translate_batch),
                            [items[i] for i in missing], batch_size=t.batch_size, length=lambda item: len(item[0]),
                            on_batch=store)
        done.update({chunk_keys[i]: out for i, out in zip(missing, new)})
        translated = [done[key] for key in chunk_keys]
        targets = [todo[k][2] for k in keys]
        joined = assemble(owners, translated, len(keys), targets)
        return dict(zip(keys, joined))

    # ---------------------------------------------------------------------- judging
    def judge_identity(self) -> dict[str, Any]:
        j = self.cfg.judge
        return {"version": CACHE_VERSION, "model": model_identity(j.model), "mode": j.mode,
                "max_new_tokens": j.max_new_tokens, "max_text_tokens": j.max_text_tokens,
                "prompts": OmegaConf.to_container(OmegaConf.create(j.prompts), resolve=True)}

    def judge(self, trainer, translations: dict[tuple[str, str], dict]) -> dict[tuple[str, str], dict]:
        """``(pid, target) -> {"scores": {criterion: 0-5} | None, "raw": judge output}`` of each
        translated passage's text; a judge output that gives no score is a recorded failure."""
        identity = self.judge_identity()
        keys = {}
        for (pid, target), t in translations.items():
            keys[(pid, target)] = content_key(JUDGEMENT, identity, self._by_pid[pid].text, t["text"], t["source"], target)
        done = self.cache.get_many(JUDGEMENT, list(set(keys.values())))
        todo = {}
        for (pid, target), key in keys.items():
            if key not in done:
                todo[key] = (self._by_pid[pid].text, translations[(pid, target)]["text"],
                             translations[(pid, target)]["source"], target)
        if todo:
            done.update(self._judge_uncached(trainer, todo))  # stored as the batches finish
        out = {pt: done[key] for pt, key in keys.items()}
        failures = sum(v["scores"] is None for v in out.values())
        self.summary["judgement"] = {"judged": len(out), "failures": failures, "computed": len(todo)}
        return out

    def _judge_uncached(self, trainer, todo: dict[str, tuple[str, str, str, str]]) -> dict[str, dict]:
        from xlt_runner.generation import left_pad
        from xlt_runner.rag.judging import CRITERIA, expected_digit_score, parse_judgement
        from xlt_runner.rag.prompting import MessageRenderer, fill, localized
        from xlt_runner.rag.translation import language_name
        j = self.cfg.judge
        backbone = self.pool.get(j.model, "judge")
        renderer = MessageRenderer(j.model, backbone.tokenizer, "method.judge.model")
        tokenizer = backbone.tokenizer

        def clip(text: str) -> str:
            offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            return text if len(offsets) <= j.max_text_tokens else text[:offsets[j.max_text_tokens - 1][1]]

        def prompt(source, translation, src, tgt, template) -> str:
            return fill(template, source_language=language_name(src), target_language=language_name(tgt),
                        source=clip(source), translation=clip(translation))

        keys = list(todo)
        print(f"[xlt-run] rag: judging {len(keys):,} translations with {j.model.name} ({j.mode})")
        if j.mode == "generate":
            prompts = [renderer.ids(None, prompt(*todo[k], localized(j.prompts["generate"], todo[k][3],
                                                                      "method.judge.prompts.generate")))
                       for k in keys]
            verdict = lambda text: {"scores": parse_judgement(text), "raw": text}
            store = lambda indices, outputs: self.cache.put_many(
                JUDGEMENT, {keys[i]: verdict(text) for i, (text, _, _) in zip(indices, outputs)})
            raw = self._generate(trainer, backbone, renderer, prompts, j.batch_size, j.max_new_tokens, [], "judge",
                                 on_batch=store)
            return {k: verdict(text) for k, text in zip(keys, raw)}
        digits = []
        for d in "012345":
            ids = tokenizer(d, add_special_tokens=False)["input_ids"]
            if len(ids) != 1:
                raise ConfigError(f"method.judge.mode=logprob needs the digits 0-5 to be single tokens; the tokenizer "
                                  f"of {j.model.name} splits {d!r} into {ids}. Use method.judge.mode=generate")
            digits.append(ids[0])

        def criteria_prompts(k: str) -> list[list[int]]:
            text = prompt(*todo[k], localized(j.prompts["logprob"], todo[k][3], "method.judge.prompts.logprob"))
            return [renderer.ids(None, fill(text, criterion=fill(j.prompts["criteria"][criterion],
                                                                 target_language=language_name(todo[k][3]))))
                    for criterion in CRITERIA]

        model = backbone.model
        pad = tokenizer.pad_token_id

        def step(batch: list[list[list[int]]]) -> list[dict]:
            """One item is one translation's three criterion prompts: its verdict is whole in one
            batch (and on one rank), so it is stored with the batch."""
            ids, mask = left_pad([p for item in batch for p in item], pad, _device(model))
            with torch.inference_mode():
                position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                               logits_to_keep=1).logits[:, -1, :]
            values = expected_digit_score(logits[:, digits].float()).cpu().view(len(batch), len(CRITERIA)).tolist()
            return [{"scores": {c: round(float(v), 4) for c, v in zip(CRITERIA, row)}, "raw": None} for row in values]

        store = lambda indices, outputs: self.cache.put_many(JUDGEMENT, {keys[i]: v for i, v in zip(indices, outputs)})
        values = predict_items(trainer, BatchPredictor({"judge": model}, step), [criteria_prompts(k) for k in keys],
                               batch_size=j.batch_size, length=lambda item: max(map(len, item)), on_batch=store)
        return dict(zip(keys, values))

    # --------------------------------------------------------------------- rewriting
    def rewrite_passages(self, trainer, states, languages, translations) -> dict[tuple[str, str], str]:
        """DKM-RAG: ``(query id, pid) -> the translation rewritten by the rewriter for that question``."""
        from xlt_runner.rag.prompting import MessageRenderer, fill, localized
        from xlt_runner.rag.translation import language_name
        rw = self.cfg.rewriter
        identity = {"version": CACHE_VERSION, "model": model_identity(rw.model), "max_new_tokens": rw.max_new_tokens,
                    "prompts": OmegaConf.to_container(OmegaConf.create(rw.prompts), resolve=True)}
        wanted = {}
        for state in states:
            for hit in state.retrieved:
                t = translations.get((hit["pid"], state.iso))
                if t is not None:
                    wanted[(state.example.id, state.example.lang, hit["pid"])] = (
                        content_key(REWRITE, identity, state.example.prompt, t["text"], state.iso),
                        state.example.prompt, t["text"], state.iso)
        done = self.cache.get_many(REWRITE, list({v[0] for v in wanted.values()}))
        todo = {v[0]: v[1:] for v in wanted.values() if v[0] not in done}
        if todo:
            backbone = self.pool.get(rw.model, "rewriter")
            renderer = MessageRenderer(rw.model, backbone.tokenizer, "method.rewriter.model")
            keys = list(todo)
            prompts = [renderer.ids(None, fill(localized(rw.prompts["rewrite"], todo[k][2], "method.rewriter.prompts.rewrite"),
                                              language=language_name(todo[k][2]), question=todo[k][0], text=todo[k][1]))
                       for k in keys]
            print(f"[xlt-run] rag: rewriting {len(keys):,} passages with {rw.model.name}")
            store = lambda indices, outputs: self.cache.put_many(
                REWRITE, {keys[i]: text for i, (text, _, _) in zip(indices, outputs)})
            texts = self._generate(trainer, backbone, renderer, prompts, rw.batch_size, rw.max_new_tokens, [],
                                   "rewriter", on_batch=store)
            done.update(zip(keys, texts))
        self.summary["rewrite"] = {"rewritten": len(wanted), "computed": len(todo)}
        return {k: done[v[0]] for k, v in wanted.items()}

    # -------------------------------------------------------------------- generation
    def _generate(self, trainer, backbone, renderer, prompts: list[list[int]], batch_size: int, max_new_tokens: int,
                  stop_strings: list[str], role: str, on_batch=None) -> list[str]:
        outputs = self._generate_outputs(trainer, backbone, renderer, prompts, batch_size, max_new_tokens,
                                         stop_strings, role, on_batch)
        return [o.text for o in outputs]

    def _generate_outputs(self, trainer, backbone, renderer, prompts, batch_size, max_new_tokens, stop_strings, role,
                          on_batch=None):
        """Greedy answers to ``prompts`` (token ids); ``on_batch(indices, [(text, new tokens, stop
        reason)])`` after every batch (see :func:`~xlt_runner.rag.predict.predict_items`)."""
        from xlt_runner.generation import GenerationOutput, generate_greedy, left_pad
        model, tokenizer = backbone.model, backbone.tokenizer
        limit = getattr(model.config, "max_position_embeddings", None)

        def step(batch: list[list[int]]) -> list[tuple]:  # plain tuples: Lightning refuses frozen dataclasses
            ids, mask = left_pad(batch, tokenizer.pad_token_id, _device(model))
            outputs = generate_greedy(model, tokenizer, ids, mask, max_new_tokens=max_new_tokens,
                                      stop_strings=stop_strings, eos_token_ids=renderer.stop_token_ids)
            return [(o.text, o.num_new_tokens, o.stop_reason) for o in outputs]

        too_long = [len(p) for p in prompts if limit and len(p) + max_new_tokens > limit]
        if too_long:
            raise ConfigError(f"{len(too_long)} {role} prompts are longer than the model's "
                              f"{limit} positions allow with {max_new_tokens} new tokens (longest {max(too_long)})")
        rows = predict_items(trainer, BatchPredictor({role: model}, step), prompts, batch_size=batch_size, length=len,
                             on_batch=on_batch)
        return [GenerationOutput(*row) for row in rows]

    def shown_passages(self, state: QueryState, languages, translations, judgements, rewrites) -> list[dict]:
        """The passages the generator sees for ``state``, in order, each with what the record keeps:
        originals (already in the query language, or of unknown language) first in rank order, then
        translations (ordered by mean judged score when tags are shown; unscored last), filtered and
        rewritten as the method says."""
        from xlt_runner.rag.judging import CRITERIA
        originals, translated = [], []
        for rank, hit in enumerate(state.retrieved):
            pid = hit["pid"]
            passage: Passage = self._by_pid[pid]
            entry = {"pid": pid, "rank": rank, "dense": hit["dense"], "rerank": hit["rerank"],
                     "declared_lang": passage.lang, "identified_lang": languages[pid], "translated": False,
                     "title": passage.title, "text": passage.text, "scores": None, "judge_failed": None,
                     "filtered": False, "tag": None, "truncated": False, "judge_output": None}
            t = translations.get((pid, state.iso))
            if t is None:
                originals.append(entry)
                continue
            entry.update(translated=True, title=t["title"] or passage.title, text=t["text"])
            if judgements:
                verdict = judgements[(pid, state.iso)]
                entry["scores"], entry["judge_failed"] = verdict["scores"], verdict["scores"] is None
                entry["judge_output"] = verdict["raw"]  # the judge's text (None in logprob mode)
            if rewrites:
                entry["text"] = rewrites[(state.example.id, state.example.lang, pid)]
            translated.append(entry)
        f = self.cfg.hard_filter
        if f is not None:
            for entry in translated:
                scores = entry["scores"]
                if scores is None:
                    entry["filtered"] = not f.keep_unscored
                else:
                    below = [scores[c] < f.threshold for c in CRITERIA]
                    entry["filtered"] = all(below) if f.rule == "all_below" else any(below)
        if self.cfg.tags:
            translated.sort(key=lambda e: (e["scores"] is None,
                                           -(sum(e["scores"].values()) / len(CRITERIA)) if e["scores"] else 0.0,
                                           e["rank"]))
        return originals + translated

    def generate(self, trainer, states, languages, translations, judgements, rewrites) -> list[dict]:
        from xlt_runner.metrics.rag import char3_recall
        from xlt_runner.rag.judging import CRITERIA
        from xlt_runner.rag.prompting import MessageRenderer, ShownPassage, fill, generator_prompt, localized
        from xlt_runner.rag.translation import language_name
        renderer = MessageRenderer(self.generator_cfg, self.generator.tokenizer, "model")
        room = self.generator_cfg.max_length - self.max_new_tokens
        prompts, details = [], []
        for state in states:
            entries = self.shown_passages(state, languages, translations, judgements, rewrites)
            visible = [e for e in entries if not e["filtered"]]
            shown = []
            for e in visible:
                tag = None
                if self.cfg.tags and e["translated"]:
                    values = {c: (f"{e['scores'][c]:.1f}" if e["scores"] else "?") for c in CRITERIA}
                    tag = fill(localized(self.cfg.prompts["tag"], state.iso, "method.prompts.tag"), **values)
                    e["tag"] = tag
                shown.append(ShownPassage(e["title"], e["text"], tag))
            built = generator_prompt(renderer, self.cfg.prompts, state.iso, language_name(state.iso),
                                     state.example.prompt, shown, room=room, tags_shown=self.cfg.tags)
            for e, cut in zip(visible, built.truncated):
                e["truncated"] = cut
            prompts.append(built.ids)
            details.append(entries)
        print(f"[xlt-run] rag: generating {len(prompts):,} answers with {self.generator_cfg.name}")
        outputs = self._generate_outputs(trainer, self.generator, renderer, prompts,
                                         self.batch_size, self.max_new_tokens, self.stop_strings,
                                         "generator")
        rows = []
        for state, entries, ids, output in zip(states, details, prompts, outputs):
            e = state.example
            answer_lang = self.identifier.identify(output.text) if any(ch.isalpha() for ch in output.text) else None
            translated = sum(x["translated"] for x in entries)
            foreign = sum(x["identified_lang"] is not None and x["identified_lang"] != state.iso for x in entries)
            rows.append({
                "id": e.id, "lang": e.lang, "question": e.prompt, "prediction": output.text,
                "references": list(e.references),
                "scores": {"char3_recall": char3_recall(output.text, e.references),
                           "answer_language": answer_lang, "answer_in_query_language":
                               None if answer_lang is None else answer_lang == state.iso},
                "retrieved": len(entries), "foreign": foreign, "translated": translated,
                "filtered": sum(x["filtered"] for x in entries),
                "judged": sum(x["scores"] is not None or bool(x["judge_failed"]) for x in entries),
                "judge_failures": sum(bool(x["judge_failed"]) for x in entries),
                "top_k": state.top_k, "passages": entries, "prompt_tokens": len(ids),
                "new_tokens": output.num_new_tokens, "stop_reason": output.stop_reason})
        return rows
