"""Plugins that ship with crossedge-core; registered exactly like third-party ones."""
