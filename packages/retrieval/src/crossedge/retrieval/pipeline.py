"""Search pipelines and the ``crossedge retrieval bench`` comparison.

One table: BM25, the bi-encoder zero-shot and trained, cross-encoder and
uni-encoder reranking of the bi-encoder's candidates, the bi-encoder students
distilled from the cross-encoder with each loss, and Trans-Encoder. Everything
trains on the stdlib collection's train split (or ``train_collection``) and is
evaluated on the test collection, with nDCG@10, MRR@10 and Recall@100 from
ir-measures plus per-query latency and indexing throughput.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from crossedge.core import CrossedgeError
from crossedge.core.contracts.backend import DEFAULT_BACKEND, torch_dtype

from .collection import Collection, load_code_search, read_beir, sample_queries
from .index import DenseIndex
from .lexical import BM25Scorer
from .losses import InfoNCE, ListNetKL, Loss
from .metrics import means, paired_difference, per_query, ranking_to_run
from .options import ALL_METHODS, NEGATIVE_SOURCES, RERANKER_LOSSES, STUDENT_LOSS_NAMES, UNI_INITS
from .runtime import ScorerStack, check_scorer_stack, prepare_scorer
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
    losses: tuple[str, ...] = STUDENT_LOSS_NAMES
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
    #: The loss of the rerankers trained on labelled lists: ``infonce``, or ``infonce-kl`` which adds
    #: ``distill_alpha`` times a KL term to the zero-shot bi-encoder's scores of each list.
    reranker_loss: str = "infonce"
    distill_alpha: float = 1.0
    #: A BEIR folder (``qrels/dev.tsv``) from the training side, e.g. the mixture's dev split: with it
    #: each reranker also gets a row fused with the first stage, its weight chosen on these queries.
    dev_collection: str | None = None
    dev_queries: int = 200
    #: What the cross-encoder also reranks on, beside float32 eager: its rows are added with the
    #: stack in brackets, paired against the float rows (``--quant``, ``--backend``, ``--dtype``).
    quant: str | None = None
    backend: str = DEFAULT_BACKEND
    dtype: str = "float32"
    #: More rerank depths for the cross-encoder's cost-quality curve (each gets a row).
    curve_depths: tuple[int, ...] = ()
    seed: int = 0
    progress: bool = True
    log: list[str] = field(default_factory=list)


def _row(method: str, metrics: dict[str, float], result: SearchResult, **extra: Any) -> dict[str, Any]:
    row = {"method": method, **metrics, "ms_per_query": result.ms_per_query()}
    if result.documents:
        row["index_docs_per_s"] = result.documents / max(result.index_seconds, 1e-9)
    row.update(extra)
    return row


# Options added after the first bench runs enter the training key only away from the value those runs
# had, so their checkpoints stay valid: (option, its value in the first runs, settings it brings in).
LATER_KEY_OPTIONS: tuple[tuple[str, Any, tuple[str, ...]], ...] = (
    ("negatives", "bm25", ("negatives",)),
    ("head", "cls", ("head", "interaction_layers")),
    ("reranker_loss", "infonce", ("reranker_loss", "distill_alpha")),
)


def training_key(settings: BenchSettings) -> str:
    """The one key of everything that determines a model the bench trains (and the teacher's scores).

    It names the checkpoint folder ``bench-checkpoints/<key>/<tag>`` and the teacher-score id
    ``cross-encoder|<key>``, so a later run with the same settings (e.g. ``--methods students``
    after ``cross-rerank``) loads what an earlier one trained, and an interrupted run resumes.
    """
    config = train_config(settings)
    # Training never reads the evaluation collection, so one trained model serves every collection
    # it is evaluated on (the first runs evaluated on the stdlib test split: their key had None here).
    parts: tuple[Any, ...] = (
        asdict(config),
        settings.model,
        None,
        settings.train_collection,
        settings.train_queries,
        settings.candidates,
        settings.max_doc_tokens,
    )
    for option, first_value, names in LATER_KEY_OPTIONS:
        if getattr(settings, option) != first_value:
            parts += tuple(f"{name}={getattr(settings, name)}" for name in names)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def train_config(settings: BenchSettings) -> TrainConfig:
    """The training recipe every model of the bench shares."""
    return TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed)


def check_settings(settings: BenchSettings) -> None:
    """Refuse unknown or contradictory settings before anything loads or trains."""
    unknown = sorted(set(settings.methods) - set(ALL_METHODS))
    if unknown:
        raise CrossedgeError(f"unknown bench method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}")
    if settings.negatives not in NEGATIVE_SOURCES:
        raise CrossedgeError(f"unknown negatives {settings.negatives!r}; choose from {', '.join(NEGATIVE_SOURCES)}")
    if settings.uni_epochs is not None and settings.uni_epochs < 0:
        raise CrossedgeError(f"uni_epochs must be 0 or more, not {settings.uni_epochs}")
    if settings.reranker_loss not in RERANKER_LOSSES:
        raise CrossedgeError(
            f"unknown reranker loss {settings.reranker_loss!r}; choose from {', '.join(RERANKER_LOSSES)}"
        )
    if settings.distill_alpha < 0:
        raise CrossedgeError(f"distill_alpha must be 0 or more, not {settings.distill_alpha}")
    bad_depths = [d for d in (settings.rerank_depth, settings.uni_depth, *settings.curve_depths) if d < 1]
    if bad_depths:
        raise CrossedgeError(f"rerank depths must be 1 or more, not {bad_depths[0]}")
    if bench_stack(settings).was_asked_for and "cross-rerank" not in settings.methods:
        raise CrossedgeError("--quant, --backend and --dtype apply to the cross-encoder: add cross-rerank to --methods")
    if settings.uni_init not in UNI_INITS:
        raise CrossedgeError(f"unknown uni_init {settings.uni_init!r}; choose from {', '.join(UNI_INITS)}")
    if settings.uni_init == "cross-encoder" and (
        settings.head != "similarity" or settings.interaction_layers is not None
    ):
        # The copy needs the similarity head with every layer interacting.
        raise CrossedgeError(
            "uni_init='cross-encoder' copies the cross-encoder's similarity head and needs every layer to interact: "
            "use head='similarity' without interaction_layers, or uni_init='encoder'"
        )
    if "students" in settings.methods:
        from crossedge.core import get_registry

        losses = get_registry("loss")
        for name in settings.losses:
            losses.get(name)  # an unknown loss fails here, with close matches, not after the teacher trained


@dataclass
class BenchRun:
    """What the steps of one bench run share: settings, the test queries, and the rows and summary so far."""

    settings: BenchSettings
    test: Collection
    qids: list[str]
    say: Callable[[str], Any] = print
    train: Collection | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    ndcg_by_query: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Things made once per run on first use (the dev collection's first stage).
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> set[str]:
        """The methods asked for."""
        return set(self.settings.methods)

    def training_collection(self) -> Collection:
        """The collection the bench trains on (the stdlib train split unless one was given)."""
        if self.train is None:
            self.train = load_code_search("train")
        return self.train

    def checkpoints(self) -> Path:
        """Where this run's trained models checkpoint: one folder per :func:`training_key`."""
        from crossedge.core.cache import cache_dir

        return cache_dir() / "retrieval" / "bench-checkpoints" / training_key(self.settings)

    def evaluate(self, name: str, result: SearchResult, **extra: Any) -> dict[str, Any]:
        """Score rankings against the judgements, add the row and log it."""
        values = per_query(ranking_to_run(result.rankings), self.test.qrels, self.qids)
        self.ndcg_by_query[name] = values["ndcg@10"]
        row = _row(name, means(values), result, **extra)
        self.rows.append(row)
        self.say(
            f"  {name}: ndcg@10={row['ndcg@10']:.4f} mrr@10={row['mrr@10']:.4f} recall@100={row['recall@100']:.4f}"
        )
        return row

    def fresh(self, kind: type[Scorer]) -> Scorer:
        """A new scorer of ``kind`` from the bench's model, with the bench's head and document length."""
        s = self.settings
        extra: dict[str, Any] = {}
        if kind is not BiEncoder:
            extra["head"] = s.head
        if kind is CrossEncoder and s.interaction_layers is not None:
            extra["interaction_layers"] = s.interaction_layers
        return kind.from_pretrained(s.model, seed=s.seed, max_doc_tokens=s.max_doc_tokens, **extra)

    def train_scorer(
        self, model: Scorer, examples: list[ListExample], loss: Loss, tag: str, config: TrainConfig | None = None
    ) -> Scorer:
        """Train (or resume, or load the finished checkpoint of) ``model`` under ``tag``; records the run."""
        start = time.perf_counter()
        config = config or train_config(self.settings)
        folder = self.checkpoints() / tag
        trainer = Trainer(model, examples, list_loss(loss), config, folder, tag, self.settings.progress)
        if trainer.latest_checkpoint() is not None:
            self.say(f"  {tag}: resuming from {trainer.latest_checkpoint()}")
        history = trainer.fit()
        self.summary.setdefault("training", {})[tag] = {
            "seconds": time.perf_counter() - start,
            "loss": history[-1]["loss"],
            "examples": len(examples),
        }
        return model


@dataclass
class TrainingLists:
    """The labelled lists the teacher and the trained methods learn from; students may get the first N."""

    examples: list[ListExample] = field(default_factory=list)
    students: list[ListExample] = field(default_factory=list)


def prepare_collection(settings: BenchSettings, say: Callable[[str], Any] = print) -> BenchRun:
    """Step 1: read the test (and training) collection, sample the queries and subsample the corpus."""
    test = read_beir(settings.collection) if settings.collection else load_code_search("test")
    train = read_beir(settings.train_collection, split="train") if settings.train_collection else None
    qids = sample_queries(test, settings.limit_queries, seed=settings.seed)
    if not qids:
        raise CrossedgeError(f"collection {settings.collection or 'stdlib-code test'} has no judged queries")
    if settings.corpus_limit:
        test = subsample_corpus(test, qids, settings.corpus_limit, settings.seed)
    say(f"collection: {len(test.corpus)} documents, {len(qids)} queries (of {len(test.judged_queries())})")
    run = BenchRun(settings, test, qids, say=say, train=train)
    run.summary.update({"documents": len(test.corpus), "queries": len(qids)})
    return run


def first_stage(run: BenchRun) -> SearchResult | None:
    """Step 2: the BM25 row, and the zero-shot bi-encoder whose candidates the rerankers rescore."""
    s = run.settings
    if "bm25" in run.methods:
        run.evaluate("bm25", bm25_search(run.test, run.qids))
        run.summary["bm25_index_docs_per_s"] = run.rows[-1]["index_docs_per_s"]
    if not run.methods & {"bi-zero-shot", "cross-rerank", "uni-rerank"}:
        return None
    first = dense_search(run.fresh(BiEncoder), run.test, run.qids, progress=s.progress)
    run.evaluate("bi-encoder zero-shot", first)
    run.summary["bi_index_docs_per_s"] = first.documents / first.index_seconds
    return first


def reranker_loss(settings: BenchSettings) -> Loss:
    """The loss the cross- and uni-encoder train with."""
    if settings.reranker_loss == "infonce-kl":
        from .losses import LabelsWithDistillation

        return LabelsWithDistillation(alpha=settings.distill_alpha)
    return InfoNCE()


def with_first_stage_scores(
    examples: Sequence[ListExample], bi: BiEncoder, temperature: float = 0.05, progress: bool = False
) -> list[ListExample]:
    """The lists with the zero-shot bi-encoder's scores as ``teacher`` (cosines over ``temperature``,
    the scale bi-encoder logits train on), for the distillation term of ``infonce-kl``."""
    from tqdm.auto import tqdm

    out = []
    for ex in tqdm(examples, desc="first-stage scores", disable=not progress, leave=False):
        scores = (bi.score(ex.query, list(ex.documents)) / temperature).tolist()
        out.append(replace(ex, teacher=tuple(scores)))
    return out


def build_training_lists(run: BenchRun) -> TrainingLists:
    """Step 3: the labelled training lists (positive plus hard negatives) the trained methods share."""
    s = run.settings
    if not run.methods & {"bi-trained", "cross-rerank", "uni-rerank", "students", "trans-encoder"}:
        return TrainingLists()
    start = time.perf_counter()
    # The miner is the zero-shot first stage itself, so training negatives look like the candidates
    # the rerankers get at test time.
    miner = run.fresh(BiEncoder) if s.negatives == "bi-encoder" else None
    examples = training_lists(run.training_collection(), s.train_queries, s.candidates, s.seed,
                              negatives=s.negatives, miner=miner, progress=s.progress)  # fmt: skip
    if s.reranker_loss == "infonce-kl":
        examples = with_first_stage_scores(examples, miner or run.fresh(BiEncoder), progress=s.progress)
    run.summary["train_lists"] = {
        "queries": len(examples),
        "candidates": s.candidates,
        "negatives": s.negatives,
        "seconds": time.perf_counter() - start,
    }
    students = examples[: s.student_queries] if s.student_queries else examples
    if s.student_queries:
        run.summary["student_lists"] = len(students)
    return TrainingLists(examples, students)


def train_bi_encoder(run: BenchRun, lists: TrainingLists) -> None:
    """Step 4a: the bi-encoder fine-tuned on the labelled lists."""
    bi = run.train_scorer(run.fresh(BiEncoder), lists.examples, InfoNCE(), "bi-encoder")
    run.evaluate("bi-encoder trained", dense_search(bi, run.test, run.qids, progress=run.settings.progress))


def train_teacher(run: BenchRun, lists: TrainingLists) -> CrossEncoder:
    """Step 4b: the cross-encoder: reranker, teacher of the students, and the uni-encoder's optional start."""
    return run.train_scorer(run.fresh(CrossEncoder), lists.examples, reranker_loss(run.settings), "cross-encoder")


def bench_stack(settings: BenchSettings) -> ScorerStack:
    """The stack the cross-encoder also reranks on, checked before anything loads."""
    return check_scorer_stack(settings.quant, settings.backend, settings.dtype, purpose="retrieval bench")


def cross_depths(settings: BenchSettings) -> list[int]:
    """The depths the cross-encoder reranks at, deepest first."""
    return sorted({settings.rerank_depth, settings.uni_depth, *settings.curve_depths}, reverse=True)


def evaluate_cross_rerank(run: BenchRun, teacher: CrossEncoder, first: SearchResult) -> None:
    """Step 5a: the cross-encoder reranking the first stage at each depth (and on the asked stack)."""
    s = run.settings
    curve: list[dict[str, Any]] = []
    float_ms: dict[int, float] = {}
    for depth in cross_depths(s):
        name = f"cross-encoder rerank@{depth}"
        result, rerank_ms = rerank_row(run, teacher, first, depth, name)
        float_ms[depth] = rerank_ms
        curve.append({"depth": depth, "stack": "float32", "ndcg@10": run.rows[-1]["ndcg@10"], "rerank_ms": rerank_ms})
        if depth in (s.rerank_depth, s.uni_depth):
            evaluate_fused(run, name, teacher, first, result, depth, rerank_ms_per_query=rerank_ms)
    stack = bench_stack(s)
    if not stack.is_plain:
        fast = copy.deepcopy(teacher)
        record = prepare_scorer(fast, stack)
        versus = {}
        for depth in cross_depths(s):
            plain, name = f"cross-encoder rerank@{depth}", f"cross-encoder rerank@{depth} [{stack.label()}]"
            _, rerank_ms = rerank_row(run, fast, first, depth, name)
            curve.append({"depth": depth, "stack": stack.label(), "ndcg@10": run.rows[-1]["ndcg@10"],
                          "rerank_ms": rerank_ms})  # fmt: skip
            gap = {"speedup": float_ms[depth] / rerank_ms}
            if len(run.qids) > 1:
                paired = paired_difference(run.ndcg_by_query[name], run.ndcg_by_query[plain])
                gap.update({k: 100 * paired[k] for k in ("mean", "low", "high")})
            versus[name] = gap
        run.summary["stack"] = {**record, "vs_float_points": versus}
        del fast
    run.summary["cost_quality"] = curve


def rerank_row(run: BenchRun, scorer: Scorer, first: SearchResult, depth: int, name: str) -> tuple[SearchResult, float]:
    """Rerank the first stage at ``depth``, add the row ``name``; returns the result and rerank ms per query."""
    result = rerank(scorer, run.test, first.rankings, depth, progress=run.settings.progress)
    rerank_ms = 1000 * result.seconds / len(run.qids)
    result.seconds += first.seconds
    run.evaluate(name, result, rerank_ms_per_query=rerank_ms)
    return result, rerank_ms


def uni_rerank(run: BenchRun, lists: TrainingLists, teacher: CrossEncoder | None, first: SearchResult) -> None:
    """Step 4c and 5b: the uni-encoder trained in its own layout, reranking the first stage, against the cross."""
    s = run.settings
    from_cross = s.uni_init == "cross-encoder"
    # From the trained cross-encoder (same encoder and head; only the query's attention to the
    # candidate is lost) or from the plain encoder. ``uni_epochs=0`` keeps the starting weights as they are.
    uni = UniEncoder.from_scorer(teacher) if from_cross else run.fresh(UniEncoder)
    tag = "uni-encoder-from-cross" if from_cross else "uni-encoder"
    if s.uni_epochs is None:
        uni = run.train_scorer(uni, lists.examples, reranker_loss(s), tag)
    elif s.uni_epochs > 0:
        own = replace(train_config(s), epochs=s.uni_epochs)
        uni = run.train_scorer(uni, lists.examples, reranker_loss(s), f"{tag}-{s.uni_epochs}-epochs", own)
    if from_cross:
        label = " (cross-encoder weights)" if s.uni_epochs == 0 else " (from cross-encoder)"
    else:
        label = " (untrained)" if s.uni_epochs == 0 else ""
    result = rerank(uni, run.test, first.rankings, s.uni_depth, batch_size=s.uni_depth)
    result.seconds += first.seconds
    uni_row = run.evaluate(f"uni-encoder rerank@{s.uni_depth}{label}", result,
                           rerank_ms_per_query=1000 * (result.seconds - first.seconds) / len(run.qids))  # fmt: skip
    evaluate_fused(run, uni_row["method"], uni, first, result, s.uni_depth, batch_size=s.uni_depth,
                   rerank_ms_per_query=uni_row["rerank_ms_per_query"])  # fmt: skip
    # Same candidates, same first stage: the speed ratio and quality gap against the cross-encoder.
    cross_name = f"cross-encoder rerank@{s.uni_depth}"
    cross_row = next((r for r in run.rows if r["method"] == cross_name), None)
    if cross_row is None:
        return
    gap = {
        "candidates": s.uni_depth,
        "speedup": cross_row["rerank_ms_per_query"] / uni_row["rerank_ms_per_query"],
        "ndcg_gap_points": 100 * (cross_row["ndcg@10"] - uni_row["ndcg@10"]),
    }
    if len(run.qids) > 1:
        paired = paired_difference(run.ndcg_by_query[cross_name], run.ndcg_by_query[uni_row["method"]])
        gap["ndcg_gap_ci95_points"] = [100 * paired["low"], 100 * paired["high"]]
    run.summary["uni_vs_cross"] = gap


def dev_first_stage(run: BenchRun) -> tuple[Collection, SearchResult]:
    """The dev collection and its zero-shot first stage, made once per run."""
    if "dev" not in run.cache:
        s = run.settings
        dev = read_beir(s.dev_collection, split="dev")
        qids = sample_queries(dev, s.dev_queries, seed=s.seed)
        if not qids:
            raise CrossedgeError(f"dev collection {s.dev_collection} has no judged queries in qrels/dev.tsv")
        run.cache["dev"] = (dev, dense_search(run.fresh(BiEncoder), dev, qids, progress=s.progress))
    return run.cache["dev"]


def evaluate_fused(
    run: BenchRun,
    name: str,
    scorer: Scorer,
    first: SearchResult,
    result: SearchResult,
    depth: int,
    batch_size: int = 32,
    **extra: Any,
) -> None:
    """With a dev collection: choose ``scorer``'s fusion weight there, then evaluate the fused test ranking."""
    from .fusion import choose_weight, fuse

    if not run.settings.dev_collection:
        return
    dev, dev_first = dev_first_stage(run)
    dev_reranked = rerank(scorer, dev, dev_first.rankings, depth, batch_size=batch_size)
    weight, table = choose_weight(dev_first.rankings, dev_reranked.rankings, dev.qrels, depth)
    run.summary.setdefault("fusion", {})[name] = {
        "weight": weight,
        "dev_ndcg@10_by_weight": table,
        "dev_queries": len(dev_first.rankings),
    }
    fused = SearchResult(fuse(first.rankings, result.rankings, depth, weight), result.seconds)
    run.evaluate(f"{name} + fusion (w={weight:g})", fused, **extra)


def train_students(run: BenchRun, lists: TrainingLists, teacher: CrossEncoder) -> None:
    """Step 4d: bi-encoder students distilled from the teacher's scores, one per loss."""
    from crossedge.core.cache import cache_dir

    from .losses import get_loss

    s = run.settings
    cache = TeacherCache(cache_dir() / "retrieval" / "teacher-scores")
    pairs = [(ex.query, ex.documents) for ex in lists.students]
    scores = cache.get_or_compute(f"cross-encoder|{training_key(s)}", pairs, teacher.score, progress=s.progress)
    distil = [ListExample(q, d, teacher=tuple(t)) for (q, d), t in zip(pairs, scores, strict=True)]
    for loss_name in s.losses:
        tag = f"student-{loss_name}" + (f"-{len(distil)}" if s.student_queries else "")
        student = run.train_scorer(run.fresh(BiEncoder), distil, get_loss(loss_name), tag)
        run.evaluate(f"student {loss_name}", dense_search(student, run.test, run.qids, progress=s.progress))


def train_trans_encoder(run: BenchRun) -> None:
    """Step 4e: Trans-Encoder, self-distillation on unlabelled lists the zero-shot bi-encoder retrieves."""
    s = run.settings
    bi = run.fresh(BiEncoder)
    start = time.perf_counter()
    lists = unlabelled_lists(run.training_collection(), s.student_queries or s.train_queries, s.candidates, bi,
                             s.seed, s.progress)  # fmt: skip
    run.summary["trans_encoder_lists"] = {"lists": len(lists), "seconds": time.perf_counter() - start}
    start = time.perf_counter()
    history = trans_encoder(bi, lists, cycles=s.trans_cycles, loss=ListNetKL(), config=train_config(s),
                            progress=s.progress)  # fmt: skip
    run.summary["trans_encoder"] = {"seconds": time.perf_counter() - start, "cycles": history.history}
    cycles = f"{s.trans_cycles} cycle{'s' if s.trans_cycles > 1 else ''}"
    run.evaluate(f"trans-encoder bi ({cycles})", dense_search(bi, run.test, run.qids, progress=s.progress))


def verdict(low: float, high: float) -> str:
    """What a paired 95% interval of a method minus the zero-shot bi-encoder says, in words."""
    if high < 0:
        return "hurts"
    if low > 0:
        return "helps"
    return "no clear difference"


def summarise(run: BenchRun) -> dict[str, Any]:
    """Step 6: each row against the zero-shot bi-encoder with a paired bootstrap interval, and the report."""
    # Whether a gain of a point or two is more than the luck of the query sample.
    base = "bi-encoder zero-shot"
    if base in run.ndcg_by_query and len(run.qids) > 1:
        versus = {
            name: {k: 100 * v for k, v in paired_difference(values, run.ndcg_by_query[base]).items() if k != "queries"}
            for name, values in run.ndcg_by_query.items()
            if name != base
        }
        for gap in versus.values():
            gap["verdict"] = verdict(gap["low"], gap["high"])
        run.summary["ndcg_vs_bi_zero_shot_points"] = versus
    run.summary["threads"] = torch.get_num_threads()
    settings = {k: v for k, v in asdict(run.settings).items() if k != "log"}
    return {"rows": run.rows, "summary": run.summary, "settings": settings}


def run_bench(settings: BenchSettings, say=print) -> dict[str, Any]:
    """Run the comparison; returns ``{"rows": [...], "summary": {...}, "settings": {...}}``.

    The steps: prepare the collection, the first stage, the training lists, each trained method
    (checkpointed under one :func:`training_key`), evaluation of each as it finishes, the summary.
    """
    check_settings(settings)
    run = prepare_collection(settings, say)
    methods = run.methods
    first = first_stage(run)
    lists = build_training_lists(run)
    if "bi-trained" in methods:
        train_bi_encoder(run, lists)
    uni_from_cross = "uni-rerank" in methods and settings.uni_init == "cross-encoder"
    teacher = train_teacher(run, lists) if methods & {"cross-rerank", "students"} or uni_from_cross else None
    if "cross-rerank" in methods and first is not None:
        evaluate_cross_rerank(run, teacher, first)
    if "uni-rerank" in methods and first is not None:
        uni_rerank(run, lists, teacher, first)
    if "students" in methods:
        train_students(run, lists, teacher)
    del teacher
    if "trans-encoder" in methods:
        train_trans_encoder(run)
    return summarise(run)


def search_index(
    index_dir: Path | str,
    query: str,
    *,
    k: int = 10,
    rerank_with: str | None = None,
    depth: int = 50,
    stack: ScorerStack | None = None,
) -> list[dict[str, Any]]:
    """Search a saved index; optionally rerank its top ``depth`` with a cross- or uni-encoder on ``stack``."""
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
        if stack is not None and not stack.is_plain:
            prepare_scorer(reranker, stack)
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
    batch_size: int = 32,
    stack: ScorerStack | None = None,
) -> dict[str, Any]:
    """Median seconds for a cross-encoder to score ``candidates`` pairs vs a uni-encoder scoring them in one pass.

    Texts are random words from the tokenizer's vocabulary, so only the shapes matter; both
    scorers share one encoder, so the comparison isolates the packing. With a ``stack`` the
    cross-encoder is timed as loaded first, then both run on the stack (the ``*_stack`` figures).
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
    extra: dict[str, Any] = {}
    if stack is not None and not stack.is_plain:
        with torch.inference_mode():
            plain_m = measure(lambda: cross.score(query, docs, batch_size=batch_size), name="plain", repeats=repeats)
            plain_scores = cross.score(query, docs, batch_size=batch_size)
        record = prepare_scorer(cross, stack, batch_size=batch_size)
        # One encoder for both, as before; the uni-encoder's own head takes the stack's dtype too.
        uni.encoder = cross.encoder
        if stack.dtype != "float32":
            uni.to(torch_dtype(stack.dtype))
        extra = {"stack": record, "cross_plain_s": plain_m.median, "cross_plain_iqr_s": plain_m.spread}
    with torch.inference_mode():
        cross_m = measure(lambda: cross.score(query, docs, batch_size=batch_size), name="cross", repeats=repeats)
        uni_m = measure(lambda: uni.score(query, docs, batch_size=candidates), name="uni", repeats=repeats)
        masked_m = measure(lambda: uni([query], [docs]), name="uni-masked", repeats=repeats)
        if extra:
            scores = cross.score(query, docs, batch_size=batch_size)
            extra["stack_speedup"] = plain_m.median / cross_m.median
            extra["stack_max_score_change"] = float((scores.float() - plain_scores.float()).abs().max())
    q_tokens = len(cross.tokenizer(query, add_special_tokens=False)["input_ids"][: 4 * query_words])
    return {
        **extra,
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
