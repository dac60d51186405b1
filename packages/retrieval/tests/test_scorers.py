import pytest
import torch

from crossedge.retrieval.lexical import BM25Scorer, code_aware_tokens
from crossedge.retrieval.scorers import BiEncoder, CrossEncoder, UniEncoder, load_scorer, pool, pooling_mode

DOCS = ["def sort(items): return sorted(items)", "open a file and read it", "parse the config file", "add two numbers"]


def test_registered_as_domain_models(plugin):
    from crossedge.core import get_registry

    registry = get_registry("domain_model")
    for name in ("bi-encoder", "cross-encoder", "uni-encoder", "bm25"):
        assert registry.get(name).category == "scorer"
    for name in ("pointwise-bce", "margin-mse", "infonce", "listnet-kl", "partial-ranking"):
        assert registry.get(name).category == "loss"


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


def test_cross_encoder_matches_unbatched(tiny):
    cross = CrossEncoder(*tiny, seed=1)
    together = cross.score("sort a list", DOCS, batch_size=4)
    alone = torch.cat([cross.score("sort a list", [d]) for d in DOCS])
    assert torch.allclose(together, alone, atol=1e-5)
    assert len(set(together.tolist())) == 4
    batch = cross.pair_batch(["ab"], ["cd"])
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1]]  # [CLS] a ##b [SEP] c ##d [SEP]


def test_uni_encoder_mask_equals_scoring_each_candidate_alone(tiny):
    uni = UniEncoder(*tiny, seed=2)
    together = uni.score("sort a list", DOCS)
    alone = torch.cat([uni.score("sort a list", [d]) for d in DOCS])
    assert torch.allclose(together, alone, atol=1e-5)
    assert together.std() > 0  # the candidates really differ


def test_uni_encoder_shares_positions_and_blocks_candidates(tiny):
    uni = UniEncoder(*tiny)
    batch = uni.list_batch(["ab"], [["cd", "e"]])
    # [CLS] a b [SEP] | c d [SEP] | e [SEP]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 4, 5]
    allowed = batch["allowed"][0]
    assert not allowed[:4, 4:].any()  # the query never sees candidates
    assert allowed[4:7, :4].all() and allowed[4:7, 4:7].all()
    assert not allowed[4:7, 7:].any() and not allowed[7:, 4:7].any()


def test_uni_encoder_padded_lists_in_a_batch(tiny):
    uni = UniEncoder(*tiny, seed=3)
    uni.eval()
    with torch.no_grad():
        scores, mask = uni(["sort a list", "read"], [DOCS, DOCS[:2]])
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert torch.allclose(scores[1, :2], uni.score("read", DOCS[:2]), atol=1e-5)
    assert torch.allclose(scores[0], uni.score("sort a list", DOCS), atol=1e-5)


@pytest.mark.parametrize("kind", [BiEncoder, CrossEncoder, UniEncoder])
def test_save_and_load_round_trip(tiny, tmp_path, kind):
    scorer = kind(*tiny, seed=4) if kind is not BiEncoder else kind(*tiny)
    before = scorer.score("sort a list", DOCS)
    scorer.save(tmp_path / "s")
    loaded = load_scorer(tmp_path / "s")
    assert type(loaded) is kind
    assert torch.allclose(loaded.score("sort a list", DOCS), before, atol=1e-5)


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


def test_uni_encoder_blockwise_path_equals_masked_forward(tiny):
    uni = UniEncoder(*tiny, seed=6)
    uni.eval()
    assert uni.supports_blockwise()
    with torch.no_grad():
        masked, _ = uni(["sort a list"], [DOCS])
        blockwise = uni.score_blockwise("sort a list", DOCS)
    assert torch.allclose(masked[0], blockwise, atol=1e-5)
