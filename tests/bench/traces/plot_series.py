#!/usr/bin/env python3
"""Plots mapped and live bytes over the steps of one trace for several allocators, as an SVG
(standard library only). Each input is a CSV with a header naming `live_bytes` and `mapped_bytes`
columns, one row per step (valet-replay --step-log, torch_series.py).

usage: plot_series.py OUT.svg TITLE LABEL=FILE.csv [LABEL=FILE.csv ...]
"""
import csv, sys

W, H, L, R, T, B = 960, 480, 70, 200, 40, 50
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]

def load(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [float(r["live_bytes"]) for r in rows], [float(r["mapped_bytes"]) for r in rows]

def main():
    out, title, series = sys.argv[1], sys.argv[2], [a.split("=", 1) for a in sys.argv[3:]]
    data = [(label, *load(path)) for label, path in series]
    steps = max(len(d[1]) for d in data)
    top = max(max(d[2] + d[1]) for d in data) / 2**30 * 1.05
    x = lambda i: L + (W - L - R) * i / max(1, steps - 1)
    y = lambda gib: T + (H - T - B) * (1 - gib / top)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W/2}" y="22" text-anchor="middle" font-size="15">{title}</text>',
           f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>',
           f'<text x="{(L+W-R)/2}" y="{H-12}" text-anchor="middle">step</text>',
           f'<text x="16" y="{(T+H-B)/2}" transform="rotate(-90 16 {(T+H-B)/2})" text-anchor="middle">GiB</text>']
    for k in range(6):
        g = top * k / 5
        svg.append(f'<text x="{L-6}" y="{y(g)+4}" text-anchor="end">{g:.1f}</text>')
        svg.append(f'<line x1="{L}" y1="{y(g)}" x2="{W-R}" y2="{y(g)}" stroke="#ddd"/>')
    for k in range(6):
        s = int((steps - 1) * k / 5)
        svg.append(f'<text x="{x(s)}" y="{H-B+16}" text-anchor="middle">{s}</text>')
    def line(values, color, dash=""):
        stride = max(1, len(values) // 1500)
        pts = " ".join(f"{x(i):.1f},{y(v / 2**30):.1f}" for i, v in enumerate(values) if i % stride == 0)
        return f'<polyline fill="none" stroke="{color}" stroke-width="1.3" {dash} points="{pts}"/>'
    legend_y = T + 10
    for n, (label, live, mapped) in enumerate(data):
        c = COLORS[n % len(COLORS)]
        svg.append(line(mapped, c))
        svg.append(f'<line x1="{W-R+10}" y1="{legend_y}" x2="{W-R+30}" y2="{legend_y}" stroke="{c}" stroke-width="2"/>')
        svg.append(f'<text x="{W-R+35}" y="{legend_y+4}">{label} mapped</text>')
        legend_y += 18
    svg.append(line(data[0][1], "black", 'stroke-dasharray="4 3"'))
    svg.append(f'<line x1="{W-R+10}" y1="{legend_y}" x2="{W-R+30}" y2="{legend_y}" stroke="black" stroke-dasharray="4 3"/>')
    svg.append(f'<text x="{W-R+35}" y="{legend_y+4}">live (requested)</text>')
    svg.append("</svg>")
    open(out, "w").write("\n".join(svg))

if __name__ == "__main__":
    main()
