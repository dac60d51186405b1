"""Throughput and latency of ``crossedge serve`` at 1, 2, 4 and 8 concurrent streams (a bounded load run).

    python packages/serve/benchmarks/load.py [--model smollm2-135m] [--streams 1,2,4,8] [--requests 8]
        [--max-tokens 64] [--threads 2] [--backend torch-onednn] [--configs NAME,...]
        [--llama-server BINARY --gguf FILE] [--json OUT]

For each server configuration (plain decoding or copy drafting, one request at a time or batched,
float32 or the ``int4`` preset) it starts ``crossedge serve`` on 127.0.0.1 with a free port, waits
for /health, and for each concurrency level sends a fixed number of chat requests (the bundled
suite's first turns, at temperature 0) from that many threads, then stops the server with SIGINT
(it drains and exits 0). It reports completion tokens per second over the wall time of the level,
the mean and worst request latency, and whether every answer equals its family's first one-stream
answer for that prompt (at temperature 0 every configuration of one model must give the same text:
the float32 configurations form one family, the int4 ones another).

With ``--llama-server`` (llama.cpp's server binary) and ``--gguf`` (the same model as a GGUF file)
it measures llama.cpp's server the same way, with one slot and with one slot per stream
(continuous batching); its answers form a third family, as its weights are the GGUF's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

CONFIGS = {
    "plain-serial": ["--drafter", "none"],
    "copy-serial": ["--drafter", "copy"],
    "plain-batched": ["--drafter", "none", "--max-batch", "8"],
    "copy-batched": ["--drafter", "copy", "--max-batch", "8"],
    "int4-plain-serial": ["--quant", "int4", "--drafter", "none"],
    "int4-copy-serial": ["--quant", "int4", "--drafter", "copy"],
    "int4-plain-batched": ["--quant", "int4", "--drafter", "none", "--max-batch", "8"],
    "int4-copy-batched": ["--quant", "int4", "--drafter", "copy", "--max-batch", "8"],
}
#: llama.cpp's server: one slot, or eight slots sharing batched forwards (its continuous batching).
LLAMA_CONFIGS = {
    "llama-server": ["--parallel", "1", "--ctx-size", "2048"],
    "llama-server-parallel": ["--parallel", "8", "--ctx-size", "16384"],
}
DEFAULT_CONFIGS = ("plain-serial", "copy-serial", "plain-batched", "copy-batched")


def family(config: str) -> str:
    """Configurations whose answers must agree at temperature 0: same weights, same arithmetic."""
    if config in LLAMA_CONFIGS:
        return "llama.cpp"
    return "int4" if config.startswith("int4-") else "float32"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts(count: int) -> list[str]:
    from crossedge.specdec.suite import default_suite

    firsts = [p.turns[0] for p in default_suite()]
    return [firsts[(i * 7) % len(firsts)] for i in range(count)]


def start(args: argparse.Namespace, name: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if name in LLAMA_CONFIGS:
        command = [args.llama_server, "--model", args.gguf, "--host", "127.0.0.1", "--port", str(port)]
        command += ["--threads", str(args.threads), "--threads-batch", str(args.threads), *LLAMA_CONFIGS[name]]
    else:
        command = ["crossedge", "serve", "--model", args.model, "--backend", args.backend, "--port", str(port)]
        command += ["--threads", str(args.threads), "--max-tokens-default", str(args.max_tokens), *CONFIGS[name]]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        time.sleep(1)
    server.kill()
    raise SystemExit("server did not become healthy within 300 s")


def ask(base: str, model: str, prompt: str, max_tokens: int) -> tuple[str, int, float]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    started = time.perf_counter()
    reply = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=600).json()
    return reply["choices"][0]["message"]["content"], reply["usage"]["completion_tokens"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--backend", default="torch-onednn")
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--requests", type=int, default=8, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help=f"comma-separated names among {', '.join([*CONFIGS, *LLAMA_CONFIGS])}",
    )
    parser.add_argument("--llama-server", default=None, help="llama.cpp's llama-server binary: adds its configs")
    parser.add_argument("--gguf", default=None, help="the model as a GGUF file, for --llama-server")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    levels = [int(v) for v in args.streams.split(",")]
    texts = prompts(args.requests)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS and n not in LLAMA_CONFIGS]
    if unknown:
        parser.error(f"unknown config {unknown[0]!r}: choose among {', '.join([*CONFIGS, *LLAMA_CONFIGS])}")
    if args.llama_server:
        if not args.gguf or not os.path.isfile(args.gguf):
            parser.error("--llama-server needs --gguf FILE: the same model as a GGUF file")
        names += [n for n in LLAMA_CONFIGS if n not in names]
    elif any(n in LLAMA_CONFIGS for n in names):
        parser.error("the llama-server configs need --llama-server BINARY and --gguf FILE")
    rows, reference = [], {}
    for name in names:
        server, base = start(args, name)
        try:
            ask(base, args.model, "Say hello.", 8)  # warm-up
            for streams in levels:
                started = time.perf_counter()
                with ThreadPoolExecutor(streams) as pool:
                    futures = [pool.submit(ask, base, args.model, p, args.max_tokens) for p in texts]
                    results = [f.result() for f in futures]
                wall = time.perf_counter() - started
                answers = [r[0] for r in results]
                same = all(reference.setdefault((family(name), i), a) == a for i, a in enumerate(answers))
                tokens = sum(r[1] for r in results)
                latencies = [r[2] for r in results]
                rows.append(
                    {
                        "config": name,
                        "family": family(name),
                        "streams": streams,
                        "requests": len(texts),
                        "tokens_per_s": tokens / wall,
                        "mean_latency_s": sum(latencies) / len(latencies),
                        "max_latency_s": max(latencies),
                        "same_as_one_stream": same,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=120)
            except subprocess.TimeoutExpired:
                server.kill()
    plain = {r["streams"]: r for r in rows if r["config"] == "plain-serial"}
    print("\n| config | streams | tokens/s | x plain-serial | mean latency s | max latency s | same |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        base_row = plain.get(r["streams"])
        ratio = f"{r['tokens_per_s'] / base_row['tokens_per_s']:.2f}" if base_row else "-"
        print(
            f"| {r['config']} | {r['streams']} | {r['tokens_per_s']:.1f} | {ratio} | {r['mean_latency_s']:.2f} "
            f"| {r['max_latency_s']:.2f} | {'yes' if r['same_as_one_stream'] else 'no'} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"command": " ".join(sys.argv), "cpu_count": os.cpu_count(), "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
