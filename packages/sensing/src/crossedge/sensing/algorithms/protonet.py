"""``protonet``: a prototypical network (Snell et al., 2017) trained episodically on the training domains.

Each update pools the training domains' minibatches and splits every class into a support
part (``support_fraction`` of its windows) and a query part; the support features' mean is
the class prototype and the loss is cross-entropy over negative squared distances of the
queries to the prototypes. Alongside, a running mean of every class's features (evaluation
mode, after the step) is kept as a buffer: the source prototypes, saved with the state.

``adapt`` sets target prototypes from the target's support windows; classes without support
(and zero-shot, with no support at all) fall back to the source prototypes. It takes no
gradient steps. ``predict`` returns negative squared distances to the prototypes; a class
neither seen in training nor given support gets a logit far below the others.
"""

from __future__ import annotations

from crossedge.core.contracts.algorithm import HParam
from crossedge.core.networks import FeaturizerClassifier


class ProtoNet(FeaturizerClassifier):
    """Prototypical network: episodic training, prototypes from the target shots or else from the source."""

    name = "protonet"
    description = (
        "prototypical network: episodic training on the training domains, target prototypes from the k shots "
        "(source prototypes when there are none)"
    )
    adapts = True
    HPARAMS = {
        **FeaturizerClassifier.HPARAMS,
        "support_fraction": HParam(
            0.5, lambda rng: float(rng.uniform(0.3, 0.7)), "share of each class's windows that form the prototype"
        ),
        "prototype_momentum": HParam(
            0.1, lambda rng: float(rng.uniform(0.05, 0.3)), "weight of each minibatch in the source prototypes"
        ),
    }

    def build_extra(self) -> None:
        """The prototype bank (source running means and target prototypes, as buffers)."""
        import torch

        from .episodes import ClassBank

        self.prototypes = ClassBank(self.num_classes, self.featurizer.out_features)
        # the episode splits draw from their own stream, so they never disturb the networks' seeding
        self._episodes = torch.Generator().manual_seed(self.seed * 1_000_003 + 17)

    def update(self, minibatches):
        """One episode over the pooled minibatches, then fold the class means into the source prototypes."""
        import torch
        import torch.nn.functional as F

        from .episodes import class_means, episode_split, eval_features

        x = torch.cat([x for x, _ in minibatches])
        y = torch.cat([y for _, y in minibatches])
        support, query, classes = episode_split(y, self.hparams["support_fraction"], self._episodes)
        self.train_mode()
        loss = torch.zeros(())
        if len(classes) >= 2:  # one class alone gives nothing to tell apart
            features = self.featurizer(x)
            remap = torch.full((self.num_classes,), -1, dtype=torch.int64)
            remap[classes] = torch.arange(len(classes))
            prototypes, _ = class_means(features[support], remap[y[support]], len(classes))
            logits = -torch.cdist(features[query], prototypes).pow(2)
            loss = F.cross_entropy(logits, remap[y[query]])
            self.step(loss)
        means, present = class_means(eval_features(self.featurizer, x), y, self.num_classes)
        self.prototypes.observe(means, present, self.hparams["prototype_momentum"])
        return {"loss": float(loss.detach()), "classes": float(len(classes))}

    def adapt(self, support_x, support_y, unlabelled_x):
        """Target prototypes from the support windows' features; none given means source prototypes only."""
        from .episodes import check_adapt_inputs, class_means, eval_features

        support_x, support_y, _ = check_adapt_inputs(self, support_x, support_y, unlabelled_x)
        means, present = class_means(eval_features(self.featurizer, support_x), support_y, self.num_classes)
        self.prototypes.set_target(means, present)
        _, known = self.prototypes.current()
        return {
            "support": float(len(support_x)),
            "target_prototypes": float(present.sum()),
            "source_prototypes": float((known & ~present).sum()),
        }

    def predict(self, x):
        """Negative squared distances (N, num_classes) to the prototypes in use."""
        import torch

        from .episodes import eval_features, floor_unknown

        prototypes, known = self.prototypes.current()
        self.train_mode(False)
        with torch.no_grad():
            logits = -torch.cdist(eval_features(self.featurizer, x), prototypes).pow(2)
        return floor_unknown(logits, known)
