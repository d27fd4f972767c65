#!/usr/bin/env python3
"""A real model on Valet: greedy generation with a randomly initialised Llama-style model.

  llama_generate.py --allocator valet|native|expandable --dtype float32|bfloat16 [--cap-gib X]
                    [--rounds N] [--new-tokens N] [--model-size tiny|small|medium]
                    [--tokens-out FILE.json] [--logits-out FILE.pt] [--json]

Rounds of changing batch sizes and prompt lengths (llama_workload.py), the same weights and
inputs in every mode. float32 runs with TF32 off, so that the token ids of every round can be
compared across modes exactly (compare_runs.py). Records:
- the generated token ids of every round (--tokens-out, JSON);
- the first-step logits of every round, as generate hands them to its logits processors
  (float32, batch x vocab), saved with torch.save (--logits-out);
- peak device memory in use as the driver sees it: total - free from torch.cuda.mem_get_info(),
  sampled at every decode step and after every round, the largest minus the same figure taken
  after CUDA started and before the model was made (so the CUDA context is not counted);
- whether the run finished, or hit out-of-memory (oom: true, and the round).
Valet: torch.cuda.synchronize() + valet_torch.compact() between rounds (not with --no-compact).
--cap-gib (or --cap-bytes): native/expandable are capped with set_per_process_memory_fraction,
valet with install(capacity=...).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_workload  # noqa: E402
import torch_modes  # noqa: E402


def make_probe(torch, transformers):
    """A logits processor that changes nothing: it keeps the first step's scores of each round and
    samples the driver's view of memory in use at every decode step."""

    base = getattr(transformers, "LogitsProcessor", None)
    if base is None:
        from transformers.generation import LogitsProcessor as base

    class Probe(base):
        def __init__(self):
            self.first_scores = None
            self.peak_used = 0

        def sample(self):
            free, total = torch.cuda.mem_get_info()
            self.peak_used = max(self.peak_used, total - free)

        def __call__(self, input_ids, scores):
            if self.first_scores is None:
                self.first_scores = scores.detach().float().cpu()
            self.sample()
            return scores

    return Probe()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    torch_modes.add_mode_argument(parser, default="valet")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    cap = parser.add_mutually_exclusive_group()
    cap.add_argument("--cap-gib", type=float, help="memory cap in GiB")
    cap.add_argument("--cap-bytes", type=int, help="memory cap in bytes")
    parser.add_argument("--rounds", type=int, default=len(llama_workload.SCHEDULE))
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--model-size", choices=sorted(llama_workload.MODEL_SIZES), default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compact", action="store_true", help="valet: no compaction between rounds")
    parser.add_argument("--tokens-out", help="write the token ids of every round here (JSON)")
    parser.add_argument("--logits-out", help="write the first-step logits of every round here (torch.save)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    return parser.parse_args()


def main():
    args = parse_args()
    cap = args.cap_bytes if args.cap_bytes is not None else (
        int(args.cap_gib * (1 << 30)) if args.cap_gib is not None else None)
    alloc = torch_modes.Allocator(args.allocator, capacity=cap)
    torch = alloc.torch
    try:
        import transformers
    except ImportError as e:
        torch_modes.skip(f"transformers is not installed ({e})")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dtype = getattr(torch, args.dtype)
    free, total = torch.cuda.mem_get_info()  # the CUDA context exists from here on
    baseline = total - free
    probe = make_probe(torch, transformers)
    record = alloc.describe()
    record.update({"program": "llama_generate", "dtype": args.dtype, "model_size": args.model_size,
                   "rounds": args.rounds, "new_tokens": args.new_tokens, "cap_bytes": cap,
                   "transformers": transformers.__version__, "baseline_used_bytes": baseline})
    tokens, logits, compactions, after_compaction = [], [], 0, 0
    oom, oom_round, oom_message = False, None, None
    start = time.perf_counter()
    r = -1
    try:
        model = llama_workload.build_model(torch, args.model_size, dtype, seed=args.seed)
        vocab = model.config.vocab_size
        for r, (batch, length) in enumerate(llama_workload.rounds(args.rounds)):
            ids = llama_workload.prompt(torch, r, batch, length, vocab, seed=args.seed)
            probe.first_scores = None
            out = llama_workload.generate(torch, model, ids, args.new_tokens, probe)
            tokens.append(out.cpu().tolist())
            logits.append(probe.first_scores)
            del out
            probe.sample()
            if alloc.valet is not None and not args.no_compact:
                alloc.safe_point()
                compactions += 1
                free, total = torch.cuda.mem_get_info()
                after_compaction = max(after_compaction, total - free)
    except Exception as e:  # noqa: BLE001 -- out-of-memory is a result; anything else is re-raised
        if not torch_modes.is_oom(torch, e):
            raise
        oom, oom_round, oom_message = True, r, str(e).splitlines()[0][:300]
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    figures = alloc.figures()
    record.update({
        "finished": not oom, "oom": oom, "oom_round": oom_round, "oom_message": oom_message,
        "rounds_done": len(tokens),
        "peak_device_used_bytes": max(0, probe.peak_used - baseline),
        "peak_device_used_after_compaction_bytes": max(0, after_compaction - baseline) if compactions else None,
        "peak_reserved_bytes": figures["reserved_peak"], "peak_allocated_bytes": figures["allocated_peak"],
        "compactions": compactions, "wall_s": round(wall, 3),
        "tokens_out": args.tokens_out, "logits_out": args.logits_out,
    })
    if args.tokens_out:
        with open(args.tokens_out, "w") as f:
            json.dump({"allocator": args.allocator, "dtype": args.dtype, "finished": not oom,
                       "rounds": tokens}, f)
    if args.logits_out:
        torch.save({"allocator": args.allocator, "dtype": args.dtype, "first_step_logits": logits},
                   args.logits_out)
    if not args.json:
        gib = float(1 << 30)
        print(f"{args.allocator} {args.dtype}: {'oom in round %s' % oom_round if oom else 'finished'}, "
              f"peak in use {record['peak_device_used_bytes'] / gib:.2f} GiB, wall {wall:.1f} s",
              file=sys.stderr)
    torch_modes.emit(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
