"""Unit tests register the plugin by hand, so entry-point discovery stays out of them."""

import os

os.environ["CROSSEDGE_LOAD_PLUGINS"] = ""
