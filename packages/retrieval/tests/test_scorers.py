import pytest
import torch

from crossedge.core.conformance.scorer import ScorerConformance
from crossedge.retrieval.lexical import BM25Scorer, code_aware_tokens
from crossedge.retrieval.scorers import BiEncoder, CrossEncoder, UniEncoder, load_scorer, pool, pooling_mode

DOCS = ["def sort(items): return sorted(items)", "open a file and read it", "parse the config file", "add two numbers"]


def test_scorers_and_losses_are_registered_as_classes(plugin):
    from crossedge.core import get_registry
    from crossedge.core.contracts.loss import Loss
    from crossedge.core.contracts.scorer import Scorer
    from crossedge.retrieval.losses import LOSSES
    from crossedge.retrieval.options import LOSS_NAMES

    scorers, losses = get_registry("scorer"), get_registry("loss")
    assert scorers.names() == sorted(["bi-encoder", "cross-encoder", "uni-encoder", "bm25"])
    assert all(issubclass(scorers.get(n), Scorer) for n in scorers.names())
    assert losses.names() == sorted(LOSS_NAMES) == sorted(loss.name for loss in LOSSES)
    assert all(issubclass(losses.get(n), Loss) for n in losses.names())


class TestBM25Conformance(ScorerConformance):
    # Every document shares a word with the query, so no two tie at zero.
    documents = (
        "def read_config(path): return open(path).read()",
        "read the whole file into memory at once",
        "config values for the server and the client",
        "parse the config file into a dict",
        "zip two lists together and read them",
    )

    @pytest.fixture
    def scorer(self):
        return BM25Scorer()


@pytest.mark.parametrize("kind", [BiEncoder, CrossEncoder, UniEncoder], ids=lambda k: k.name)
class TestNeuralScorerConformance(ScorerConformance):
    @pytest.fixture
    def scorer(self, tiny, kind):
        return kind(*tiny) if kind is BiEncoder else kind(*tiny, seed=1)


def test_pooling_config_is_read(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(
        '[{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]'
    )
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert pooling_mode(tmp_path) == "cls"
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "max").tolist() == [[3.0, 4.0]]


def test_bi_encoder_scores_are_cosines(tiny):
    model, tokenizer = tiny
    bi = BiEncoder(model, tokenizer)
    emb = bi.encode(DOCS)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(DOCS)), atol=1e-5)
    scores = bi.score(DOCS[3], DOCS)
    assert scores.shape == (4,)
    assert scores[3] == pytest.approx(1.0, abs=1e-5)  # a short text is its own nearest neighbour
    assert scores.max() <= 1.0 + 1e-5


def test_bi_encoder_batching_does_not_change_embeddings(tiny):
    bi = BiEncoder(*tiny)
    assert torch.allclose(bi.encode(DOCS, batch_size=1), bi.encode(DOCS, batch_size=4), atol=1e-5)


HEADS = ["similarity", "cls"]


@pytest.mark.parametrize("head", HEADS)
def test_cross_encoder_matches_unbatched(tiny, head):
    cross = CrossEncoder(*tiny, seed=1, head=head)
    together = cross.score("sort a list", DOCS, batch_size=4)
    alone = torch.cat([cross.score("sort a list", [d]) for d in DOCS])
    assert torch.allclose(together, alone, atol=1e-5)
    assert len(set(together.tolist())) == 4


@pytest.mark.parametrize("batch_size", [2, 3])
def test_cross_encoder_batches_by_length_and_keeps_the_order(tiny, batch_size, monkeypatch):
    cross = CrossEncoder(*tiny, seed=1)
    documents = [DOCS[0] * 3, DOCS[1], DOCS[2] * 2, DOCS[3], DOCS[0]]  # lengths out of order
    calls = []
    original = CrossEncoder.forward

    def spy(self, queries, docs):
        calls.append([documents.index(d) for d in docs])
        return original(self, queries, docs)

    together = cross.score("sort a list", documents, batch_size=batch_size)
    alone = torch.cat([cross.score("sort a list", [d]) for d in documents])
    assert torch.allclose(together, alone, atol=1e-5)
    monkeypatch.setattr(CrossEncoder, "forward", spy)
    cross.score("sort a list", documents, batch_size=batch_size)
    lengths = [len(cross.tokenizer(documents[i], add_special_tokens=False)["input_ids"]) for c in calls for i in c]
    assert lengths == sorted(lengths)
    sizes = [len(c) for c in calls]
    assert max(sizes) - min(sizes) <= 1 and len(sizes) == -(-len(documents) // batch_size)
    assert cross.score("q", []).shape == (0,)


def test_cross_encoder_cls_layout_marks_the_document_as_segment_b(tiny):
    batch = CrossEncoder(*tiny, head="cls").pair_batch(["ab"], ["cd"])
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1]]  # [CLS] a ##b [SEP] c ##d [SEP]


