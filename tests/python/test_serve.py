"""`minigpt-med serve` as its clients use it, on the tiny model over loopback: the official
`openai` client gets the CLI's answers for every task (streaming and not), `/v1/answer` equals
`generate --json`, conversations reuse the image, a load test answers every request exactly,
hostile requests get a 4xx and leave the service answering, a full queue says 503 with
Retry-After, a client that leaves cancels its answer, and SIGTERM stops cleanly.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _server import ROOT, TINY, Server, generate_json  # noqa: E402

openai = pytest.importorskip("openai") if os.environ.get("CI") != "true" else __import__("openai")
import httpx  # noqa: E402

CT = TINY / "images" / "ct_nlst.png"
CXR = TINY / "images" / "cxr_rsna.jpg"
MRI = TINY / "images" / "mri_brain.jpg"
DICOM = ROOT / "tests" / "fixtures" / "dicom" / "CT_small.dcm"


def data_uri(path: Path, mime: str = "application/octet-stream") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def user(image: Path | None, text: str) -> dict:
    parts = [] if image is None else [{"type": "image_url", "image_url": {"url": data_uri(image)}}]
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


@pytest.fixture(scope="module")
def server():
    with Server("--parallel", "4") as s:
        yield s
        code, out = s.stop()
        assert code == 0, out


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


# (chat text, extra_body, CLI args): each task as users type it or through the `task` extension.
TASKS = [
    ("", {}, []),
    ("[vqa] Is there a nodule?", {}, ["--task", "vqa", "--prompt", "Is there a nodule?"]),
    ("[detection] nodule", {}, ["--task", "detection", "--prompt", "nodule"]),
    ("[refer] the nodule in the left lung", {}, ["--task", "refer", "--prompt", "the nodule in the left lung"]),
    ("the nodule", {"task": "refer"}, ["--task", "refer", "--prompt", "the nodule"]),
    ("", {"task": "grounding"}, ["--task", "grounding"]),
    ("", {"task": "identify", "region": [100, 50, 300, 400]}, ["--task", "identify", "--box", "100,50,300,400"]),
    ("what is here", {"task": "identify", "grid_region": [10, 20, 40, 60]},
     ["--task", "identify", "--prompt", "what is here", "--grid-box", "10,20,40,60"]),
    ("[identify] what is this {<10><20><40><60>}", {}, ["--instruction", "[identify] what is this {<10><20><40><60>}"]),
]


@pytest.mark.parametrize("text,extra,cli", TASKS, ids=[f"{i}" for i in range(len(TASKS))])
@pytest.mark.parametrize("image", [CT, CXR])
def test_openai_client_gets_the_cli_answer(client, text, extra, cli, image):
    want = generate_json("--image", str(image), "--max-new-tokens", "12", *cli)
    r = client.chat.completions.create(model="minigpt-med", messages=[user(image, text)], max_tokens=12,
                                       temperature=0, extra_body=extra)
    assert r.choices[0].message.content == want["text"]
    ext = r.model_extra["minigpt_med"]
    assert ext["token_ids"] == want["token_ids"]
    assert ext["boxes"] == want["boxes"]
    assert ext["stop_reason"] == want["stop_reason"]
    assert r.choices[0].finish_reason == ("stop" if want["stop_reason"] == "eos" else "length")
    assert r.usage.completion_tokens == len(want["token_ids"])
    # 256 image tokens (1024 patches / 4) plus the template's and the instruction's tokens.
    assert r.usage.prompt_tokens > 256

    pieces, last, usage = [], None, None
    stream = client.chat.completions.create(model="minigpt-med", messages=[user(image, text)], max_tokens=12,
                                            stream=True, stream_options={"include_usage": True}, extra_body=extra)
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            if c.finish_reason is not None:
                last = chunk
    assert "".join(pieces) == want["text"]
    assert last.model_extra["minigpt_med"]["token_ids"] == want["token_ids"]
    assert usage.completion_tokens == len(want["token_ids"]) and usage.prompt_tokens == r.usage.prompt_tokens


def test_dicom_with_a_window_preset_is_the_cli_answer(client):
    want = generate_json("--image", str(DICOM), "--window-preset", "lung", "--max-new-tokens", "10",
                         "--task", "vqa", "--prompt", "Is it normal?")
    r = client.chat.completions.create(model="m", messages=[user(DICOM, "[vqa] Is it normal?")], max_tokens=10,
                                       extra_body={"window_preset": "lung"})
    assert r.model_extra["minigpt_med"]["token_ids"] == want["token_ids"]
    assert r.choices[0].message.content == want["text"]


def test_sampling_and_stop_strings_follow_the_cli(client):
    want = generate_json("--image", str(CT), "--max-new-tokens", "16", "--temperature", "0.9", "--top-p", "0.9",
                         "--seed", "7")
    r = client.chat.completions.create(model="m", messages=[user(CT, "")], max_tokens=16, temperature=0.9,
                                       top_p=0.9, seed=7)
    assert r.model_extra["minigpt_med"]["token_ids"] == want["token_ids"]
    full = generate_json("--image", str(CT), "--max-new-tokens", "16")["text"]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    want = generate_json("--image", str(CT), "--max-new-tokens", "16", "--stop", stop)
    r = client.chat.completions.create(model="m", messages=[user(CT, "")], max_tokens=16, stop=[stop])
    assert r.choices[0].message.content == want["text"]
    assert r.choices[0].finish_reason == "stop" and r.model_extra["minigpt_med"]["stop_reason"] == "stop_string"


def test_native_answer_equals_generate_json(server):
    want = generate_json("--image", str(CXR), "--task", "refer", "--prompt", "the heart", "--max-new-tokens", "9",
                         "--color", "rgb")
    with open(CXR, "rb") as f:
        r = httpx.post(server.url + "/v1/answer", files={"image": ("cxr.jpg", f, "image/jpeg")},
                       data={"task": "refer", "prompt": "the heart", "max_new_tokens": "9", "color": "rgb"},
                       timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    for k in ("text", "token_ids", "boxes", "stop_reason"):
        assert got[k] == want[k], k
    assert set(got["timings"]) >= {"encode_ms", "prefill_ms", "decode_ms", "load_ms"}


def test_a_conversation_reuses_the_image(server, client):
    first = client.chat.completions.create(model="m", messages=[user(MRI, "[vqa] Is it normal?")], max_tokens=8)
    a0 = first.choices[0].message.content
    msgs = [{"role": "system", "content": "You are a radiologist."}, user(MRI, "[vqa] Is it normal?"),
            {"role": "assistant", "content": a0}, {"role": "user", "content": "[refer] the lesion"}]
    second = client.chat.completions.create(model="m", messages=msgs, max_tokens=8)
    again = client.chat.completions.create(model="m", messages=msgs, max_tokens=8)
    assert second.model_extra["minigpt_med"]["token_ids"] == again.model_extra["minigpt_med"]["token_ids"]
    # The second turn's prompt holds the first turn, its answer and the follow-up template.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + len(a0.split())
    # The image was encoded once: later questions about it pay no encode time.
    assert second.model_extra["minigpt_med"]["timings"]["encode_ms"] == 0
    assert second.model_extra["minigpt_med"]["instruction"] == "[refer] the lesion"


def test_models_health_metrics_and_render(server):
    m = httpx.get(server.url + "/v1/models").json()
    assert m["object"] == "list" and m["data"][0]["id"] == "minigpt-med"
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    text = httpx.get(server.url + "/metrics").text
    for name in ("minigpt_med_queue_length", "minigpt_med_active_sequences", "minigpt_med_tokens_per_second",
                 "minigpt_med_request_duration_seconds_bucket", "minigpt_med_generated_tokens_total",
                 'minigpt_med_requests_total{status="ok"}'):
        assert name in text, name
    r = httpx.post(server.url + "/v1/render?window_preset=lung", content=DICOM.read_bytes())
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    from PIL import Image
    import io
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (int(r.headers["x-image-width"]), int(r.headers["x-image-height"]))
    want = Image.open(ROOT / "tests" / "fixtures" / "dicom" / "CT_small.lung.png")
    assert img.size == want.size


def test_load_32_clients_4_requests_each_all_exact(server):
    """32 concurrent clients x 4 requests on 4 decode slots: every answer equals the sequential
    greedy answer of the CLI; none lost or failed. Prints p50/p99 latency and aggregate tokens/s
    (scripts/bench/serve_load.py, which docs/perf.md's 7B-shape run uses too)."""
    sys.path.insert(0, str(ROOT / "scripts" / "bench"))
    from serve_load import chat_body, run_load
    cases = [(CT, "[vqa] Is it normal?", ["--task", "vqa", "--prompt", "Is it normal?"], 24),
             (CXR, "[refer] the heart", ["--task", "refer", "--prompt", "the heart"], 16),
             (MRI, "", [], 20),
             (CT, "[detection] nodule", ["--task", "detection", "--prompt", "nodule"], 12)]
    want = [generate_json("--image", str(img), "--max-new-tokens", str(n), *cli)["token_ids"]
            for img, _, cli, n in cases]
    bodies = [chat_body(img, text, n) for img, text, _, n in cases]
    r = run_load(server.url, bodies, want, clients=32, requests=4)
    assert not r["errors"], r["errors"][:3]
    assert r["answered"] == 128 and r["tokens"] == 32 * sum(len(w) for w in want)
    print(f"\nload: {r['answered']} requests, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
          f"{r['tokens_per_s']:.1f} tokens/s aggregate, {r['wall_s']:.1f} s")


# --- hostile requests: each a 4xx with OpenAI's error object, then a good request answered --


def tiny_png_bomb() -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels (40 GB of RGBA)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def body_with_url(url: str) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "hi"}]}], "max_tokens": 4}


