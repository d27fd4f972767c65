#!/usr/bin/env python3
"""Two ranks under torch.distributed with NCCL, each on one allocator: an all-reduce and a
training step of a small DDP model, with a safe point (synchronize + valet_torch.compact) after
each. Rank 0 writes the all-reduce result and the trained parameters; run once per allocator and
compare the files: valet's must be identical to native's.

  python3 -m torch.distributed.run --nproc_per_node 2 tests/gpu/torch/ddp_check.py \
      --allocator valet --out valet.pt
  python3 -m torch.distributed.run --nproc_per_node 2 tests/gpu/torch/ddp_check.py \
      --allocator native --out native.pt
  python3 tests/gpu/torch/ddp_check.py --compare valet.pt native.pt
or all three in one go (what CTest runs): ddp_check.py --both DIR

Each rank also checks the all-reduce exactly (integers in float32, so the sum has no rounding).
Exit status 0: right (and, with --compare, identical); 1: a difference; 77: skipped (no torch,
fewer than 2 GPUs, no library).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_modes  # noqa: E402


def compare(a, b):
    import torch

    x, y = torch.load(a, map_location="cpu"), torch.load(b, map_location="cpu")
    diffs = [k for k in sorted(set(x) | set(y)) if k not in x or k not in y or not torch.equal(x[k], y[k])]
    torch_modes.emit({"program": "ddp_check", "compare": [a, b], "identical": not diffs, "differing": diffs})
    return 0 if not diffs else 1


def both(directory):
    """Runs the two ranks under valet, then under native, then compares."""
    import subprocess

    torch = torch_modes.import_torch("native")
    if torch.cuda.device_count() < 2:
        torch_modes.skip(f"{torch.cuda.device_count()} GPU(s): two are needed")
    torch_modes.import_valet_torch()  # skips where the library is missing
    os.makedirs(directory, exist_ok=True)
    files = []
    for mode in ("valet", "native"):
        out = os.path.join(directory, f"ddp-{mode}.pt")
        files.append(out)
        rc = subprocess.call([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                              os.path.abspath(__file__), "--allocator", mode, "--out", out])
        if rc != 0:
            print(f"ddp_check: the {mode} ranks failed (exit status {rc})", file=sys.stderr)
            return 1
    return compare(*files)


def train_step(torch, rank, device):
    """One DDP step of a small MLP: the same weights on both ranks, a batch per rank."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
    model = DDP(model.to(device), device_ids=[device.index])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(64, 256, generator=g).to(device)
    y = torch.randn(64, 256, generator=g).to(device)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()  # DDP all-reduces the gradients here
    opt.step()
    return {f"param.{name}": p.detach().cpu() for name, p in model.module.named_parameters()}, loss.item()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    torch_modes.add_mode_argument(p, default="valet")
    p.add_argument("--out", help="rank 0 writes its results here (torch.save)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"))
    p.add_argument("--both", metavar="DIR", help="run valet and native, then compare (files in DIR)")
    args = p.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.both:
        return both(args.both)
    torch = torch_modes.import_torch(args.allocator)
    if torch.cuda.device_count() < 2:
        torch_modes.skip(f"{torch.cuda.device_count()} GPU(s): two are needed")
    if "LOCAL_RANK" not in os.environ:
        torch_modes.skip("not started by torch.distributed.run (LOCAL_RANK unset)")
    rank = int(os.environ["LOCAL_RANK"])
    alloc = torch_modes.Allocator(args.allocator)  # valet: installed before the first allocation
    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    import torch.distributed as dist

    dist.init_process_group("nccl", device_id=device)
    world = dist.get_world_size()
    n = 3 * (1 << 20) + 5
    t = (torch.arange(n, dtype=torch.float32, device=device) % 1000) * (rank + 1)
    dist.all_reduce(t)
    expected = (torch.arange(n, dtype=torch.float32, device=device) % 1000) * (world * (world + 1) // 2)
    reduce_ok = torch.equal(t, expected)
    alloc.safe_point()  # a safe point with the reduced tensor live
    reduce_ok = reduce_ok and torch.equal(t, expected)
    params, loss = train_step(torch, rank, device)
    alloc.safe_point()
    # DDP keeps the ranks' parameters equal: check that rank 1's match rank 0's.
    flat = torch.cat([v.view(-1) for _, v in sorted(params.items())]).to(device)
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    ranks_equal = all(torch.equal(gathered[0], g) for g in gathered)
    record = alloc.describe()
    record.update({"program": "ddp_check", "rank": rank, "world": world, "all_reduce_ok": reduce_ok,
                   "ranks_equal": ranks_equal, "loss": loss})
    if rank == 0 and args.out:
        torch.save(dict(params, all_reduce=t.cpu(), loss=torch.tensor(loss)), args.out)
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        torch_modes.emit(record)
    return 0 if reduce_ok and ranks_equal else 1


if __name__ == "__main__":
    sys.exit(main())
