"""``knn-mmd``: KNN-MMD (Zhao et al., "KNN-MMD: Cross Domain Wireless Sensing via Local Distribution Alignment").

Training (``update``) is ERM on the training domains. ``adapt`` then does what the paper
does with the target's few labelled windows (the support set) and its unlabelled ones:

1. **Help set.** Every unlabelled target window is labelled by a k-nearest-neighbour vote
   among the support windows, in the featurizer's space (cosine distance); ``neighbors`` = 0
   means the paper's ``shots // 2 + 1``. Its confidence is the distance to the nearest
   support window of the class it was given. Per class, the ``help_fraction * U / classes``
   most confident windows (``U`` unlabelled windows; the paper's per-class quota) form the
   help set.
2. **Local alignment.** ``adapt_steps`` Adam steps on the source classification loss plus
   ``mmd_weight`` times the class-wise MMD between the source features of class ``c`` and the
   target features of class ``c`` (help set and support windows, as in the authors' code),
   plus ``global_mmd_weight`` times the MMD between source and all target windows.
   ``support_weight`` > 0 also trains on the support windows' labels, which the paper does
   not (it keeps them for the stopping rule).
3. **Stopping rule.** Every ``eval_every`` steps (and before the first) the support set's
   accuracy and loss are measured; the best state (accuracy first, then loss) is restored at
   the end, so adapting never ends worse on the support set than where it started.

``rounds`` > 1 repeats the pseudo-labelling with the adapted featurizer, splitting the steps.
With no support windows (zero-shot) the classifier's own confident predictions make the
help set and the last state is kept, since nothing can select one.

The source side of step 2 needs training windows at adapt time: ``update`` keeps a seeded
reservoir sample of up to ``reservoir_per_class`` windows per class in memory. The reservoir
is not part of :meth:`state_dict` (it would make every saved file carry training data), so an
algorithm restored from a file has none and ``adapt`` refuses it with an
:class:`~crossedge.core.contracts.algorithm.AlgorithmError`.
"""

from __future__ import annotations

from crossedge.core.builtins.algorithms import ERM
from crossedge.core.contracts.algorithm import AlgorithmError, HParam


class Reservoir:
    """Up to ``capacity`` windows per class, a uniform sample of all seen (Vitter's algorithm R), seeded."""

    def __init__(self, num_classes: int, capacity: int, seed: int):
        import numpy as np

        self.capacity = capacity
        self.seen = [0] * num_classes
        self.windows: list = [None] * num_classes  # per class a (capacity, T, C) tensor, filled from the front
        self._rng = np.random.default_rng([int(seed), 0x4B4E4E])

    def add(self, x, y) -> None:
        """Offer every window of a minibatch to its class's reservoir."""
        import torch

        for c in torch.unique(y).tolist():
            members = x[y == c]
            if self.windows[c] is None:
                self.windows[c] = torch.empty(self.capacity, *x.shape[1:], dtype=x.dtype)
            for window in members:
                n = self.seen[c]
                slot = n if n < self.capacity else int(self._rng.integers(0, n + 1))
                if slot < self.capacity:
                    self.windows[c][slot] = window
                self.seen[c] = n + 1

    def __len__(self) -> int:
        return sum(min(n, self.capacity) for n in self.seen)

    def arrays(self):
        """Every kept window and its label, as (x, y) tensors."""
        import torch

        xs, ys = [], []
        for c, stored in enumerate(self.windows):
            if stored is not None:
                kept = min(self.seen[c], self.capacity)
                xs.append(stored[:kept])
                ys.append(torch.full((kept,), c, dtype=torch.int64))
        return torch.cat(xs), torch.cat(ys)