HOSTILE = [
    ("malformed json", b'{"messages": [', 400),
    ("not an object", b"[1, 2, 3]", 400),
    ("wrong type", json.dumps({"messages": "hello"}).encode(), 400),
    ("wrong type max_tokens", json.dumps({**body_with_url(data_uri(CT)), "max_tokens": "many"}).encode(), 400),
    ("bad base64", json.dumps(body_with_url("data:image/png;base64,@@@@not-base64")).encode(), 400),
    ("not a data uri", json.dumps(body_with_url("http://example.com/x.png")).encode(), 400),
    ("file url not allowed", json.dumps(body_with_url("file:///etc/passwd")).encode(), 400),
    ("png bomb", json.dumps(body_with_url(b64(tiny_png_bomb()))).encode(), 400),
    ("random bytes", json.dumps(body_with_url(b64(os.urandom(2000)))).encode(), 400),
    ("empty image", json.dumps(body_with_url(b64(b""))).encode(), 400),
    ("truncated jpeg", json.dumps(body_with_url(b64(CXR.read_bytes()[:600]))).encode(), 400),
    ("truncated dicom", json.dumps(body_with_url(
        b64((ROOT / "tests/fixtures/dicom/MR_truncated.dcm").read_bytes()))).encode(), 400),
    ("no image", json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), 400),
    ("two images", json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri(CT)}},
        {"type": "image_url", "image_url": {"url": data_uri(CT)}}]}]}).encode(), 400),
    ("thousands of messages", json.dumps({"messages": [user(CT, "hi")] + [
        {"role": "assistant" if i % 2 == 0 else "user", "content": "x"} for i in range(3001)]}).encode(), 400),
    ("a long conversation past the context", json.dumps({"messages": [user(CT, "hi")] + [
        {"role": "assistant" if i % 2 == 0 else "user", "content": "word " * 60} for i in range(101)],
        "max_tokens": 4}).encode(), 400),
    ("unknown role", json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(), 400),
    ("ends with the assistant", json.dumps({"messages": [user(CT, "hi"),
                                                         {"role": "assistant", "content": "x"}]}).encode(), 400),
    ("n=2", json.dumps({**body_with_url(data_uri(CT)), "n": 2}).encode(), 400),
    ("top_p without sampling", json.dumps({**body_with_url(data_uri(CT)), "top_p": 0.5}).encode(), 400),
    ("unknown task", json.dumps({**body_with_url(data_uri(CT)), "task": "segment"}).encode(), 400),
    ("region without identify", json.dumps({**body_with_url(data_uri(CT)), "task": "vqa",
                                            "region": [1, 2, 3, 4]}).encode(), 400),
    ("bad window", json.dumps({**body_with_url(data_uri(CT)), "window": [40, -5]}).encode(), 400),
    ("negative max_tokens", json.dumps({**body_with_url(data_uri(CT)), "max_tokens": -1}).encode(), 400),
    ("too many stop strings", json.dumps({**body_with_url(data_uri(CT)), "stop": ["x"] * 5000}).encode(), 400),
    ("a huge stop string", json.dumps({**body_with_url(data_uri(CT)), "stop": "x" * 100000}).encode(), 400),
    ("megabytes of text", json.dumps({"messages": [user(CT, "word " * 400000)]}).encode(), 400),
    ("a content list of numbers", json.dumps({"messages": [{"role": "user", "content": [0] * 500000}]}).encode(),
     400),
    ("stream null", json.dumps({**body_with_url(b64(b"junk")), "stream": None}).encode(), 400),
]


