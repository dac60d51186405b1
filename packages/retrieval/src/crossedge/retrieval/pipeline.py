"""Search pipelines and the ``crossedge retrieval bench`` comparison.

One table: BM25, the bi-encoder zero-shot and trained, cross-encoder and
uni-encoder reranking of the bi-encoder's candidates, the bi-encoder students
distilled from the cross-encoder with each loss, and Trans-Encoder. Everything
trains on the stdlib collection's train split (or ``train_collection``) and is
evaluated on the test collection, with nDCG@10, MRR@10 and Recall@100 from
ir-measures plus per-query latency and indexing throughput.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from crossedge.core import CrossedgeError

from .collection import Collection, load_code_search, read_beir, sample_queries
from .index import DenseIndex
from .lexical import BM25Scorer
from .losses import InfoNCE, ListNetKL, Loss
from .metrics import means, paired_difference, per_query, ranking_to_run
from .options import ALL_METHODS, LOSS_NAMES, NEGATIVE_SOURCES, UNI_INITS
from .scorers import BiEncoder, CrossEncoder, Scorer, UniEncoder
from .training import ListExample, TeacherCache, TrainConfig, Trainer, list_loss, trans_encoder

Ranking = dict[str, list[tuple[str, float]]]


@dataclass
class SearchResult:
    """Rankings for a set of queries, with the time they took."""

    rankings: Ranking
    seconds: float
    index_seconds: float = 0.0
    documents: int = 0

    def ms_per_query(self) -> float:
        """Online milliseconds per query."""
        return 1000 * self.seconds / max(1, len(self.rankings))


def bm25_search(collection: Collection, qids: Sequence[str], k: int = 100) -> SearchResult:
    """Index the corpus with BM25 and retrieve ``k`` per query."""
    ids = collection.doc_ids()
    start = time.perf_counter()
    bm25 = BM25Scorer().index(ids, [collection.doc_text(d) for d in ids])
    index_s = time.perf_counter() - start
    start = time.perf_counter()
    results = bm25.search([collection.queries[q] for q in qids], k=k)
    return SearchResult(dict(zip(qids, results, strict=True)), time.perf_counter() - start, index_s, len(ids))


def dense_index(bi: BiEncoder, collection: Collection, progress: bool = False) -> tuple[DenseIndex, float]:
    """Embed the whole corpus; returns the index and the seconds it took."""
    ids = collection.doc_ids()
    start = time.perf_counter()
    embeddings = bi.encode([collection.doc_text(d) for d in ids], progress=progress)
    return DenseIndex(embeddings, ids), time.perf_counter() - start


def dense_search(
    bi: BiEncoder, collection: Collection, qids: Sequence[str], k: int = 100, progress: bool = False
) -> SearchResult:
    """Index the corpus with the bi-encoder, then encode each query and search by brute force."""
    index, index_s = dense_index(bi, collection, progress)
    start = time.perf_counter()
    rankings = {}
    for qid in qids:
        q = bi.encode([collection.queries[qid]], queries=True)
        rankings[qid] = [(index.ids[row], score) for row, score in index.search(q, k)[0]]
    return SearchResult(rankings, time.perf_counter() - start, index_s, len(index))


def rerank(
    scorer: Scorer, collection: Collection, first: Ranking, depth: int, batch_size: int = 32, progress: bool = False
) -> SearchResult:
    """Rescore the top ``depth`` of each first-stage ranking; documents below keep their order after them."""
    from tqdm.auto import tqdm

    rankings, elapsed = {}, 0.0
    for qid, ranked in tqdm(first.items(), desc=f"rerank {scorer.name}", disable=not progress, leave=False):
        head = [doc for doc, _ in ranked[:depth]]
        start = time.perf_counter()
        scores = scorer.score(collection.queries[qid], [collection.doc_text(d) for d in head], batch_size=batch_size)
        elapsed += time.perf_counter() - start
        reordered = sorted(zip(head, scores.tolist(), strict=True), key=lambda x: -x[1])
        rankings[qid] = reordered + [(doc, float("-inf")) for doc, _ in ranked[depth:]]
    return SearchResult(rankings, elapsed)


def ranked_training_documents(
    train: Collection,
    qids: Sequence[str],
    k: int,
    negatives: str = "bm25",
    miner: BiEncoder | None = None,
    progress: bool = False,
) -> list[list[str]]:
    """Each query's top ``k`` documents of the training corpus, by BM25 or by the ``miner`` bi-encoder."""
    if negatives not in NEGATIVE_SOURCES:
        raise CrossedgeError(f"unknown negatives {negatives!r}; choose from {', '.join(NEGATIVE_SOURCES)}")
    ids = train.doc_ids()
    queries = [train.queries[q] for q in qids]
    if negatives == "bm25":
        bm25 = BM25Scorer().index(ids, [train.doc_text(d) for d in ids])
        return [[d for d, _ in found] for found in bm25.search(queries, k=k)]
    if miner is None:
        raise CrossedgeError(
            "negatives='bi-encoder' needs the bi-encoder that mines them: pass miner=BiEncoder.from_pretrained(...)"
        )
    index, _ = dense_index(miner, train, progress)
    hits = index.search(miner.encode(queries, queries=True), k)
    return [[index.ids[row] for row, _ in found] for found in hits]


