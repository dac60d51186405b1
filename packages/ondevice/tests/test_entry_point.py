import importlib.metadata


def test_entry_point_is_declared():
    points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="crossedge")}
    assert points.get("ondevice") == "crossedge.ondevice.plugin"


def test_public_api_imports():
    import crossedge.ondevice as ondevice

    for name in ondevice.__all__:
        assert getattr(ondevice, name) is not None
