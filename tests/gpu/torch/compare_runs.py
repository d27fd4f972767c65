#!/usr/bin/env python3
"""Compares llama_generate.py's outputs across allocator modes and prints one verdict JSON line.

  compare_runs.py --tokens-valet F --tokens-native F [--tokens-expandable F]
                  [--logits-valet F --logits-native F --logits-expandable F]
                  [--results results.jsonl] [--factor 1.25]

Checks (each only where its files are given; exit status 1 when one fails):
- float32_tokens: the float32 token ids of every round are identical, valet against native.
  (native against expandable is reported too: on the H200 they agree.)
- bfloat16_logits: for every round, max |logits_valet - logits_native| is within what
  expandable_segments shows against native: d_valet <= factor * d_expandable + ulp, where ulp is one
  bfloat16 step at the round's largest |logit| (2^(floor(log2 max|logit|) - 7)). Why a tolerance:
  in bfloat16 the kernels cuBLAS picks depend on the addresses' alignment, so two allocators that
  place tensors differently get slightly different sums; neither is the "right" one. The factor
  (default 1.25) allows valet's differences to be of the same size as expandable's, not larger by
  more than a quarter; the ulp keeps a round where expandable happens to match native exactly from
  demanding bit-identity of valet.
Targets reported from --results but not failing the exit status (they are measurements): bfloat16
peak device memory in use, valet below native and below expandable; under the cap, native hit
out-of-memory where valet finished.
"""
import argparse
import json
import math
import os
import sys


def load_tokens(path):
    with open(path) as f:
        return json.load(f)


def compare_tokens(a, b):
    """(identical, first differing round or None, rounds compared)."""
    ra, rb = a["rounds"], b["rounds"]
    if not a.get("finished", True) or not b.get("finished", True) or len(ra) != len(rb):
        return False, None, min(len(ra), len(rb))
    for i, (x, y) in enumerate(zip(ra, rb)):
        if x != y:
            return False, i, len(ra)
    return True, None, len(ra)


def compare_logits(torch, valet, native, expandable, factor):
    lv, ln, le = (x["first_step_logits"] for x in (valet, native, expandable))
    rounds, ok = [], len(lv) == len(ln) == len(le) and len(ln) > 0
    for i, (v, n, e) in enumerate(zip(lv, ln, le)):
        if v is None or n is None or e is None or v.shape != n.shape or e.shape != n.shape:
            rounds.append({"round": i, "ok": False, "why": "missing or differently shaped logits"})
            ok = False
            continue
        dv = (v - n).abs().max().item()
        de = (e - n).abs().max().item()
        top = n.abs().max().item()
        ulp = 2.0 ** (math.floor(math.log2(top)) - 7) if top > 0 else 0.0
        good = dv <= factor * de + ulp
        ok = ok and good
        rounds.append({"round": i, "ok": good, "max_diff_valet": dv, "max_diff_expandable": de,
                       "ulp": ulp, "valet_identical": dv == 0.0})
    return ok, rounds


def targets(results_path):
    """Memory and cap figures from run_all.sh's results.jsonl (reported, not failing)."""
    runs = []
    with open(results_path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    runs.append(json.loads(line))
                except ValueError:
                    pass
    peaks, cap = {}, {}
    for run in runs:
        r = run.get("result") or {}
        if r.get("program") != "llama_generate":
            continue
        if r.get("dtype") == "bfloat16" and r.get("cap_bytes") is None and r.get("finished"):
            peaks[r["allocator"]] = r["peak_device_used_bytes"]
        if r.get("cap_bytes") is not None:
            cap.setdefault(r["cap_bytes"], {})[r["allocator"]] = bool(r.get("finished"))
    out = {"bfloat16_peak_device_used_bytes": peaks}
    if {"valet", "native", "expandable"} <= peaks.keys():
        out["memory_below_native_and_expandable"] = peaks["valet"] < min(peaks["native"], peaks["expandable"])
    shown = [c for c, m in cap.items() if m.get("valet") and m.get("native") is False]
    out["capped_runs"] = {str(c): m for c, m in sorted(cap.items())}
    out["cap_where_native_fails_and_valet_finishes"] = min(shown) if shown else None
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for kind in ("tokens", "logits"):
        for mode in ("valet", "native", "expandable"):
            p.add_argument(f"--{kind}-{mode}")
    p.add_argument("--results")
    p.add_argument("--factor", type=float, default=1.25)
    args = p.parse_args()
    verdict, failed = {"program": "compare_runs"}, []
    for name, path in sorted(vars(args).items()):
        if name.startswith(("tokens_", "logits_")) and path and not os.path.isfile(path):
            failed.append(f"{name.replace('_', '-')}: {path} does not exist (its run did not finish?)")
            setattr(args, name, None)
    if args.tokens_valet and args.tokens_native:
        native = load_tokens(args.tokens_native)
        same, first, n = compare_tokens(load_tokens(args.tokens_valet), native)
        verdict["float32_tokens"] = {"ok": same, "rounds": n, "first_differing_round": first}
        if not same:
            failed.append("float32_tokens")
        if args.tokens_expandable:
            same_e, first_e, _ = compare_tokens(load_tokens(args.tokens_expandable), native)
            verdict["float32_tokens_expandable_vs_native"] = {"identical": same_e, "first_differing_round": first_e}
    if args.logits_valet and args.logits_native and args.logits_expandable:
        import torch

        loaded = [torch.load(f, map_location="cpu") for f in (args.logits_valet, args.logits_native,
                                                               args.logits_expandable)]
        ok, rounds = compare_logits(torch, *loaded, args.factor)
        verdict["bfloat16_logits"] = {"ok": ok, "factor": args.factor, "rounds": rounds}
        if not ok:
            failed.append("bfloat16_logits")
    if args.results:
        verdict["targets"] = targets(args.results)
    if not failed and "float32_tokens" not in verdict and "bfloat16_logits" not in verdict:
        failed.append("nothing to compare: give token or logits files")
    verdict["ok"] = not failed
    verdict["failed"] = failed
    print(json.dumps(verdict), flush=True)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