def training_lists(
    train: Collection,
    n_queries: int,
    n_candidates: int,
    seed: int = 0,
    labelled: bool = True,
    negatives: str = "bm25",
    miner: BiEncoder | None = None,
    progress: bool = False,
) -> list[ListExample]:
    """Training lists: each query's relevant document, then hard negatives.

    The negatives are the top non-relevant documents of BM25 (``negatives="bm25"``) or of the
    ``miner`` bi-encoder (``negatives="bi-encoder"``): the latter are the kind of near misses a
    reranker of that bi-encoder's candidates has to tell apart at search time. Bi-encoder negatives
    also skip documents relevant to another query with the very same text, which a dense miner ranks
    at the top and which are correct answers to this query too.
    """
    qids = sample_queries(train, n_queries, seed=seed)
    ids = train.doc_ids()
    same_text: dict[str, set[str]] = {}
    if negatives == "bi-encoder":
        for q, judged in train.qrels.items():
            if q in train.queries:
                same_text.setdefault(train.queries[q], set()).update(d for d, rel in judged.items() if rel > 0)
    depth = n_candidates + 5 + max((len(docs) for docs in same_text.values()), default=0)
    ranked = ranked_training_documents(train, qids, depth, negatives, miner, progress)
    examples = []
    for qid, found in zip(qids, ranked, strict=True):
        relevant = [d for d, rel in train.qrels[qid].items() if rel > 0 and d in train.corpus]
        if not relevant:
            continue
        skip = set(train.qrels[qid]) | same_text.get(train.queries[qid], set())
        chosen = [d for d in found if d not in skip][: n_candidates - 1]
        if len(chosen) < n_candidates - 1:
            # The ranking holds too few non-relevant documents (BM25 finds few sharing a word, or the
            # corpus is tiny): fill up with stable pseudo-random ones.
            filler = sorted(ids, key=lambda d: hashlib.sha256(f"{qid}|{d}".encode()).hexdigest())
            chosen += [d for d in filler if d not in skip and d not in chosen]
            chosen = chosen[: n_candidates - 1]
        if not chosen:
            continue
        docs = [relevant[0], *chosen]
        labels = (1.0,) + (0.0,) * len(chosen) if labelled else ()
        examples.append(ListExample(train.queries[qid], tuple(train.doc_text(d) for d in docs), labels=labels))
    return examples


