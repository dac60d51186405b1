"""crossedge serve: an OpenAI-compatible HTTP server for crossedge models with speculative decoding.

The app lives in :mod:`crossedge.serve.app` (``build_app``), the model and its worker in
:mod:`crossedge.serve.service` (``load_served_model``), request checks in
:mod:`crossedge.serve.protocol`. Importing this package imports none of them.
"""