class KNNMMD(ERM):
    """ERM, then KNN pseudo-labels, class-wise MMD alignment to a help set, and the support set as stopping rule."""

    name = "knn-mmd"
    description = (
        "KNN-MMD: a KNN-labelled help set of target windows, class-wise MMD to the source, "
        "support-set accuracy as the stopping rule"
    )
    adapts = True
    HPARAMS = {
        **ERM.HPARAMS,
        "neighbors": HParam(0, lambda rng: int(rng.choice([0, 1, 3])), "KNN neighbours; 0: shots // 2 + 1"),
        "help_fraction": HParam(
            0.5, lambda rng: float(rng.uniform(0.2, 0.8)), "share of the unlabelled windows kept in the help set"
        ),
        "mmd_weight": HParam(1.0, lambda rng: float(10 ** rng.uniform(-1.0, 1.0)), "weight of the class-wise MMD"),
        "global_mmd_weight": HParam(
            0.0, lambda rng: float(rng.choice([0.0, 0.1, 1.0])), "weight of the MMD over all target windows"
        ),
        "support_weight": HParam(
            0.0, lambda rng: float(rng.choice([0.0, 0.5])), "weight of the support set's classification loss"
        ),
        "adapt_steps": HParam(100, lambda rng: int(rng.choice([50, 100, 200])), "Adam steps of the alignment"),
        "adapt_lr": HParam(5e-4, lambda rng: float(10 ** rng.uniform(-4.0, -2.5)), "learning rate of the alignment"),
        "adapt_batch": HParam(8, lambda rng: int(rng.choice([4, 8, 16])), "source and target windows per class a step"),
        "eval_every": HParam(10, lambda rng: int(rng.choice([5, 10])), "steps between stopping-rule checks"),
        "rounds": HParam(1, lambda rng: int(rng.choice([1, 2])), "pseudo-labelling rounds (the steps are split)"),
        "reservoir_per_class": HParam(
            200, lambda rng: 200, "training windows per class kept in memory for adapt (not saved)"
        ),
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reservoir = Reservoir(self.num_classes, self.hparams["reservoir_per_class"], self.seed)

    def update(self, minibatches):
        """ERM's step; every window is also offered to the in-memory reservoir."""
        import torch

        measured = super().update(minibatches)
        self.reservoir.add(torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches]))
        return measured

    # ---------------------------------------------------------------- adapt

    def help_set(self, support_x, support_y, unlabelled_x):
        """The pseudo-labelled target windows to align with: (indices into ``unlabelled_x``, labels)."""
        import torch
        import torch.nn.functional as F

        from .episodes import eval_features

        if len(unlabelled_x) == 0:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
        if len(support_x) == 0:
            # zero-shot: the classifier's own labels, confidence its softmax probability
            self.train_mode(False)
            with torch.no_grad():
                probabilities = self.classifier(eval_features(self.featurizer, unlabelled_x)).softmax(dim=1)
            confidence, labels = probabilities.max(dim=1)
            distance = -confidence
        else:
            target = F.normalize(eval_features(self.featurizer, unlabelled_x), dim=1)
            shots = F.normalize(eval_features(self.featurizer, support_x), dim=1)
            distances = torch.cdist(target, shots)  # (U, S)
            k = self.hparams["neighbors"] or (len(support_x) // len(torch.unique(support_y))) // 2 + 1
            k = min(k, len(support_x))
            nearest = distances.topk(k, dim=1, largest=False).indices  # (U, k), nearest first
            votes = F.one_hot(support_y[nearest], self.num_classes).sum(dim=1).float()
            # ties go to the class whose nearest neighbour is closer: subtract a fraction of the distance
            per_class = torch.full((len(target), self.num_classes), float("inf"))
            for c in torch.unique(support_y).tolist():
                per_class[:, c] = distances[:, support_y == c].min(dim=1).values
            finite = torch.where(torch.isinf(per_class), torch.full_like(per_class, 4.0), per_class)
            labels = (votes - 1e-3 * finite).argmax(dim=1)
            distance = per_class.gather(1, labels.unsqueeze(1)).squeeze(1)
        quota = max(1, int(len(unlabelled_x) * self.hparams["help_fraction"] / self.num_classes))
        chosen = []
        for c in torch.unique(labels).tolist():
            members = torch.nonzero(labels == c).reshape(-1)
            order = torch.argsort(distance[members], stable=True)
            chosen.append(members[order[:quota]])
        indices = torch.sort(torch.cat(chosen)).values
        return indices, labels[indices]

    def adapt(self, support_x, support_y, unlabelled_x):
        """Help set by KNN, class-wise MMD alignment for ``adapt_steps`` steps, best support-set state restored."""
        import torch
        import torch.nn.functional as F

        from .episodes import check_adapt_inputs, gaussian_mmd, network_state, restore_network_state

        support_x, support_y, unlabelled_x = check_adapt_inputs(self, support_x, support_y, unlabelled_x)
        if len(self.reservoir) == 0:
            raise AlgorithmError(
                "knn-mmd adapts with training windows it keeps in memory during update(), and this instance has "
                "none (restored from a file, or never trained): train it with update() in this process, then adapt"
            )
        if len(support_x) == 0 and len(unlabelled_x) == 0:  # nothing of the target to align with
            return {
                "support": 0.0,
                "help": 0.0,
                "steps": 0.0,
                "loss": float("nan"),
                "best_step": 0.0,
                "support_accuracy": float("nan"),
            }
        source_x, source_y = self.reservoir.arrays()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 29)
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp["adapt_lr"], weight_decay=hp["weight_decay"])
        per_class = hp["adapt_batch"]

        def balanced(y, pool):
            """``per_class`` indices of every class of ``y`` (with replacement), drawn from ``generator``."""
            picks = []
            for c in pool:
                members = torch.nonzero(y == c).reshape(-1)
                picks.append(members[torch.randint(len(members), (per_class,), generator=generator)])
            return torch.cat(picks)

        def support_score():
            self.train_mode(False)
            with torch.no_grad():
                logits = self.classifier(self.featurizer(support_x))
            return float((logits.argmax(1) == support_y).float().mean()), float(F.cross_entropy(logits, support_y))

        use_rule = len(support_x) > 0
        best = (*support_score(), 0) if use_rule else None
        best_state = network_state(self) if use_rule else None
        rounds = max(1, hp["rounds"])
        steps_done, help_size, last_loss = 0, 0, float("nan")
        for round_index in range(rounds):
            help_index, help_y = self.help_set(support_x, support_y, unlabelled_x)
            help_size = len(help_index)
            target_x = torch.cat([unlabelled_x[help_index], support_x])
            target_y = torch.cat([help_y, support_y])
            classes = sorted(set(torch.unique(target_y).tolist()) & set(torch.unique(source_y).tolist()))
            source_classes = torch.unique(source_y).tolist()
            steps = hp["adapt_steps"] // rounds + (1 if round_index < hp["adapt_steps"] % rounds else 0)
            for _ in range(steps):
                s = balanced(source_y, source_classes)
                t = balanced(target_y, classes) if classes else torch.zeros(0, dtype=torch.int64)
                xs, ys, xt, yt = source_x[s], source_y[s], target_x[t], target_y[t]
                extra = [xt]
                if hp["global_mmd_weight"] > 0 and len(unlabelled_x):
                    g = torch.randint(len(unlabelled_x), (len(s),), generator=generator)
                    extra.append(unlabelled_x[g])
                if hp["support_weight"] > 0 and len(support_x):
                    extra.append(support_x)
                self.train_mode()
                # one forward pass, so batch norm sees source and target windows together, as at test time
                features = self.featurizer(torch.cat([xs, *extra]))
                fs, rest = features[: len(xs)], features[len(xs) :]
                ft, rest = rest[: len(xt)], rest[len(xt) :]
                loss = F.cross_entropy(self.classifier(fs), ys)
                if classes:
                    local = sum(gaussian_mmd(fs[ys == c], ft[yt == c]) for c in classes) / len(classes)
                    loss = loss + hp["mmd_weight"] * local
                if hp["global_mmd_weight"] > 0 and len(unlabelled_x):
                    fg, rest = rest[: len(s)], rest[len(s) :]
                    loss = loss + hp["global_mmd_weight"] * gaussian_mmd(fs, fg)
                if hp["support_weight"] > 0 and len(support_x):
                    loss = loss + hp["support_weight"] * F.cross_entropy(self.classifier(rest), support_y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                steps_done += 1
                last_loss = float(loss.detach())
                if use_rule and (steps_done % hp["eval_every"] == 0 or steps_done == hp["adapt_steps"]):
                    accuracy, support_loss = support_score()
                    if (accuracy, -support_loss) > (best[0], -best[1]):
                        best, best_state = (accuracy, support_loss, steps_done), network_state(self)
        if use_rule:
            restore_network_state(self, best_state)
        return {
            "support": float(len(support_x)),
            "help": float(help_size),
            "steps": float(steps_done),
            "loss": last_loss,
            "best_step": float(best[2]) if use_rule else float(steps_done),
            "support_accuracy": best[0] if use_rule else float("nan"),
        }