def unlabelled_lists(
    train: Collection, n_queries: int, n_candidates: int, bi: BiEncoder, seed: int = 0, progress: bool = False
) -> list[tuple[str, tuple[str, ...]]]:
    """Each sampled query with the bi-encoder's top ``n_candidates`` documents: no relevance judgement is read.

    Trans-Encoder learns without labels, so its lists must not be built from them either (a list
    that always holds the relevant document would leak the judgements in).
    """
    qids = sample_queries(train, n_queries, seed=seed)
    ranked = ranked_training_documents(train, qids, n_candidates, "bi-encoder", bi, progress)
    return [(train.queries[q], tuple(train.doc_text(d) for d in found)) for q, found in zip(qids, ranked, strict=True)]


def subsample_corpus(collection: Collection, qids: Sequence[str], size: int, seed: int = 0) -> Collection:
    """Keep every document relevant to ``qids`` plus distractors in a stable hash order, ``size`` in all."""
    keep = {d for q in qids for d, rel in collection.qrels.get(q, {}).items() if rel > 0 and d in collection.corpus}
    others = sorted(
        (d for d in collection.corpus if d not in keep),
        key=lambda d: hashlib.sha256(f"{seed}|{d}".encode()).hexdigest(),
    )
    keep.update(others[: max(0, size - len(keep))])
    corpus = {d: doc for d, doc in collection.corpus.items() if d in keep}
    qrels = {q: collection.qrels[q] for q in qids if q in collection.qrels}
    queries = {q: collection.queries[q] for q in qids}
    return Collection(corpus, queries, qrels, name=f"{collection.name}[{len(corpus)} docs]", meta=collection.meta)


@dataclass
class BenchSettings:
    """Budgets and choices of one bench run (all of it goes into the JSON report)."""

    collection: str | None = None
    train_collection: str | None = None
    limit_queries: int | None = 100
    corpus_limit: int | None = None
    methods: tuple[str, ...] = ALL_METHODS
    losses: tuple[str, ...] = LOSS_NAMES
    model: str = "minilm-l6"
    train_queries: int = 64
    student_queries: int | None = None
    candidates: int = 4
    negatives: str = "bm25"
    head: str = "similarity"
    interaction_layers: int | None = None
    uni_init: str = "encoder"
    uni_epochs: int | None = None
    epochs: int = 1
    batch_size: int = 8
    lr: float = 3e-5
    rerank_depth: int = 50
    uni_depth: int = 20
    trans_cycles: int = 1
    max_doc_tokens: int = 128
    seed: int = 0
    progress: bool = True
    log: list[str] = field(default_factory=list)


def _row(method: str, metrics: dict[str, float], result: SearchResult, **extra: Any) -> dict[str, Any]:
    row = {"method": method, **metrics, "ms_per_query": result.ms_per_query()}
    if result.documents:
        row["index_docs_per_s"] = result.documents / max(result.index_seconds, 1e-9)
    row.update(extra)
    return row


