"""True 4-bit CNN training on CPU: tanh soft-clipped 15-level weights, 4-bit activations, a straight-through estimator.

One module per idea: ``config`` (the versioned training config), ``layers`` (the
quantizers and the 4-bit Conv2d/Linear used in training), ``model`` (the small CNN in its
fp32, 4-bit and integer forms), ``datasets`` (digits and MNIST-5k from installed wheels),
``trainer`` (seeded training and accuracy), ``inference`` (integer-kernel layers for a
saved model), ``saved`` (the safetensors form) and ``experiment`` (fp32 beside 4-bit, the
report). Importing this package imports no torch: the CLI reads :data:`DATASETS` from here.
"""

from __future__ import annotations

#: Image sets a 4-bit CNN trains on; ``datasets.load_images`` loads them.
DATASETS = ("digits", "mnist5k")