def test_cross_encoder_without_interaction_is_the_bi_encoder(tiny):
    bi = BiEncoder(*tiny)
    cross = CrossEncoder(*tiny, interaction_layers=0)
    scale = cross.head.log_scale.exp().item()
    assert torch.allclose(cross.score("sort a list", DOCS), bi.score("sort a list", DOCS) * scale, atol=1e-4)


def test_cross_segment_gate_starts_nearly_shut_and_opens(tiny):
    bi_scores = BiEncoder(*tiny).score("sort a list", DOCS)
    for kind in (CrossEncoder, UniEncoder):
        scorer = kind(*tiny)
        scale = scorer.head.log_scale.exp().item()
        start = scorer.score("sort a list", DOCS) / scale
        # At GATE_START the segments barely see each other: close to, but not exactly, the bi-encoder.
        assert torch.allclose(start, bi_scores, atol=0.02)
        assert (start - bi_scores).abs().max() > 1e-6  # float noise of the same computation is ~6e-8
        with torch.no_grad():
            scorer.head.gate.fill_(-scorer.head.GATE_START / scorer.head.GATE_GAIN)  # bias 0: plain attention
        opened = scorer.score("sort a list", DOCS) / scale
        assert (opened - bi_scores).abs().max() > 5 * (start - bi_scores).abs().max()


def test_cross_segment_gate_learns(tiny):
    from crossedge.retrieval.losses import InfoNCE
    from crossedge.retrieval.training import ListExample, list_loss

    cross = CrossEncoder(*tiny)
    loss = list_loss(InfoNCE())(cross, [ListExample("sort a list", tuple(DOCS), labels=(1.0, 0.0, 0.0, 0.0))])
    loss.backward()
    assert cross.head.gate.grad is not None and cross.head.gate.grad.abs().sum() > 0


@pytest.mark.parametrize("interaction_layers", [None, 1])
def test_cross_encoder_pairs_sharing_a_query_score_as_alone(tiny, interaction_layers):
    cross = CrossEncoder(*tiny, interaction_layers=interaction_layers).eval()
    queries = ["sort a list", "read", "sort a list", "read"]
    with torch.no_grad():
        mixed = cross(queries, DOCS)
    expected = torch.stack([cross.score(q, [d])[0] for q, d in zip(queries, DOCS, strict=True)])
    assert torch.allclose(mixed, expected, atol=1e-5)


def test_uni_encoder_starts_from_a_cross_encoders_weights(tiny):
    from crossedge.retrieval.scorers import ScorerError

    cross = CrossEncoder(*tiny)
    with torch.no_grad():
        cross.head.gate.normal_(0.0, 0.05)
        cross.head.log_scale.fill_(1.5)
    uni = UniEncoder.from_scorer(cross)
    assert uni.encoder is not cross.encoder
    for name, tensor in cross.state_dict().items():
        assert torch.equal(uni.state_dict()[name], tensor), name
    # The copy shares no storage: training the uni-encoder leaves the cross-encoder as it was.
    before = cross.encoder.embeddings.word_embeddings.weight.clone()
    with torch.no_grad():
        uni.encoder.embeddings.word_embeddings.weight.add_(1.0)
        uni.head.gate.add_(1.0)
    assert torch.equal(cross.encoder.embeddings.word_embeddings.weight, before)
    assert not torch.equal(cross.head.gate, uni.head.gate)
    # With the gate shut both layouts reduce to the bi-encoder, so a copy made then scores exactly as the cross-encoder.
    with torch.no_grad():
        cross.head.gate.fill_(-1.0)
    assert torch.allclose(
        UniEncoder.from_scorer(cross).score("sort a list", DOCS), cross.score("sort a list", DOCS), atol=1e-4
    )
    with pytest.raises(ScorerError, match="similarity head"):
        UniEncoder.from_scorer(CrossEncoder(*tiny, head="cls"))
    with pytest.raises(ScorerError, match="not a bi-encoder's"):
        UniEncoder.from_scorer(BiEncoder(*tiny))
    with pytest.raises(ScorerError, match="top 1 layers"):
        UniEncoder.from_scorer(CrossEncoder(*tiny, interaction_layers=1))


def test_cross_encoder_rejects_bad_head_settings(tiny):
    from crossedge.retrieval.scorers import ScorerError

    with pytest.raises(ScorerError, match="unknown head"):
        CrossEncoder(*tiny, head="mlp")
    with pytest.raises(ScorerError, match="similarity head"):
        CrossEncoder(*tiny, head="cls", interaction_layers=1)
    with pytest.raises(ScorerError, match="outside 0..2"):
        CrossEncoder(*tiny, interaction_layers=3)