def run_bench(settings: BenchSettings, say=print) -> dict[str, Any]:
    """Run the comparison; returns ``{"rows": [...], "summary": {...}, "settings": {...}}``."""
    from crossedge.core.cache import cache_dir

    from .losses import get_loss

    unknown = sorted(set(settings.methods) - set(ALL_METHODS))
    if unknown:
        raise CrossedgeError(f"unknown bench method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}")
    if settings.negatives not in NEGATIVE_SOURCES:
        raise CrossedgeError(f"unknown negatives {settings.negatives!r}; choose from {', '.join(NEGATIVE_SOURCES)}")
    if settings.uni_epochs is not None and settings.uni_epochs < 0:
        raise CrossedgeError(f"uni_epochs must be 0 or more, not {settings.uni_epochs}")
    if settings.uni_init not in UNI_INITS:
        raise CrossedgeError(f"unknown uni_init {settings.uni_init!r}; choose from {', '.join(UNI_INITS)}")
    if settings.uni_init == "cross-encoder" and (
        settings.head != "similarity" or settings.interaction_layers is not None
    ):
        # Checked before any training: the copy needs the similarity head with every layer interacting.
        raise CrossedgeError(
            "uni_init='cross-encoder' copies the cross-encoder's similarity head and needs every layer to interact: "
            "use head='similarity' without interaction_layers, or uni_init='encoder'"
        )
    test = read_beir(settings.collection) if settings.collection else load_code_search("test")
    train = read_beir(settings.train_collection, split="train") if settings.train_collection else None
    qids = sample_queries(test, settings.limit_queries, seed=settings.seed)
    if not qids:
        raise CrossedgeError(f"collection {settings.collection or 'stdlib-code test'} has no judged queries")
    if settings.corpus_limit:
        test = subsample_corpus(test, qids, settings.corpus_limit, settings.seed)
    say(f"collection: {len(test.corpus)} documents, {len(qids)} queries (of {len(test.judged_queries())})")
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"documents": len(test.corpus), "queries": len(qids)}
    methods = set(settings.methods)
    config = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed)

    ndcg_by_query: dict[str, dict[str, float]] = {}

    def evaluate_row(name: str, result: SearchResult, **extra: Any) -> dict[str, Any]:
        values = per_query(ranking_to_run(result.rankings), test.qrels, qids)
        ndcg_by_query[name] = values["ndcg@10"]
        row = _row(name, means(values), result, **extra)
        rows.append(row)
        say(f"  {name}: ndcg@10={row['ndcg@10']:.4f} mrr@10={row['mrr@10']:.4f} recall@100={row['recall@100']:.4f}")
        return row

    def fresh(kind: type[Scorer]) -> Scorer:
        extra: dict[str, Any] = {}
        if kind is not BiEncoder:
            extra["head"] = settings.head
        if kind is CrossEncoder and settings.interaction_layers is not None:
            extra["interaction_layers"] = settings.interaction_layers
        return kind.from_pretrained(settings.model, seed=settings.seed, max_doc_tokens=settings.max_doc_tokens, **extra)

    # Every model the bench trains checkpoints under a key of everything that determines it, so a
    # later run with the same settings (e.g. ``--methods students`` after ``cross-rerank``) loads the
    # finished model instead of training it again, and an interrupted run resumes.
    key_parts: tuple[Any, ...] = (
        asdict(config),
        settings.model,
        settings.collection,
        settings.train_collection,
        settings.train_queries,
        settings.candidates,
        settings.max_doc_tokens,
    )
    # Lists with other negatives train other models. BM25 runs keep the key they had before the
    # choice existed, so their checkpoints stay valid.
    if settings.negatives != "bm25":
        key_parts += (f"negatives={settings.negatives}",)
    # The same goes for the head, which came later still: ``cls`` runs keep their old key.
    if settings.head != "cls":
        key_parts += (f"head={settings.head}", f"interaction_layers={settings.interaction_layers}")
    run_key = hashlib.sha256(repr(key_parts).encode()).hexdigest()[:16]
    checkpoints = cache_dir() / "retrieval" / "bench-checkpoints" / run_key

    def train_scorer(
        model: Scorer, examples: list[ListExample], loss: Loss, tag: str, own: TrainConfig | None = None
    ) -> Scorer:
        start = time.perf_counter()
        trainer = Trainer(model, examples, list_loss(loss), own or config, checkpoints / tag, tag, settings.progress)
        if trainer.latest_checkpoint() is not None:
            say(f"  {tag}: resuming from {trainer.latest_checkpoint()}")
        history = trainer.fit()
        summary.setdefault("training", {})[tag] = {
            "seconds": time.perf_counter() - start,
            "loss": history[-1]["loss"],
            "examples": len(examples),
        }
        return model

    if "bm25" in methods:
        result = bm25_search(test, qids)
        evaluate_row("bm25", result)
        summary["bm25_index_docs_per_s"] = rows[-1]["index_docs_per_s"]

    needs_first_stage = methods & {"bi-zero-shot", "cross-rerank", "uni-rerank"}
    needs_lists = methods & {"bi-trained", "cross-rerank", "uni-rerank", "students", "trans-encoder"}
    first = None
    if needs_first_stage:
        bi = fresh(BiEncoder)
        first = dense_search(bi, test, qids, progress=settings.progress)
        evaluate_row("bi-encoder zero-shot", first)
        summary["bi_index_docs_per_s"] = first.documents / first.index_seconds
        del bi
    examples: list[ListExample] = []
    if needs_lists:
        train = train or load_code_search("train")
        start = time.perf_counter()
        # The miner is the zero-shot first stage itself, so training negatives look like the candidates
        # the rerankers get at test time.
        miner = fresh(BiEncoder) if settings.negatives == "bi-encoder" else None
        examples = training_lists(
            train,
            settings.train_queries,
            settings.candidates,
            settings.seed,
            negatives=settings.negatives,
            miner=miner,
            progress=settings.progress,
        )
        del miner
        summary["train_lists"] = {
            "queries": len(examples),
            "candidates": settings.candidates,
            "negatives": settings.negatives,
            "seconds": time.perf_counter() - start,
        }
    # Students and Trans-Encoder may get a smaller budget than the teacher: the first N of its lists.
    student_examples = examples[: settings.student_queries] if settings.student_queries else examples
    if settings.student_queries:
        summary["student_lists"] = len(student_examples)

    if "bi-trained" in methods:
        bi_t = train_scorer(fresh(BiEncoder), examples, InfoNCE(), "bi-encoder")
        evaluate_row("bi-encoder trained", dense_search(bi_t, test, qids, progress=settings.progress))
        del bi_t

    teacher = None
    uni_from_cross = "uni-rerank" in methods and settings.uni_init == "cross-encoder"
    if methods & {"cross-rerank", "students"} or uni_from_cross:
        teacher = train_scorer(fresh(CrossEncoder), examples, InfoNCE(), "cross-encoder")
    if "cross-rerank" in methods and first is not None:
        for depth in sorted({settings.rerank_depth, settings.uni_depth}, reverse=True):
            result = rerank(teacher, test, first.rankings, depth, progress=settings.progress)
            result.seconds += first.seconds
            rerank_ms = 1000 * (result.seconds - first.seconds) / len(qids)
            evaluate_row(f"cross-encoder rerank@{depth}", result, rerank_ms_per_query=rerank_ms)
    if "uni-rerank" in methods and first is not None:
        # From the trained cross-encoder (same encoder and head; only the query's attention to the
        # candidate is lost) or from the plain encoder, then trained in its own layout on the same lists.
        # ``uni_epochs=0`` keeps the starting weights as they are.
        uni = UniEncoder.from_scorer(teacher) if uni_from_cross else fresh(UniEncoder)
        uni_tag = "uni-encoder-from-cross" if uni_from_cross else "uni-encoder"
        if settings.uni_epochs is None:
            uni = train_scorer(uni, examples, InfoNCE(), uni_tag)
        elif settings.uni_epochs > 0:
            own = replace(config, epochs=settings.uni_epochs)
            uni = train_scorer(uni, examples, InfoNCE(), f"{uni_tag}-{settings.uni_epochs}-epochs", own)
        if uni_from_cross:
            uni_label = " (cross-encoder weights)" if settings.uni_epochs == 0 else " (from cross-encoder)"
        else:
            uni_label = " (untrained)" if settings.uni_epochs == 0 else ""
        result = rerank(uni, test, first.rankings, settings.uni_depth, batch_size=settings.uni_depth)
        result.seconds += first.seconds
        evaluate_row(
            f"uni-encoder rerank@{settings.uni_depth}{uni_label}",
            result,
            rerank_ms_per_query=1000 * (result.seconds - first.seconds) / len(qids),
        )
        # Same 20 pairs, same first stage: the speed ratio and quality gap the issue asks about.
        cross_name = f"cross-encoder rerank@{settings.uni_depth}"
        cross_row = next((r for r in rows if r["method"] == cross_name), None)
        if cross_row is not None:
            uni_row = rows[-1]
            summary["uni_vs_cross"] = {
                "candidates": settings.uni_depth,
                "speedup": cross_row["rerank_ms_per_query"] / uni_row["rerank_ms_per_query"],
                "ndcg_gap_points": 100 * (cross_row["ndcg@10"] - uni_row["ndcg@10"]),
            }
            if len(qids) > 1:
                gap = paired_difference(ndcg_by_query[cross_name], ndcg_by_query[uni_row["method"]])
                summary["uni_vs_cross"]["ndcg_gap_ci95_points"] = [100 * gap["low"], 100 * gap["high"]]
        del uni

    if "students" in methods:
        cache = TeacherCache(cache_dir() / "retrieval" / "teacher-scores")
        lists = [(ex.query, ex.documents) for ex in student_examples]
        teacher_id = "cross-encoder|" + hashlib.sha256(repr(asdict(config)).encode()).hexdigest()[:8]
        teacher_id += f"|{settings.model}|{settings.train_queries}|{settings.candidates}|{settings.max_doc_tokens}"
        if settings.negatives != "bm25":
            teacher_id += f"|negatives={settings.negatives}"
        if settings.head != "cls":
            teacher_id += f"|head={settings.head}|interaction_layers={settings.interaction_layers}"
        scores = cache.get_or_compute(teacher_id, lists, teacher.score, progress=settings.progress)
        distil = [ListExample(q, d, teacher=tuple(s)) for (q, d), s in zip(lists, scores, strict=True)]
        for loss_name in settings.losses:
            tag = f"student-{loss_name}" + (f"-{len(distil)}" if settings.student_queries else "")
            student = train_scorer(fresh(BiEncoder), distil, get_loss(loss_name), tag)
            evaluate_row(f"student {loss_name}", dense_search(student, test, qids, progress=settings.progress))
            del student
    del teacher

    if "trans-encoder" in methods:
        bi_u = fresh(BiEncoder)
        train = train or load_code_search("train")
        start = time.perf_counter()
        lists = unlabelled_lists(train, settings.student_queries or settings.train_queries, settings.candidates,
                                 bi_u, settings.seed, settings.progress)  # fmt: skip
        summary["trans_encoder_lists"] = {"lists": len(lists), "seconds": time.perf_counter() - start}
        start = time.perf_counter()
        history = trans_encoder(
            bi_u, lists, cycles=settings.trans_cycles, loss=ListNetKL(), config=config, progress=settings.progress
        )
        summary["trans_encoder"] = {"seconds": time.perf_counter() - start, "cycles": history.history}
        evaluate_row(
            f"trans-encoder bi ({settings.trans_cycles} cycle{'s' if settings.trans_cycles > 1 else ''})",
            dense_search(bi_u, test, qids, progress=settings.progress),
        )
    # Each row against the zero-shot bi-encoder on the same queries, with a paired bootstrap interval:
    # whether a gain of a point or two is more than the luck of the query sample.
    base = "bi-encoder zero-shot"
    if base in ndcg_by_query and len(qids) > 1:
        summary["ndcg_vs_bi_zero_shot_points"] = {
            name: {k: 100 * v for k, v in paired_difference(values, ndcg_by_query[base]).items() if k != "queries"}
            for name, values in ndcg_by_query.items()
            if name != base
        }
    summary["threads"] = torch.get_num_threads()
    settings_dict = {k: v for k, v in asdict(settings).items() if k != "log"}
    return {"rows": rows, "summary": summary, "settings": settings_dict}


