"""``crossfi``: CrossFi (Zhao et al., "CrossFi: A Cross Domain Wi-Fi Sensing Framework Based on Siamese Network").

A siamese network: both windows of a pair go through the same featurizer, and a similarity
module (the paper's CSi-Net) scores the pair with attention instead of a fixed distance:
each feature vector is projected to a map of ``tokens`` tokens, the first window's tokens
attend over the second's, and a small network compares every token with what it attended
to; the mean over tokens is the pair's similarity logit. Weight-Net turns a set of windows of
one class into a template, a weighted mean of their features, the weights computed from each
window's features and its mean similarity to the rest of the set.

Training (``update``) samples from the pooled training minibatches: within-batch pairs
(same class or not, balanced binary cross-entropy, weight ``pair_weight``) and an episode in
which Weight-Net builds each class's template from part of its windows and the other windows
are classified by their similarity to the templates (cross-entropy). A running mean of each
class's template over training is kept as a buffer (the source templates, saved with the
state). ``predict`` returns every window's similarity logits against the templates in use.

``adapt`` works in the paper's three modes and takes no gradient steps:

- **one-shot / few-shot**: classes with support windows get templates from them (Weight-Net;
  one shot is its own template); the rest keep their source templates;
- **zero-shot** (no support): source templates; with ``refine_top`` > 0 each class's template
  is then rebuilt from the ``refine_top`` unlabelled target windows most similar to it (as the
  authors' zero-shot code refines its templates with target windows);
- **new-class**: a class whose windows never appeared in training (so it has no source
  template) gets its template from its target shots. ``num_classes`` is fixed when the
  algorithm is built, so build it with the size of the dataset's label table, train on the
  seen classes' windows only (:func:`new_class_split`), and pass the new classes' shots to
  ``adapt`` under their label ids from that table.
"""

from __future__ import annotations

from crossedge.core.contracts.algorithm import AlgorithmError, HParam
from crossedge.core.networks import FeaturizerClassifier

#: at most this many windows of a minibatch enter the pair loss (its cost grows with their square)
PAIR_WINDOWS = 64


def new_class_split(y, new_classes):
    """Indices of the windows of seen classes and of ``new_classes``: train on the first, adapt and test on the second.

    ``y`` holds the dataset's label ids; the label ids of the new classes stay what the
    dataset's label table says, so an algorithm built with the table's size predicts them.
    """
    import numpy as np

    y = np.asarray(y).reshape(-1)
    new = sorted({int(c) for c in new_classes})
    if not new:
        raise AlgorithmError("new_class_split needs at least one new class; name the label ids held out of training")
    present = set(np.unique(y).tolist())
    missing = [c for c in new if c not in present]
    if missing:
        raise AlgorithmError(
            f"new class {missing[0]} has no windows (labels present: {sorted(present)}); choose label ids the data has"
        )
    is_new = np.isin(y, new)
    if is_new.all():
        raise AlgorithmError(f"new classes {new} are every class of the data; leave at least one class for training")
    return np.flatnonzero(~is_new), np.flatnonzero(is_new)


