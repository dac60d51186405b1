"""CD4LM: consistency distillation of a student that jumps along the teacher's decoding trajectory, and
its confidence-adaptive decoding.

Trajectories: the teacher decodes training examples one token per forward; every intermediate
canvas is kept, so a trajectory is a chain of states from fully masked to the teacher's answer.

Distillation (our reading of CD4LM's discrete-space consistency distillation): a pair of states
``(x_t, x_s)`` is drawn from one trajectory, ``x_s`` later (fewer masks) than ``x_t`` by up to
``jump`` positions, or the trajectory's end; the student, started from the teacher's weights, sees
``x_t`` and is trained toward the teacher's distribution at ``x_s`` (KL at every position masked in
``x_t``; where ``x_s`` has already decoded the position, the target is that token). The student so
learns to land, in one forward, where the teacher gets after several, from states that a fast
schedule actually visits.

``adaptive:tau_max=0.95,tau_min=0.6`` (confidence-adaptive decoding): keep every masked prediction
above a threshold that starts at ``tau_max`` on a fully masked block and falls linearly to
``tau_min`` as the block fills, at least one per forward: early guesses need to be sure, late ones
are constrained by their decoded neighbours.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from crossedge.core.contracts.unmasking import BlockState, UnmaskingError, UnmaskingStrategy

from . import tasks as T
from .budget import run_budget
from .decoding import decode, prompt_ids
from .model import DiffusionLM
from .strategies import LowConfidenceRemasking, _check_probability


class AdaptiveConfidence(UnmaskingStrategy):
    """Keep masked predictions above a threshold that relaxes from ``tau_max`` to ``tau_min`` as the block fills."""

    name = "adaptive"
    description = "confidence threshold relaxing from tau_max to tau_min as the block fills (CD4LM)"

    def __init__(self, tau_max: float = 0.95, tau_min: float = 0.6):
        _check_probability(self.name, "tau_max", tau_max)
        _check_probability(self.name, "tau_min", tau_min)
        if tau_min > tau_max:
            raise UnmaskingError(f"unmasking strategy 'adaptive': tau_min {tau_min} is above tau_max {tau_max}")
        self.tau_max = tau_max
        self.tau_min = tau_min

    def threshold(self, decoded_fraction: float) -> float:
        """The threshold once ``decoded_fraction`` of the block is decoded."""
        return self.tau_max - (self.tau_max - self.tau_min) * decoded_fraction

    def step(self, state: BlockState) -> torch.Tensor:
        ids, conf = state.confidence()
        masked = state.masked
        tau = self.threshold(float((~masked).float().mean()))
        chosen = masked & (conf >= tau)
        if not bool(chosen.any()):
            chosen[torch.where(masked, conf, torch.full_like(conf, -1.0)).argmax()] = True
        return torch.where(chosen, ids, state.tokens)


class _Trace(LowConfidenceRemasking):
    """One token per forward, keeping the block's tokens after every step."""

    def __init__(self) -> None:
        super().__init__(k=1)
        self.states: list[tuple[int, torch.Tensor]] = []

    def step(self, state: BlockState) -> torch.Tensor:
        out = super().step(state)
        self.states.append((state.block, out.clone()))
        return out


@dataclass
class Trajectory:
    """The prompt ids and every canvas the teacher went through, fully masked first, its answer last."""

    head: list[int]
    canvases: list[torch.Tensor]


def trajectories(
    teacher: DiffusionLM, examples: Sequence[T.TaskExample], progress: Callable[[], None] | None = None
) -> list[Trajectory]:
    """The teacher's one-token-per-forward trajectories over ``examples``."""
    info = teacher.info
    out = []
    for example in examples:
        trace = _Trace()
        decode(teacher, example.prompt, trace)
        canvas = torch.full((info.gen_length,), info.mask_token_id)
        canvases = [canvas.clone()]
        for block, tokens in trace.states:
            canvas[block * info.block_length : (block + 1) * info.block_length] = tokens
            canvases.append(canvas.clone())
        out.append(Trajectory(prompt_ids(teacher, example.prompt), canvases))
        if progress is not None:
            progress()
    return out


def _pairs(
    trajs: Sequence[Trajectory], batch: int, jump: int, rng: random.Random, pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of (x_t, x_s) rows (prompt + canvas), the real-token mask and where the canvas is."""
    rows_t, rows_s, spans = [], [], []
    for _ in range(batch):
        traj = rng.choice(trajs)
        last = len(traj.canvases) - 1
        t = rng.randrange(last)
        s = last if rng.random() < 0.5 else min(last, t + rng.randint(1, jump))
        rows_t.append(traj.head + traj.canvases[t].tolist())
        rows_s.append(traj.head + traj.canvases[s].tolist())
        spans.append(len(traj.head))
    width = max(map(len, rows_t))
    xt = torch.full((batch, width), pad)
    xs = torch.full((batch, width), pad)
    keep = torch.zeros((batch, width), dtype=torch.bool)
    canvas = torch.zeros_like(keep)
    for i, (a, b, start) in enumerate(zip(rows_t, rows_s, spans, strict=True)):
        xt[i, : len(a)] = torch.tensor(a)
        xs[i, : len(b)] = torch.tensor(b)
        keep[i, : len(a)] = True
        canvas[i, start : len(a)] = True
    return xt, xs, keep, canvas


def distill(
    teacher: DiffusionLM,
    trajs: Sequence[Trajectory],
    *,
    steps: int | None = None,
    seconds: float | None = None,
    batch_size: int = 32,
    jump: int = 4,
    lr: float = 3e-4,
    seed: int = 0,
    progress: Callable[[int, float, float], None] | None = None,
) -> tuple[DiffusionLM, dict[str, float]]:
    """A student (a copy of the teacher) trained to map ``x_t`` to the teacher's view of a later state."""
    if not trajs:
        raise UnmaskingError("no teacher trajectories to distil from")
    student = DiffusionLM(copy.deepcopy(teacher.model), teacher.tokenizer, copy.deepcopy(teacher.info))
    teacher.eval()
    student.train()
    mask_id = teacher.info.mask_token_id
    rng = random.Random(seed)

    def loss_at(step: int, done: float) -> torch.Tensor:
        xt, xs, keep, canvas = _pairs(trajs, batch_size, jump, rng, teacher.info.pad_token_id)
        with torch.no_grad():
            target = torch.softmax(teacher(xs, keep).float(), dim=-1)
        decoded_later = (xs != mask_id) & canvas
        target = torch.where(
            decoded_later[..., None], torch.nn.functional.one_hot(xs, target.shape[-1]).float(), target
        )
        where = (xt == mask_id) & canvas
        logp = torch.log_softmax(student(xt, keep).float(), dim=-1)
        return -(target * logp).sum(-1)[where].mean()

    run = run_budget(
        student.parameters(),
        loss_at,
        lr=lr,
        steps=steps,
        seconds=seconds,
        progress=progress,
        what="distillation",
        error=UnmaskingError,
    )
    student.eval()
    record = {"steps": run.steps, "seconds": round(run.seconds, 1), "final_loss": round(run.last_loss, 4)}
    student.info.trained = {
        **teacher.info.trained,
        "cd4lm": {**record, "jump": jump, "lr": lr, "trajectories": len(trajs)},
    }
    return student, record
