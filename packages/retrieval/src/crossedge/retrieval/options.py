"""The choices the retrieval commands offer, in a module light enough for the CLI to import at start-up."""

from __future__ import annotations

#: Methods of ``crossedge retrieval bench``, in the order their rows appear.
ALL_METHODS = ("bm25", "bi-zero-shot", "bi-trained", "cross-rerank", "uni-rerank", "students", "trans-encoder")
#: Where the hard negatives of training lists come from.
NEGATIVE_SOURCES = ("bm25", "bi-encoder")
#: Where the bench's uni-encoder starts before training in its own layout.
UNI_INITS = ("encoder", "cross-encoder")
#: Reranker heads of the cross- and uni-encoder.
HEADS = ("similarity", "cls")
#: The built-in losses' names (a test keeps this equal to ``losses.LOSSES``).
LOSS_NAMES = ("pointwise-bce", "margin-mse", "infonce", "listnet-kl", "partial-ranking", "infonce-kl")
#: The losses bench students are trained with by default (one student each).
STUDENT_LOSS_NAMES = LOSS_NAMES[:5]
#: Losses the bench's rerankers may train with: labels alone, or labels plus the zero-shot bi-encoder's scores.
RERANKER_LOSSES = ("infonce", "infonce-kl")
#: Out-of-domain collections ``crossedge retrieval collection --source`` builds from text on this machine.
LOCAL_SOURCES = ("manpages", "perl-pod")
