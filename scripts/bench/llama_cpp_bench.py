"""llama.cpp (through llama-cpp-python) on the same work as `minigpt-med bench`: prefill of a
298-token prompt (MiniGPT-Med's 8 + 256 image + 34 text positions) and 64 decoded tokens.

    python llama_cpp_bench.py quantize F16.gguf OUT.gguf q4_0|q8_0|q4_k_m
    python llama_cpp_bench.py run MODEL.gguf --threads 2 --repeats 2   # prints one JSON line
"""

import argparse
import json
import resource
import time

import llama_cpp

FTYPES = {
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
}


def quantize(src, dst, kind, threads):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[kind]
    params.nthread = threads
    t = time.perf_counter()
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params) != 0:
        raise SystemExit(f"quantizing {src} to {kind} failed")
    print(json.dumps({"quantized": dst, "ftype": kind, "seconds": time.perf_counter() - t}))


def run(path, threads, repeats, prompt_len, decode):
    t = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=path, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=threads, n_threads_batch=threads,
        verbose=False, logits_all=False,
    )
    load_s = time.perf_counter() - t
    # Ids past the special and byte tokens; their values do not change the cost.
    prompt = [1] + [300 + (i * 7919) % 31000 for i in range(prompt_len - 1)]
    prefill, dec = [], []
    for _ in range(repeats):
        llm.reset()
        llm._ctx.kv_cache_clear()
        t = time.perf_counter()
        llm.eval(prompt)
        prefill.append(prompt_len / (time.perf_counter() - t))
        t = time.perf_counter()
        for i in range(decode):
            llm.eval([300 + i])
        dec.append(decode / (time.perf_counter() - t))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # As `minigpt-med bench`: sorted best first, the median is the middle (of two, the worse).
    best_med = lambda v: {"best": max(v), "median": sorted(v, reverse=True)[len(v) // 2], "all": v}
    print(json.dumps({
        "model": path, "llama_cpp_python": llama_cpp.__version__, "threads": threads, "repeats": repeats,
        "load_s": load_s, "prompt_tokens": prompt_len, "prefill_tokens_per_s": best_med(prefill),
        "decode_tokens": decode, "decode_tokens_per_s": best_med(dec), "peak_rss_bytes": peak,
    }))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quantize")
    q.add_argument("src"), q.add_argument("dst"), q.add_argument("kind", choices=FTYPES)
    q.add_argument("--threads", type=int, default=2)
    r = sub.add_parser("run")
    r.add_argument("model")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--repeats", type=int, default=2)
    r.add_argument("--prompt-tokens", type=int, default=298)
    r.add_argument("--decode-tokens", type=int, default=64)
    a = ap.parse_args()
    if a.cmd == "quantize":
        quantize(a.src, a.dst, a.kind, a.threads)
    else:
        run(a.model, a.threads, a.repeats, a.prompt_tokens, a.decode_tokens)


if __name__ == "__main__":
    main()
