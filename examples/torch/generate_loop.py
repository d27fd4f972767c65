"""A generation loop on Valet: batches of changing size, a KV cache grown by torch.cat every step,
and a safe-point compaction between steps. Plain torch ops on random weights: nothing to download.

    PYTHONPATH=python python3 examples/torch/generate_loop.py [--steps 64] [--capacity 0.5]

Every request batch allocates a fresh cache and grows it token by token, so tensors of many sizes
come and go, which is what splits a caching allocator's segments into holes. Between steps the
loop calls valet_torch.compact(), which synchronizes the device and meshes the sparse pages
beneath live tensors (their addresses do not change), and prints what the heap holds.
"""
import argparse
import sys

import valet_torch


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=64, help="decoding steps per batch")
    p.add_argument("--batches", type=int, default=12, help="request batches")
    p.add_argument("--dim", type=int, default=1024, help="model width")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--capacity", default=None, help="Valet's capacity: bytes ('8GiB') or a fraction ('0.5')")
    p.add_argument("--compact-every", type=int, default=8, help="steps between safe-point compactions")
    return p.parse_args()


def attention_step(torch, x, cache, wq, wkv, wo, heads):
    """One layer of one decoding step: appends this token's K and V to the cache (torch.cat makes a
    new, larger tensor; the old one is freed) and attends over the whole cache."""
    batch, dim = x.shape
    q = (x @ wq).view(batch, heads, 1, dim // heads)
    kv = (x @ wkv).view(batch, 2, heads, 1, dim // heads)
    cache = kv if cache is None else torch.cat([cache, kv], dim=3)
    k, v = cache[:, 0], cache[:, 1]
    scores = torch.softmax((q @ k.transpose(-1, -2)) / (dim // heads) ** 0.5, dim=-1)
    out = (scores @ v).reshape(batch, dim) @ wo
    return x + out, cache


def mib(n):
    return f"{n / (1 << 20):8.1f} MiB"


def main():
    args = parse_args()
    valet_torch.install(capacity=args.capacity)  # before the first CUDA allocation
    import torch

    if not torch.cuda.is_available():
        print("generate_loop: needs a CUDA device (PyTorch sees none)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    dev = torch.device("cuda")
    dim, heads = args.dim, args.heads
    layers = [(torch.randn(dim, dim, device=dev) / dim**0.5, torch.randn(dim, 2 * dim, device=dev) / dim**0.5,
               torch.randn(dim, dim, device=dev) / dim**0.5) for _ in range(args.layers)]
    batch_sizes = [1, 8, 3, 16, 2, 12, 5, 24, 4, 9, 1, 32]
    with torch.no_grad():
        for b in range(args.batches):
            batch = batch_sizes[b % len(batch_sizes)]
            x = torch.randn(batch, dim, device=dev)
            caches = [None] * len(layers)
            for step in range(args.steps):
                for i, (wq, wkv, wo) in enumerate(layers):
                    x, caches[i] = attention_step(torch, x, caches[i], wq, wkv, wo, heads)
                x = torch.nn.functional.layer_norm(x, (dim,))
                if (step + 1) % args.compact_every == 0:
                    record = valet_torch.compact()  # the safe point: synchronizes first
                    s = valet_torch.memory_stats()
                    print(f"batch {b:2d} (size {batch:2d}) step {step + 1:3d}: allocated "
                          f"{mib(s['allocated_bytes.all.current'])}  reserved {mib(s['reserved_bytes.all.current'])}"
                          f"  frag {s['fragmentation']:.2f}  meshed {record.get('pages_meshed', 0)}"
                          f"  freed {record.get('pages_freed', 0)}")
            del caches, x
    s = valet_torch.memory_stats()
    free, total = torch.cuda.mem_get_info()  # the driver's view of the whole device
    print(f"peak allocated {mib(s['allocated_bytes.all.peak'])}, peak reserved {mib(s['reserved_bytes.all.peak'])};"
          f" the device has {mib(total - free)} in use now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