def search_index(
    index_dir: Path | str, query: str, *, k: int = 10, rerank_with: str | None = None, depth: int = 50
) -> list[dict[str, Any]]:
    """Search a saved index; optionally rerank its top ``depth`` with a cross- or uni-encoder."""
    from .scorers import load_scorer

    for key, value in (("k", k), ("depth", depth)):
        if type(value) is not int or value < 1:
            raise CrossedgeError(f"search needs {key} of at least 1, not {value!r}")
    index = DenseIndex.load(index_dir)
    model_dir = Path(index_dir) / "model"
    bi = load_scorer(model_dir) if (model_dir / "scorer.json").exists() else BiEncoder.from_pretrained(index.model)
    q = bi.encode([query], queries=True)
    hits = index.search(q, max(k, depth if rerank_with else k))[0]
    results = [{**index.documents[row], "id": index.ids[row], "score": score} for row, score in hits]
    if rerank_with:
        kinds = {"cross-encoder": CrossEncoder, "uni-encoder": UniEncoder}
        if rerank_with not in kinds:
            raise CrossedgeError(f"--rerank takes cross-encoder or uni-encoder, not {rerank_with!r}")
        reranker_dir = Path(index_dir) / rerank_with
        if (reranker_dir / "scorer.json").exists():
            reranker = load_scorer(reranker_dir)
        else:
            raise CrossedgeError(
                f"no trained {rerank_with} in {reranker_dir}: a {rerank_with} needs training before it can rerank; "
                f"train one with `crossedge retrieval train {rerank_with} --out {reranker_dir}`"
            )
        head = results[:depth]
        scores = reranker.score(query, [r["text"] for r in head])
        for r, s in zip(head, scores.tolist(), strict=True):
            r["first_stage_score"], r["score"] = r["score"], s
        results = sorted(head, key=lambda r: -r["score"]) + results[depth:]
    return results[:k]