def good_request(url: str):
    r = httpx.post(url + "/v1/chat/completions", json={"messages": [user(CT, "[vqa] ok?")], "max_tokens": 3},
                   timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] is not None


@pytest.mark.parametrize("name,body,status", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_request_gets_a_4xx_and_the_next_is_answered(server, name, body, status):
    r = httpx.post(server.url + "/v1/chat/completions", content=body,
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == status, (name, r.status_code, r.text)
    err = r.json()["error"]
    assert err["message"] and err["type"] and err["code"], err
    good_request(server.url)


def test_hostile_native_forms(server):
    cases = [
        ({"task": "refer"}, {"image": ("x.png", CT.read_bytes())}, "needs"),
        ({"task": "vqa", "prompt": "q", "max_new_tokens": "ten"}, {"image": ("x.png", CT.read_bytes())}, "number"),
        ({"bogus": "1"}, {"image": ("x.png", CT.read_bytes())}, "unknown form field"),
        ({"task": "vqa", "prompt": "q"}, None, "image"),
        ({}, {"image": ("x.png", tiny_png_bomb())}, "image"),
    ]
    for data, files, says in cases:
        r = httpx.post(server.url + "/v1/answer", data=data, files=files, timeout=60)
        assert r.status_code == 400, (data, r.text)
        assert says in r.json()["error"]["message"], r.text
        good_request(server.url)
    r = httpx.post(server.url + "/v1/answer", content=b"not multipart", headers={"content-type": "text/plain"})
    assert 400 <= r.status_code < 500
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and "no route" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405
    good_request(server.url)


def test_body_limit_slow_client_and_api_key():
    with Server("--max-body-mb", "1", "--body-timeout-s", "2", "--api-key", "s3cret") as s:
        auth = {"authorization": "Bearer s3cret"}
        assert httpx.get(s.url + "/health").status_code == 200
        r = httpx.get(s.url + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(s.url + "/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(s.url + "/v1/models", headers=auth).status_code == 200
        big = json.dumps(body_with_url(b64(os.urandom(1_500_000)))).encode()
        r = httpx.post(s.url + "/v1/chat/completions", content=big, headers=auth)
        assert r.status_code == 413, r.text
        # A slow client: headers, then a body that never arrives in time.
        with socket.create_connection(("127.0.0.1", s.port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"mes")
            sock.settimeout(20)
            t0 = time.time()
            reply = sock.recv(4096).decode(errors="replace")
            assert reply.startswith("HTTP/1.1 408"), reply
            assert time.time() - t0 < 15
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": [user(CT, "hi")], "max_tokens": 3},
                       headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        code, out = s.stop()
        assert code == 0, out


def test_a_full_queue_answers_503_with_retry_after():
    with Server("--parallel", "1", "--max-queue", "1") as s:
        body = {"messages": [user(CT, "")], "max_tokens": 400}
        with cf.ThreadPoolExecutor(12) as pool:
            rs = list(pool.map(lambda _: httpx.post(s.url + "/v1/chat/completions", json=body, timeout=300),
                               range(12)))
        codes = [r.status_code for r in rs]
        assert codes.count(200) >= 2 and 503 in codes, codes
        busy = next(r for r in rs if r.status_code == 503)
        assert int(busy.headers["retry-after"]) >= 1
        assert busy.json()["error"]["code"] == "queue_full"
        good_request(s.url)
        assert 'minigpt_med_requests_total{status="rejected"}' in httpx.get(s.url + "/metrics").text


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_client_that_disconnects_cancels_its_answer():
    with Server("--parallel", "2") as s:
        body = {"messages": [user(CT, "")], "max_tokens": 3000, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
        # The stream is closed: the sequence ends at its next step, well before 3000 tokens.
        deadline = time.time() + 30
        while time.time() < deadline and metric(s.url, "minigpt_med_active_sequences") != 0:
            time.sleep(0.1)
        assert metric(s.url, "minigpt_med_active_sequences") == 0
        assert metric(s.url, 'minigpt_med_requests_total{status="cancelled"}') == 1
        assert metric(s.url, "minigpt_med_generated_tokens_total") < 3000
        good_request(s.url)


def test_sigterm_finishes_in_flight_work_and_exits_cleanly():
    with Server("--grace-s", "20") as s:
        got = {}

        def ask():
            r = httpx.post(s.url + "/v1/chat/completions",
                           json={"messages": [user(CT, "")], "max_tokens": 3000, "ignore_eos": True}, timeout=120)
            got["r"] = r

        t = threading.Thread(target=ask)
        t.start()
        deadline = time.time() + 30
        while time.time() < deadline and metric(s.url, "minigpt_med_active_sequences") == 0 and "r" not in got:
            time.sleep(0.005)
        assert "r" not in got, "the answer should still be running when SIGTERM comes"
        code, out = s.stop(signal.SIGTERM, timeout=60)
        t.join(60)
        assert code == 0, out
        assert "stopping" in out and "stopped" in out
        assert got["r"].status_code == 200, got["r"].text
        want = generate_json("--image", str(CT), "--max-new-tokens", "3000", "--ignore-eos")
        assert len(want["token_ids"]) == 3000
        assert got["r"].json()["minigpt_med"]["token_ids"] == want["token_ids"]


def test_after_the_grace_period_answers_are_cancelled():
    with Server("--grace-s", "0") as s:
        body = {"messages": [user(CT, "")], "max_tokens": 3000, "stream": True, "ignore_eos": True}
        finish = []
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            s.proc.send_signal(signal.SIGTERM)
            for line in lines:
                if line.startswith("data: {"):
                    c = json.loads(line[6:])
                    for ch in c.get("choices", []):
                        if ch.get("finish_reason"):
                            finish.append(ch["finish_reason"])
        assert finish == ["cancelled"], finish
        code, out = s.stop()
        assert code == 0, out


def test_browser_attacks_on_a_loopback_service_are_refused(server):
    # A DNS-rebinding page's requests carry its own host name.
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [user(CT, "hi")]},
                   headers={"host": "evil.example:8080"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_host"
    # A cross-origin form or text/plain post (no CORS preflight) is not JSON: refused.
    r = httpx.post(server.url + "/v1/chat/completions", content=json.dumps({"messages": [user(CT, "hi")]}),
                   headers={"content-type": "text/plain"})
    assert r.status_code == 415, r.text
    for host in ("localhost", f"127.0.0.1:{server.port}", f"[::1]:{server.port}"):
        assert httpx.get(server.url + "/health", headers={"host": host}).status_code == 200, host
    good_request(server.url)


def test_file_urls_read_only_regular_files_inside_the_allowed_directory(tmp_path):
    allowed = tmp_path / "images"
    allowed.mkdir()
    (allowed / "ct.png").write_bytes(CT.read_bytes())
    (allowed / "escape.png").symlink_to(CXR)
    os.mkfifo(allowed / "pipe.png")
    with Server("--allow-file-urls", str(allowed)) as s:
        want = generate_json("--image", str(CT), "--max-new-tokens", "6", "--instruction", "hi")
        r = httpx.post(s.url + "/v1/chat/completions",
                       json={**body_with_url(f"file://{allowed / 'ct.png'}"), "max_tokens": 6}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["minigpt_med"]["token_ids"] == want["token_ids"]
        messages = set()
        for path in (allowed / "escape.png", allowed / "pipe.png", allowed / "missing.png", Path("/etc/hostname"),
                     allowed / ".." / "images" / ".." / "x"):
            r = httpx.post(s.url + "/v1/chat/completions", json=body_with_url(f"file://{path}"), timeout=30)
            assert r.status_code == 400, (path, r.text)
            messages.add(r.json()["error"]["message"].replace(str(path), "PATH"))
        # The same words whether the path exists or not: nothing learned about the disk.
        assert len(messages) == 1, messages
        good_request(s.url)
        code, out = s.stop()
        assert code == 0, out


def test_a_request_still_uploading_at_sigterm_is_answered():
    with Server("--grace-s", "20") as s:
        body = json.dumps({"messages": [user(CT, "[vqa] ok?")], "max_tokens": 5}).encode()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", s.port)) as sock:
            sock.sendall(head + body[: len(body) // 2])
            time.sleep(0.3)
            s.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            sock.sendall(body[len(body) // 2:])
            sock.settimeout(60)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        status, _, rest = reply.partition(b"\r\n")
        assert status == b"HTTP/1.1 200 OK", reply[:300]
        want = generate_json("--image", str(CT), "--max-new-tokens", "5", "--task", "vqa", "--prompt", "ok?")
        assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["minigpt_med"]["token_ids"] == want["token_ids"]
        code, out = s.stop()
        assert code == 0, out


def test_connections_beyond_the_cap_wait_and_the_service_stays_up():
    with Server("--max-connections", "4") as s:
        idle = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(4)]
        time.sleep(0.3)
        with pytest.raises(httpx.TimeoutException):
            httpx.get(s.url + "/health", timeout=2)
        for sock in idle:
            sock.close()
        deadline = time.time() + 10
        while True:
            try:
                assert httpx.get(s.url + "/health", timeout=5).status_code == 200
                break
            except httpx.TimeoutException:
                assert time.time() < deadline
        good_request(s.url)
        code, out = s.stop()
        assert code == 0, out
