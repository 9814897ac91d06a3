#!/usr/bin/env python3
"""Benchmark `ggufq inspect --json` against gguf-py's `gguf_dump.py --json` on one file.

    python3 benches/inspect_vs_gguf_dump.py GGUFQ_BINARY FILE.gguf [RUNS]

Runs each command once to warm the page cache, then RUNS times (default 10), alternating, output
to /dev/null; prints min/median wall time of each and the ratio of medians. Checks first that
both list the same tensors. Needs `pip install gguf`.
"""
import json
import statistics
import subprocess
import sys
import time

ggufq, path = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 10
ours = [ggufq, "inspect", "--json", path]
peer = [sys.executable, "-m", "gguf.scripts.gguf_dump", "--json", path]

a = json.loads(subprocess.run(ours, check=True, capture_output=True).stdout)
b = json.loads(subprocess.run(peer, check=True, capture_output=True).stdout)
assert [t["name"] for t in a["tensors"]] == list(b["tensors"].keys()), "tensor lists differ"
assert len(a["metadata"]) == len([k for k in b["metadata"] if not k.startswith("GGUF.")])


def once(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


times = {"ggufq": [], "gguf_dump": []}
for _ in range(runs):
    times["ggufq"].append(once(ours))
    times["gguf_dump"].append(once(peer))
for k, v in times.items():
    print(f"{k:10} min {min(v) * 1e3:9.1f} ms   median {statistics.median(v) * 1e3:9.1f} ms   ({runs} runs)")
ratio = statistics.median(times["gguf_dump"]) / statistics.median(times["ggufq"])
print(f"ratio (gguf_dump median / ggufq median): {ratio:.1f}x")
print(f"tensors: {len(a['tensors'])}, metadata keys: {len(a['metadata'])}, file size: {a['file_size']}")
