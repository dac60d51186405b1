"""`crossedge serve` in its own process: Ctrl-C (SIGINT) or SIGTERM lets requests in flight finish, refuses new
ones with a 503, and exits 0.

The command runs as a user's shell runs it (``python -m crossedge.core.cli serve``, entry
points loaded) on 127.0.0.1 and a port the OS picks; every wait has a deadline.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import crossedge.serve

LONG = 480  # about a second of decoding each with the tiny model: the drain happens while both are in flight
SERVE_SRC = str(Path(crossedge.serve.__file__).resolve().parents[2])  # this checkout's serve package


class ServeProcess:
    """`crossedge serve` as a child process; its stderr is collected on a thread."""

    def __init__(self, folder, cache):
        env = {k: v for k, v in os.environ.items() if k not in ("CROSSEDGE_NO_ENTRY_POINTS", "CROSSEDGE_LOAD_PLUGINS")}
        env.update(
            CROSSEDGE_CACHE=str(cache),
            CROSSEDGE_LOAD_PLUGINS="crossedge-specdec,crossedge-serve",
            PYTHONPATH=os.pathsep.join([SERVE_SRC, env.get("PYTHONPATH", "")]),
        )
        command = [sys.executable, "-m", "crossedge.core.cli", "serve", "--model", folder, "--name", "tiny"]
        command += ["--port", "0", "--drafter", "none", "--threads", "1"]
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self):
        for line in self.process.stderr:
            self.lines.append(line)

    def url(self, timeout=120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
                if found:
                    return found.group(1)
            assert self.process.poll() is None, "crossedge serve exited early:\n" + "".join(self.lines)
            time.sleep(0.05)
        raise AssertionError(f"crossedge serve did not listen within {timeout} s:\n" + "".join(self.lines))

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def events(response):
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: ") :]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_drains_in_flight_requests_refuses_new_ones_and_exits_0(tiny_folder, tmp_path, sig):
    served = ServeProcess(tiny_folder, tmp_path / "cache")
    try:
        url = served.url()
        body = {"model": "tiny", "messages": [{"role": "user", "content": "the dog ran"}], "temperature": 0}
        body.update(max_tokens=LONG, stream=True)
        one, two = httpx.Client(timeout=60), httpx.Client(timeout=60)
        with one, two, one.stream("POST", url + "/v1/chat/completions", json=body) as first:
            running = events(first)
            next(running)  # the role chunk
            with two.stream("POST", url + "/v1/chat/completions", json=body) as queued:
                waiting = events(queued)
                next(waiting)  # in the queue behind the first
                served.process.send_signal(sig)
                deadline = time.monotonic() + 30
                while httpx.get(url + "/health", timeout=30).status_code != 503:
                    assert time.monotonic() < deadline, "the server never started draining"
                    time.sleep(0.02)
                refused = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False}, timeout=30)
                assert refused.status_code == 503
                error = refused.json()["error"]
                assert error["type"] == "server_error" and error["code"] == "server_shutting_down"
                assert "shutting down" in error["message"] and "retry" in error["message"]
                for stream in (running, waiting):
                    rest = list(stream)
                    assert rest[-1] == "[DONE]"
                    assert json.loads(rest[-2])["choices"][0]["finish_reason"] == "length"
        assert served.process.wait(60) == 0, "".join(served.lines)
        assert any("draining" in line for line in served.lines)
    finally:
        served.stop()