def make_crossfi_networks(width: int, tokens: int, token_dim: int):
    """The similarity module (CSi-Net) and Weight-Net for features of size ``width``."""
    import math

    import torch
    import torch.nn.functional as F
    from torch import nn

    class SimilarityNet(nn.Module):
        """Pairwise similarity logits (N, P) between feature vectors a (N, width) and b (P, width), by attention."""

        def __init__(self):
            super().__init__()
            self.to_tokens = nn.Linear(width, tokens * token_dim)
            self.query = nn.Linear(token_dim, token_dim)
            self.key = nn.Linear(token_dim, token_dim)
            self.value = nn.Linear(token_dim, token_dim)
            # per-entry weights of agreement and difference, kept positive (softplus) so the score
            # grows with agreement: a learned similarity that stays a similarity off the training data
            self.agree = nn.Parameter(torch.zeros(token_dim))
            self.differ = nn.Parameter(torch.zeros(token_dim))
            self.bias = nn.Parameter(torch.zeros(()))

        def feature_map(self, features):
            """(N, tokens, token_dim) tokens of norm sqrt(token_dim): the score then depends on the map's
            shape, not its scale, which a domain shift moves; the norm keeps the entries near one."""
            map_ = self.to_tokens(features).view(len(features), tokens, token_dim)
            return F.normalize(map_, dim=-1) * math.sqrt(token_dim)

        def forward(self, a, b):
            ta, tb = self.feature_map(a), self.feature_map(b)
            scores = torch.einsum("nmd,pkd->npmk", self.query(ta), self.key(tb)) / math.sqrt(token_dim)
            matched = torch.einsum("npmk,pkd->npmd", scores.softmax(dim=-1), self.value(tb))
            own = self.value(ta).unsqueeze(1).expand_as(matched)
            agreement = (own * matched) @ F.softplus(self.agree) - (own - matched).abs() @ F.softplus(self.differ)
            return agreement.mean(dim=-1) + self.bias

    class WeightNet(nn.Module):
        """Weights (softmax over the set) of a class's windows, from each window's features and mean similarity."""

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(width + 1, token_dim), nn.ReLU(), nn.Linear(token_dim, 1))

        def forward(self, features, similarity):
            n = len(features)
            others = (similarity.sum(dim=1) - similarity.diagonal()) / max(n - 1, 1)
            return self.body(torch.cat([features, others.unsqueeze(1)], dim=1)).squeeze(1).softmax(dim=0)

    return SimilarityNet(), WeightNet()