@pytest.mark.parametrize("head", HEADS)
def test_uni_encoder_mask_equals_scoring_each_candidate_alone(tiny, head):
    uni = UniEncoder(*tiny, seed=2, head=head)
    together = uni.score("sort a list", DOCS)
    alone = torch.cat([uni.score("sort a list", [d]) for d in DOCS])
    assert torch.allclose(together, alone, atol=1e-5)
    assert together.std() > 0  # the candidates really differ


@pytest.mark.parametrize(
    ("head", "positions"),
    [
        ("cls", [0, 1, 2, 3, 4, 5, 6, 4, 5]),  # [CLS] a b [SEP] | c d [SEP] | e [SEP]
        ("similarity", [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2]),  # [CLS] a b [SEP] | [CLS] c d [SEP] | [CLS] e [SEP]
    ],
)
def test_uni_encoder_shares_positions_and_blocks_candidates(tiny, head, positions):
    uni = UniEncoder(*tiny, head=head)
    batch = uni.list_batch(["ab"], [["cd", "e"]])
    assert batch["position_ids"][0].tolist() == positions
    first_end = 7 if head == "cls" else 8
    allowed = batch["allowed"][0]
    assert not allowed[:4, 4:].any()  # the query never sees candidates
    assert allowed[4:first_end, :4].all() and allowed[4:first_end, 4:first_end].all()
    assert not allowed[4:first_end, first_end:].any() and not allowed[first_end:, 4:first_end].any()


@pytest.mark.parametrize("head", HEADS)
def test_uni_encoder_padded_lists_in_a_batch(tiny, head):
    uni = UniEncoder(*tiny, seed=3, head=head)
    uni.eval()
    with torch.no_grad():
        scores, mask = uni(["sort a list", "read"], [DOCS, DOCS[:2]])
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert torch.allclose(scores[1, :2], uni.score("read", DOCS[:2]), atol=1e-5)
    assert torch.allclose(scores[0], uni.score("sort a list", DOCS), atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "head"), [(BiEncoder, None)] + [(k, h) for k in (CrossEncoder, UniEncoder) for h in HEADS]
)
def test_save_and_load_round_trip(tiny, tmp_path, kind, head):
    scorer = kind(*tiny, seed=4, head=head) if kind is not BiEncoder else kind(*tiny)
    if head == "similarity":
        with torch.no_grad():
            scorer.head.log_scale.fill_(1.5)  # a trained scale must survive the round trip
    before = scorer.score("sort a list", DOCS)
    scorer.save(tmp_path / "s")
    loaded = load_scorer(tmp_path / "s")
    assert type(loaded) is kind
    assert torch.allclose(loaded.score("sort a list", DOCS), before, atol=1e-5)


def test_scorer_saved_before_heads_existed_loads_as_cls(tiny, tmp_path):
    import json

    cross = CrossEncoder(*tiny, seed=5, head="cls")
    before = cross.score("sort a list", DOCS)
    cross.save(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "scorer.json").read_text())
    for key in ("head", "pooling", "interaction_layers"):
        del meta[key]
    (tmp_path / "s" / "scorer.json").write_text(json.dumps(meta))
    assert torch.allclose(load_scorer(tmp_path / "s").score("sort a list", DOCS), before, atol=1e-5)


def test_head_weights_of_the_wrong_kind_are_a_clear_error(tiny, tmp_path):
    import json

    from crossedge.retrieval.scorers import ScorerError

    CrossEncoder(*tiny, head="cls").save(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "scorer.json").read_text())
    (tmp_path / "s" / "scorer.json").write_text(json.dumps({**meta, "head": "similarity"}))
    with pytest.raises(ScorerError, match="do not fit a 'similarity' head"):
        load_scorer(tmp_path / "s")


def test_load_scorer_without_metadata_is_a_clear_error(tmp_path):
    from crossedge.retrieval.scorers import ScorerError

    with pytest.raises(ScorerError, match="scorer.json"):
        load_scorer(tmp_path)


def test_bm25_ranks_lexical_match_first():
    assert code_aware_tokens("readConfig parse_file") == ["read", "config", "readconfig", "parse", "file", "parse_file"]
    bm25 = BM25Scorer().index(["a", "b", "c", "d"], DOCS)
    hits = bm25.search(["config file", "zzz unknown"], k=4)
    assert hits[0][0][0] == "c"
    assert {doc for doc, _ in hits[0]} == {"b", "c"}  # only documents sharing a term
    assert hits[1] == []
    assert bm25.score("config", DOCS).argmax() == 2


@pytest.mark.parametrize("head", HEADS)
def test_uni_encoder_blockwise_path_equals_masked_forward(tiny, head):
    uni = UniEncoder(*tiny, seed=6, head=head)
    uni.eval()
    assert uni.supports_blockwise()
    with torch.no_grad():
        masked, _ = uni(["sort a list"], [DOCS])
        blockwise = uni.score_blockwise("sort a list", DOCS)
    assert torch.allclose(masked[0], blockwise, atol=1e-5)
