"""Unit tests register the plugin by hand, so entry-point discovery stays out of them."""

import os

os.environ["CROSSEDGE_NO_ENTRY_POINTS"] = "1"  # not even first-party packages: tests register what they use
