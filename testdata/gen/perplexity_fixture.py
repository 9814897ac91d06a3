#!/usr/bin/env python3
"""Turn llama-perplexity logs (plain run and --kl-divergence runs) into a JSON fixture.

Usage: perplexity_fixture.py OUT.json --base NAME=ppl.log [--kld NAME=ppl-kld.log ...] [--meta K=V ...]

Reads only the logs; builds and runs nothing. Log timestamps are "M.SS.mmm.uuu" (minutes,
seconds, ms, us since start); tokens/s = n_chunk*n_ctx / (time of the final line - time of the
"calculating" line), i.e. wall time of the evaluation loop on this machine; only for plain
runs (--kl-divergence runs print no timestamp after their loop).
"""
import argparse
import json
import re
import sys

TS = re.compile(r"^(\d+)\.(\d+)\.(\d+)\.(\d+) ")
NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"


def ts(line):
    m = TS.match(line)
    if not m:
        return None
    mi, s, ms, us = map(int, m.groups())
    return mi * 60 + s + ms / 1e3 + us / 1e6


def parse(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    lines = text.splitlines()
    out = {"log": path.split("/")[-1]}
    t0 = t1 = None
    for l in lines:
        m = re.search(r"(?:calculating perplexity over|computing over) (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)", l)
        if m:
            out["n_chunk"], out["n_ctx"], out["n_batch"], out["n_seq"] = map(int, m.groups())
            t0 = ts(l)
        m = re.search(r"(\d+(?:\.\d+)?) seconds per pass", l)
        if m:
            out["seconds_first_pass"] = float(m.group(1))
        m = re.search(r"Final estimate: PPL = " + NUM + r" \+/- " + NUM, l)
        if m:
            out["ppl"], out["ppl_err"] = float(m.group(1)), float(m.group(2))
            t1 = ts(l)
    cum = re.findall(r"\[(\d+)\]" + NUM + ",", text)
    if cum:
        out["ppl_cumulative_by_chunk"] = [float(v) for _, v in cum]
    # --kl-divergence per-chunk table: "   1    12.0060 ±   1.23    0.00123 ± ..."
    rows = []
    for l in lines:
        pm = r"\s*±\s*"
        m = re.match(r"^\s*(\d+)\s+" + NUM + pm + NUM + r"\s+" + NUM + pm + NUM + r"\s+" + NUM + pm + NUM
                     + r"\s+" + NUM + pm + NUM + r"\s*%\s+" + NUM + pm + NUM + r"\s*%\s*$", l)
        if m:
            g = [float(x) for x in m.groups()]
            rows.append({"chunk": int(g[0]), "ppl": g[1], "ppl_unc": g[2], "ln_ppl_ratio": g[3], "ln_ppl_ratio_unc": g[4],
                         "kld": g[5], "kld_unc": g[6], "rms_dp_pct": g[7], "rms_dp_pct_unc": g[8],
                         "same_top_pct": g[9], "same_top_pct_unc": g[10]})
    if rows:
        out["kld_cumulative_by_chunk"] = rows
        t1 = None  # --kl-divergence runs print no timestamp after the loop
    stats = {}
    for l in lines:
        m = re.match(r"^(?:\S+ \w )?(Mean PPL\(Q\)|Mean PPL\(base\)|Mean ln\(PPL\(Q\)/PPL\(base\)\)|Mean PPL\(Q\)/PPL\(base\)|Mean PPL\(Q\)-PPL\(base\)|Mean    KLD|Mean    Δp|RMS Δp   |Same top p)\s*:\s*" + NUM + r"\s*±\s*" + NUM, l.strip())
        if m:
            stats[m.group(1).strip().replace("    ", " ")] = [float(m.group(2)), float(m.group(3))]
            continue
        m = re.match(r"^Cor\(ln\(PPL\(Q\)\), ln\(PPL\(base\)\)\):\s*" + NUM + "%", l.strip())
        if m:
            stats["Cor(ln(PPL(Q)), ln(PPL(base))) %"] = float(m.group(1))
            continue
        m = re.match(r"^(Maximum|Minimum|Median|[ \d.]+%)\s+(KLD|Δp):\s*" + NUM + "(%?)$", l.strip())
        if m:
            stats[f"{m.group(1).strip()} {m.group(2)}" + (" %" if m.group(4) else "")] = float(m.group(3))
    if stats:
        out["kld_stats"] = stats
        if "Mean PPL(Q)" in stats:
            out["ppl"], out["ppl_err"] = stats["Mean PPL(Q)"]
    elif rows:
        # run stopped before the end: keep the cumulative values of the last finished chunk
        last = rows[-1]
        out["partial_chunks_done"] = last["chunk"]
        out["ppl"], out["ppl_err"] = last["ppl"], last["ppl_unc"]
        if "n_chunk" in out:
            out["n_chunk_done"] = last["chunk"]
    if t0 is not None and t1 is not None and "n_chunk" in out and "partial_chunks_done" not in out:
        out["eval_seconds"] = round(t1 - t0, 3)
        out["tokens_per_second"] = round(out["n_chunk"] * out["n_ctx"] / (t1 - t0), 2)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--base", action="append", default=[])
    ap.add_argument("--kld", action="append", default=[])
    ap.add_argument("--meta", action="append", default=[])
    a = ap.parse_args()
    doc = {"_meta": dict(kv.split("=", 1) for kv in a.meta), "models": {}}
    for item in a.base + a.kld:
        name, path = item.split("=", 1)
        doc["models"][name] = parse(path)
    with open(a.out, "w") as fh:
        json.dump(doc, fh, indent=1, ensure_ascii=False)
        fh.write("\n")


if __name__ == "__main__":
    sys.exit(main())
