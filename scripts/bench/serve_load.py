#!/usr/bin/env python3
"""Load test of `minigpt-med serve`: C concurrent clients, each sending R chat completions in turn;
prints p50/p99 latency and the aggregate tokens/s, and checks every answer against an expected one.

By hand, at real size (a 7B-shape model file of random weights):

    minigpt-med bench --synthetic 7b --llm-dtype q4_0 --write-model /tmp/7b-q4_0.gguf --load-only
    minigpt-med serve --model /tmp/7b-q4_0.gguf --parallel 8 --port 8080 &
    python3 scripts/bench/serve_load.py --url http://127.0.0.1:8080 --clients 8 --requests 2 \\
        --max-tokens 16 --image tests/fixtures/tiny/images/ct_nlst.png --json docs/bench/serve-7b.json

Expected answers: each distinct request is first asked alone (sequentially, greedy), then the
load must reproduce it token for token. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def post(url: str, body: dict, api_key: str | None = None, timeout: float = 3600) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json",
                                          **({"authorization": f"Bearer {api_key}"} if api_key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def chat_body(image: Path, text: str, max_tokens: int, **extra) -> dict:
    uri = "data:application/octet-stream;base64," + base64.b64encode(image.read_bytes()).decode()
    return {"model": "minigpt-med", "max_tokens": max_tokens, **extra, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": text}]}]}


def run_load(url: str, bodies: list[dict], expected: list[list[int]] | None = None, clients: int = 32,
             requests: int = 4, api_key: str | None = None) -> dict:
    """Client k sends bodies[(k + j) % len(bodies)] for j in 0..requests, one after another; all
    clients at once. With `expected`, each answer's token ids must equal expected[i]."""
    if expected is None:
        expected = []
        for b in bodies:
            status, r = post(url, b, api_key)
            if status != 200:
                raise RuntimeError(f"the sequential answer failed: {status} {r}")
            expected.append(r["minigpt_med"]["token_ids"])
    latencies: list[float] = []
    errors: list = []
    tokens = [0]
    lock = threading.Lock()

    def client(k: int):
        for j in range(requests):
            i = (k + j) % len(bodies)
            t0 = time.perf_counter()
            status, r = post(url, bodies[i], api_key)
            dt = time.perf_counter() - t0
            with lock:
                if status != 200:
                    errors.append({"client": k, "request": j, "status": status, "body": r})
                    continue
                got = r["minigpt_med"]["token_ids"]
                if got != expected[i]:
                    errors.append({"client": k, "request": j, "mismatch": [got, expected[i]]})
                latencies.append(dt)
                tokens[0] += len(got)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [latencies[0] if latencies else 0] * 99
    return {"clients": clients, "requests_per_client": requests, "answered": len(latencies),
            "errors": errors, "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "tokens": tokens[0],
            "wall_s": wall, "tokens_per_s": tokens[0] / wall if wall > 0 else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--image", type=Path, action="append", required=True, help="repeatable")
    ap.add_argument("--prompt", action="append", help="repeatable (default: a report, a vqa, a refer)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4, help="per client")
    ap.add_argument("--max-tokens", type=int, default=20)
    ap.add_argument("--ignore-eos", action="store_true", help="every answer exactly --max-tokens long")
    ap.add_argument("--api-key")
    ap.add_argument("--json", type=Path, help="write the result here")
    a = ap.parse_args()
    prompts = a.prompt or ["", "[vqa] Is there a nodule?", "[refer] the nodule"]
    extra = {"ignore_eos": True} if a.ignore_eos else {}
    bodies = [chat_body(img, p, a.max_tokens, **extra) for img in a.image for p in prompts]
    print(f"serve_load: {len(bodies)} distinct requests, asked alone first", file=sys.stderr)
    result = run_load(a.url, bodies, None, a.clients, a.requests, a.api_key)
    with urllib.request.urlopen(a.url + "/v1/models") as r:
        result["model"] = json.load(r)["data"][0]
    print(f"{result['answered']} answered, {len(result['errors'])} errors; latency p50 {result['p50_ms']:.0f} ms, "
          f"p99 {result['p99_ms']:.0f} ms; {result['tokens_per_s']:.2f} tokens/s aggregate over {result['wall_s']:.1f} s")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