class CrossFi(FeaturizerClassifier):
    """Siamese featurizer, attention similarity (CSi-Net) and Weight-Net templates; one-, zero-shot and new-class."""

    name = "crossfi"
    description = (
        "CrossFi: siamese network with an attention similarity module and Weight-Net class templates "
        "(one-shot, zero-shot and new-class adaptation)"
    )
    adapts = True
    HPARAMS = {
        **FeaturizerClassifier.HPARAMS,
        "tokens": HParam(4, lambda rng: int(rng.choice([2, 4, 8])), "tokens of the feature map the similarity attends"),
        "token_dim": HParam(16, lambda rng: int(rng.choice([8, 16, 32])), "size of each token"),
        "pair_weight": HParam(1.0, lambda rng: float(rng.choice([0.0, 0.5, 1.0])), "weight of the pair loss"),
        "support_fraction": HParam(
            0.5, lambda rng: float(rng.uniform(0.3, 0.7)), "share of each class's windows that build its template"
        ),
        "template_momentum": HParam(
            0.1, lambda rng: float(rng.uniform(0.05, 0.3)), "weight of each minibatch in the source templates"
        ),
        "refine_top": HParam(
            3, lambda rng: int(rng.choice([0, 1, 3, 5])), "zero-shot: target windows that rebuild each template"
        ),
    }

    def build_extra(self) -> None:
        """CSi-Net, Weight-Net and the template bank (source running means and target templates)."""
        import torch

        from .episodes import ClassBank

        width = self.featurizer.out_features
        hp = self.hparams
        self.similarity, self.weight_net = make_crossfi_networks(width, hp["tokens"], hp["token_dim"])
        self.templates = ClassBank(self.num_classes, width)
        self._episodes = torch.Generator().manual_seed(self.seed * 1_000_003 + 31)

    def make_templates(self, features, y, classes):
        """Weight-Net templates (len(classes), width), one per class from its windows among ``features``."""
        import torch

        templates = []
        for c in classes:
            members = features[y == c]
            weights = self.weight_net(members, self.similarity(members, members).sigmoid())
            templates.append((weights.unsqueeze(1) * members).sum(dim=0))
        return torch.stack(templates)

    def update(self, minibatches):
        """Pair loss and template-episode loss on the pooled minibatches; then refresh the source templates."""
        import torch
        import torch.nn.functional as F

        from .episodes import episode_split, eval_features

        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        self.train_mode()
        features = self.featurizer(x)
        support, query, classes = episode_split(y, self.hparams["support_fraction"], self._episodes)
        template_loss = torch.zeros(())
        if len(classes) >= 2:
            remap = torch.full((self.num_classes,), -1, dtype=torch.int64)
            remap[classes] = torch.arange(len(classes))
            templates = self.make_templates(features[support], y[support], classes.tolist())
            template_loss = F.cross_entropy(self.similarity(features[query], templates), remap[y[query]])
        pick = torch.randperm(len(x), generator=self._episodes)[:PAIR_WINDOWS]
        pair_loss = torch.zeros(())
        if len(pick) >= 2:
            logits = self.similarity(features[pick], features[pick])
            same = (y[pick].unsqueeze(0) == y[pick].unsqueeze(1)).float()
            off_diagonal = ~torch.eye(len(pick), dtype=torch.bool)
            positives = (same * off_diagonal).sum()
            negatives = ((1 - same) * off_diagonal).sum()
            # balance the (rarer) same-class pairs against the rest; the authors weight them by the class count
            weights = torch.where(same > 0, negatives.clamp(min=1) / positives.clamp(min=1), torch.ones_like(same))
            losses = F.binary_cross_entropy_with_logits(logits, same, reduction="none") * weights
            pair_loss = losses[off_diagonal].mean()
        loss = template_loss + self.hparams["pair_weight"] * pair_loss
        if loss.requires_grad:  # a minibatch of one window has neither pairs nor an episode
            self.step(loss)
        with torch.no_grad():
            self.train_mode(False)
            seen = torch.unique(y)
            present = torch.zeros(self.num_classes, dtype=torch.bool)
            present[seen] = True
            vectors = torch.zeros(self.num_classes, self.featurizer.out_features)
            vectors[seen] = self.make_templates(eval_features(self.featurizer, x), y, seen.tolist())
            self.templates.observe(vectors, present, self.hparams["template_momentum"])
        return {
            "loss": float(loss.detach()),
            "template_loss": float(template_loss.detach()),
            "pair_loss": float(pair_loss.detach()),
        }

    def adapt(self, support_x, support_y, unlabelled_x):
        """Templates from the support windows (one-/few-shot, new-class), else source templates, refined zero-shot."""
        import torch

        from .episodes import check_adapt_inputs, eval_features

        support_x, support_y, unlabelled_x = check_adapt_inputs(self, support_x, support_y, unlabelled_x)
        self.train_mode(False)
        with torch.no_grad():
            present = torch.zeros(self.num_classes, dtype=torch.bool)
            vectors = torch.zeros(self.num_classes, self.featurizer.out_features)
            refined = 0
            if len(support_x):
                classes = torch.unique(support_y)
                present[classes] = True
                features = eval_features(self.featurizer, support_x)
                vectors[classes] = self.make_templates(features, support_y, classes.tolist())
            elif self.hparams["refine_top"] > 0 and len(unlabelled_x):
                # from the source templates, whatever an earlier adapt set
                source, known = self.templates.source, self.templates.source_count > 0
                if bool(known.any()):
                    features = eval_features(self.featurizer, unlabelled_x)
                    scores = self.similarity(features, source[known])  # (U, known classes)
                    # standardized per template over the target windows: a template that scores every
                    # shifted window high would otherwise take them all
                    scores = (scores - scores.mean(dim=0)) / scores.std(dim=0, unbiased=False).clamp(min=1e-6)
                    known_ids = torch.nonzero(known).reshape(-1)
                    assigned = scores.argmax(dim=1)
                    for column, c in enumerate(known_ids.tolist()):
                        members = torch.nonzero(assigned == column).reshape(-1)
                        if len(members) == 0:
                            continue  # no target window looks like this class: keep its source template
                        top = members[torch.argsort(scores[members, column], descending=True, stable=True)]
                        top = top[: self.hparams["refine_top"]]
                        chosen = features[top]
                        vectors[c] = self.make_templates(chosen, torch.zeros(len(top), dtype=torch.int64), [0])[0]
                        present[c] = True
                        refined += 1
            self.templates.set_target(vectors, present)
        _, known = self.templates.current()
        return {
            "support": float(len(support_x)),
            "support_templates": float(present.sum()) if len(support_x) else 0.0,
            "source_templates": float((known & ~present).sum()),
            "refined_templates": float(refined),
        }

    def predict(self, x):
        """Similarity logits (N, num_classes) of every window against each class's template in use."""
        import torch

        from .episodes import eval_features, floor_unknown

        templates, known = self.templates.current()
        self.train_mode(False)
        with torch.no_grad():
            logits = self.similarity(eval_features(self.featurizer, x), templates)
        return floor_unknown(logits, known)
