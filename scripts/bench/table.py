"""Render the JSON files of one `peers.sh` run as the Markdown tables of docs/perf.md.

    python3 scripts/bench/table.py bench-results
"""

import json
import pathlib
import sys

GIB = 1 << 30


def load(d, name):
    p = d / name
    return json.loads(p.read_text()) if p.exists() and p.stat().st_size else None


def main(d):
    d = pathlib.Path(d)
    pairs = [("Q4_0", "minigpt_med_q4_0.json", "llama_cpp_q4_0.json"),
             ("Q8_0", "minigpt_med_q8_0.json", "llama_cpp_q8_0.json"),
             ("Q4_K (llama.cpp: Q4_K_M)", "minigpt_med_q4k.json", "llama_cpp_q4_k_m.json")]
    print("| weights | engine | load | prefill tok/s (best / median) | decode tok/s (best / median) | peak RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for fmt, ours, theirs in pairs:
        o, t = load(d, ours), load(d, theirs)
        if t:
            print(f"| {fmt} | llama.cpp | {t['load_s']:.0f} s | {t['prefill_tokens_per_s']['best']:.2f} / "
                  f"{t['prefill_tokens_per_s']['median']:.2f} | {t['decode_tokens_per_s']['best']:.2f} / "
                  f"{t['decode_tokens_per_s']['median']:.2f} | {t['peak_rss_bytes'] / GIB:.2f} GiB |")
        if o:
            print(f"| {fmt} | minigpt-med | {o['load_ms'] / 1e3:.0f} s | {o['prefill_tokens_per_s']['best']:.2f} / "
                  f"{o['prefill_tokens_per_s']['median']:.2f} | {o['decode_tokens_per_s']['best']:.2f} / "
                  f"{o['decode_tokens_per_s']['median']:.2f} | {o['peak_rss_bytes'] / GIB:.2f} GiB "
                  f"(LLM {o['llm_weight_bytes'] / GIB:.2f} GiB + f32 ViT) |")
    print()
    tv = load(d, "torch_vit.json")
    print("| EVA ViT-g f32, one 448 px image | min | median |")
    print("| --- | --- | --- |")
    if tv:
        print(f"| PyTorch {tv['torch']} eager | {tv['encode_ms']['min'] / 1e3:.1f} s | {tv['encode_ms']['median'] / 1e3:.1f} s |")
    for fmt, ours, _ in pairs:
        o = load(d, ours)
        if o:
            print(f"| minigpt-med (run with {fmt.split()[0]}) | {o['encode_ms']['min'] / 1e3:.1f} s | "
                  f"{o['encode_ms']['median'] / 1e3:.1f} s |")

    # One answer (image -> 20 tokens) as a user sees it, beside the same pipeline made of
    # PyTorch's ViT and llama.cpp's LLM (its prefill of the same 298 positions and 19 steps).
    rows = []
    for fmt, ours, theirs in pairs:
        o, t = load(d, ours), load(d, theirs)
        e = o and o.get("end_to_end")
        if not e:
            continue
        ms = lambda k: e[k]["median"] / 1e3
        peer = "-"
        if t and tv:
            n = e["new_tokens"]
            s = (tv["encode_ms"]["median"] / 1e3 + t["prompt_tokens"] / t["prefill_tokens_per_s"]["median"]
                 + max(n - 1, 0) / t["decode_tokens_per_s"]["median"])
            peer = f"{s:.1f} s"
        rows.append(f"| {fmt} | {ms('total_ms'):.1f} s | {ms('encode_ms'):.1f} s | {ms('prefill_ms'):.1f} s | "
                    f"{ms('decode_ms'):.1f} s ({e['new_tokens']} tokens) | {peer} |")
    if rows:
        print()
        print("| one answer (median) | minigpt-med total | encode | prefill | decode | PyTorch ViT + llama.cpp |")
        print("| --- | --- | --- | --- | --- | --- |")
        print("\n".join(rows))

    k = load(d, "kernels.json")
    if k:
        print()
        print("| matrix | format | rows m | ours ms | candle ms | ours GFLOP/s | candle GFLOP/s | ours weight GB/s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in k["kernels"]:
            c = lambda v, f: "-" if v is None else format(v, f)
            print(f"| {r['matrix']} {r['rows']}x{r['cols']} | {r['format']} | {r['m']} | {r['ours_ms']:.2f} | "
                  f"{c(r['candle_ms'], '.2f')} | {r['ours_gflops']:.1f} | {c(r['candle_gflops'], '.1f')} | "
                  f"{r['ours_weight_gbps']:.1f} |")
        if "memory_read_gbps" in k:
            print(f"\nMemory read bandwidth in the same run: {k['memory_read_gbps']:.1f} GB/s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
