import importlib.metadata


def test_entry_point_is_declared():
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="crossedge")}
    assert names.get("specdec") == "crossedge.specdec.plugin"
