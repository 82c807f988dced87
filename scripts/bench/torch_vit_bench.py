"""PyTorch's eager fp32 CPU forward of MiniGPT-Med's vision encoder, for the side-by-side table:
EVA ViT-g/14 at 448 px (1025 tokens, width 1408, 16 heads, MLP 6144, the 39 of 40 blocks
MiniGPT-Med uses), random weights, as `minigpt-med bench` times it (one image).

    python torch_vit_bench.py --threads 2 --repeats 2   # prints one JSON line
"""

import argparse
import json
import resource
import time

import torch
from torch import nn

WIDTH, HEADS, MLP, DEPTH, PATCH, SIZE = 1408, 16, 6144, 39, 14, 448


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(WIDTH))
        self.v_bias = nn.Parameter(torch.zeros(WIDTH))
        self.proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        b, n, _ = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = nn.functional.linear(x, self.qkv.weight, bias).reshape(b, n, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (WIDTH // HEADS) ** -0.5, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH, eps=1e-6), nn.LayerNorm(WIDTH, eps=1e-6)
        self.attn = Attention()
        self.mlp = nn.Sequential(nn.Linear(WIDTH, MLP), nn.GELU(), nn.Linear(MLP, WIDTH))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EvaViTG(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, WIDTH, PATCH, PATCH)
        self.cls = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos = nn.Parameter(torch.randn(1, (SIZE // PATCH) ** 2 + 1, WIDTH) * 0.02)
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for b in self.blocks:
            x = b(x)
        return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = EvaViTG().eval()
    image = torch.randn(1, 3, SIZE, SIZE)
    times = []
    with torch.inference_mode():
        model(image)  # warm-up
        for _ in range(a.repeats):
            t = time.perf_counter()
            out = model(image)
            times.append(time.perf_counter() - t)
    assert out.shape == (1, 1025, WIDTH)
    print(json.dumps({
        "torch": torch.__version__, "threads": a.threads, "repeats": a.repeats,
        "encode_ms": {"min": min(times) * 1e3, "median": sorted(times)[len(times) // 2] * 1e3, "all": [t * 1e3 for t in times]},
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