def uni_vs_cross_speed(
    model: str = "minilm-l6",
    *,
    query_words: int = 8,
    doc_words: int = 48,
    candidates: int = 20,
    repeats: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Median seconds for a cross-encoder to score ``candidates`` pairs vs a uni-encoder scoring them in one pass.

    Texts are random words from the tokenizer's vocabulary, so only the shapes matter; both
    scorers share one encoder, so the comparison isolates the packing.
    """
    from crossedge.core.bench import measure

    cross = CrossEncoder.from_pretrained(model, seed=seed, max_query_tokens=4 * query_words, max_doc_tokens=doc_words)
    uni = UniEncoder.from_encoder(
        cross.encoder, cross.tokenizer, seed=seed, max_query_tokens=4 * query_words, max_doc_tokens=doc_words
    )
    words = [w for w in cross.tokenizer.get_vocab() if w.isalpha() and len(w) > 3]
    generator = torch.Generator().manual_seed(seed)

    def text(n: int) -> str:
        return " ".join(words[i] for i in torch.randint(len(words), (n,), generator=generator).tolist())

    query, docs = text(query_words), [text(doc_words) for _ in range(candidates)]
    cross.eval()
    uni.eval()
    with torch.inference_mode():
        cross_m = measure(lambda: cross.score(query, docs, batch_size=candidates), name="cross", repeats=repeats)
        uni_m = measure(lambda: uni.score(query, docs, batch_size=candidates), name="uni", repeats=repeats)
        masked_m = measure(lambda: uni([query], [docs]), name="uni-masked", repeats=repeats)
    q_tokens = len(cross.tokenizer(query, add_special_tokens=False)["input_ids"][: 4 * query_words])
    return {
        "query_tokens": q_tokens,
        "doc_tokens": doc_words,
        "candidates": candidates,
        "cross_s": cross_m.median,
        "uni_s": uni_m.median,
        "uni_masked_s": masked_m.median,
        "speedup": cross_m.median / uni_m.median,
        "speedup_masked": cross_m.median / masked_m.median,
        "cross_iqr_s": cross_m.spread,
        "uni_iqr_s": uni_m.spread,
        "threads": torch.get_num_threads(),
    }
