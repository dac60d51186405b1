"""Integration: crossedge-serve is found through its entry point and adds `crossedge serve`."""

from crossedge.core.testing import installed_plugin, run_cli


def test_serve_registers_its_command_through_the_entry_point(tmp_path):
    serve = installed_plugin("serve", cache=tmp_path)
    assert serve["distribution"] == "crossedge-serve"
    done = run_cli("serve", "--help", cache=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--api-key" in done.stdout and "127.0.0.1" in done.stdout
