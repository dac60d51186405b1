"""crossedge-sensing: Wi-Fi CSI and motion recognition under domain shift.

Datasets are array datasets (windows ``x`` (N, T, C), labels ``y``, a domain table with
the columns in :data:`crossedge.sensing.windows.DOMAIN_COLUMNS`); algorithms are domain
algorithms (``update`` / ``predict``); scenarios hold one domain out; sweeps write
JSON-lines records that ``collect`` turns into tables. See docs/sensing.md.
"""
