"""``finetune``: ERM on the training domains, then a fixed number of Adam steps on the target's k shots.

The baseline every few-shot method has to beat: the ERM network, fine-tuned on the labelled
target windows (the whole network, or only the linear head with ``head_only``). Batch-norm
statistics stay those of the training domains during fine-tuning, since k windows per class
are too few to estimate them. With no support windows (zero-shot) adapt changes nothing.
"""

from __future__ import annotations

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.contracts.algorithm import HParam


class FineTune(ERM):
    """ERM, then full-batch fine-tuning on the target support set for ``finetune_steps`` Adam steps."""

    name = "finetune"
    description = "ERM on the training domains, then fine-tuning (whole network or head) on the target's k shots"
    adapts = True
    HPARAMS = {
        **ERM.HPARAMS,
        "finetune_steps": HParam(50, lambda rng: int(rng.choice([25, 50, 100])), "Adam steps on the support set"),
        "finetune_lr": HParam(
            1e-3, lambda rng: float(10 ** rng.uniform(-4.0, -2.5)), "learning rate of the fine-tuning steps"
        ),
        "head_only": HParam(False, lambda rng: bool(rng.random() < 0.5), "fine-tune the linear head only"),
    }

    def adapt(self, support_x, support_y, unlabelled_x):
        """Fine-tune on the support windows (full batch, a fresh Adam); zero support leaves the network as is."""
        import torch
        import torch.nn.functional as F

        from .episodes import check_adapt_inputs

        support_x, support_y, _ = check_adapt_inputs(self, support_x, support_y, unlabelled_x)
        steps = self.hparams["finetune_steps"] if len(support_x) else 0
        head_only = self.hparams["head_only"]
        params = list(self.classifier.parameters()) if head_only else self.parameters()
        optimizer = torch.optim.Adam(params, lr=self.hparams["finetune_lr"], weight_decay=self.hparams["weight_decay"])
        self.train_mode(False)  # batch norm keeps the training domains' statistics (see the module docstring)
        if head_only:
            from .episodes import eval_features

            features = eval_features(self.featurizer, support_x)
        first = last = float("nan")
        for step in range(steps):
            logits = self.classifier(features if head_only else self.featurizer(support_x))
            loss = F.cross_entropy(logits, support_y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            first = float(loss.detach()) if step == 0 else first
            last = float(loss.detach())
        return {"support": float(len(support_x)), "steps": float(steps), "first_loss": first, "loss": last}
