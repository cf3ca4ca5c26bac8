"""Seconds to load a byteified tokenizer, ours against the upstream tokenkit's, as a table.

    python tools/benchmarks/tokenizer_load.py --upstream=/tmp/upstream [--rounds 2] [--repeats 2]
    python tools/benchmarks/tokenizer_load.py --spec qwen2=/path/to/qwen2:source=Qwen2

By default the real tokenizers of `tools/real_assets.py` (Llama 3, Qwen2, Phi-3, GPT-2,
Llama 2; SmolLM2 with `source=auto`), each plain and with `conversion=byte`. Both
loaders are `tokenkit.byteify.load_byteify_tokenizer`, run in fresh processes whose
`PYTHONPATH` finds ours (this repository) or the upstream's (the extracted checkout
given by `--upstream`, e.g. `git -C <mirror> archive HEAD | tar x -C /tmp/upstream`);
without it the upstream column says `-` and a note says why. A process loads once
untimed (warming the file cache), then `--repeats` timed times; `--rounds` processes
per row and loader alternate ours and the upstream's, row by row, and each figure is
the best of all (the machine may be shared). `ratio` is upstream / ours: above 1 means
ours is faster. `transformers s` is `AutoTokenizer.from_pretrained` alone, which both
loaders start with (the floor for a plain load). The upstream cannot read
`source=auto` specs (`n/a`) and fails where its byte conversion meets a post-processor
token its vocabulary lacks (`fails`, e.g. Phi-3's `<s>`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The child process: times `tokenkit.byteify.load_byteify_tokenizer` (ours or the
# upstream's, whichever PYTHONPATH finds) and, with a third argument, transformers alone.
_CHILD = r"""
import json, logging, sys, time
logging.disable(logging.WARNING)
spec, repeats = sys.argv[1], int(sys.argv[2])
def best(load):
    load()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        load()
        times.append(time.perf_counter() - start)
    return min(times)
out = {}
try:
    from tokenkit.byteify import load_byteify_tokenizer
    out["seconds"] = best(lambda: load_byteify_tokenizer(spec))
    out["size"] = len(load_byteify_tokenizer(spec))
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
if len(sys.argv) > 3:
    from transformers import AutoTokenizer
    from tokenkit.byteify import load_hf_tokenizer
    out["transformers"] = best(lambda: load_hf_tokenizer(sys.argv[3]))
print(json.dumps(out))
"""


def time_in_child(
    spec: str, repeats: int, pythonpath: Path, floor_of: str | None = None
) -> dict[str, Any]:
    """`{"seconds", "size"}` or `{"error"}` (plus `"transformers"` with `floor_of`) of
    loading `spec` with the `tokenkit` found on `pythonpath`, in a fresh process."""
    args = [sys.executable, "-c", _CHILD, spec, str(repeats)] + ([floor_of] if floor_of else [])
    with tempfile.TemporaryDirectory() as cwd:  # so `tokenkit` resolves to `pythonpath`
        result = subprocess.run(
            args, env={**os.environ, "PYTHONPATH": str(pythonpath)}, cwd=cwd,
            capture_output=True, text=True, check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"Timing {spec} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def default_specs(cache_dir: str | None) -> dict[str, str]:
    """name -> plain spec of the real tokenizers (made by tools/real_assets.py if needed)."""
    from tokenkit.entry import REPO_ROOT

    if str(REPO_ROOT) not in sys.path:  # run as a script: tools/ is not importable otherwise
        sys.path.insert(0, str(REPO_ROOT))
    from tools import real_assets

    assets = real_assets.ensure(Path(cache_dir) if cache_dir else None)
    specs = {name: assets.tokenizer_spec(name) for name in real_assets.TOKENIZERS}
    specs["smollm2"] = assets.smollm2_tokenizer_spec
    return specs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", help="extracted upstream tokenkit checkout (PYTHONPATH)")
    parser.add_argument("--spec", action="append", default=[], metavar="NAME=SPEC",
                        help="a tokenizer to time (repeatable); default: the real assets")
    parser.add_argument("--cache_dir", help="cache root of tools/real_assets.py")
    parser.add_argument("--repeats", type=int, default=2, help="timed loads per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per row and loader")
    parser.add_argument("--conversions", default="plain,byte",
                        help="comma-separated: plain (no conversion) and/or conversions")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)

    from tokenkit.byteify import TokenizerSpec
    from tokenkit.entry import REPO_ROOT

    named = dict(s.split("=", 1) for s in args.spec) if args.spec else default_specs(args.cache_dir)
    rows = []
    for name, spec in named.items():
        for conversion in args.conversions.split(","):
            full = spec if conversion == "plain" else f"{spec}:conversion={conversion}"
            rows.append((name, conversion, full))

    ours: dict[str, dict[str, Any]] = {}
    upstream: dict[str, dict[str, Any]] = {}
    # Rounds alternate ours and the upstream row by row, and each figure is the best over
    # rounds: on a shared machine the load changes between rows, not within a pair.
    for _ in range(args.rounds):
        for _, _, full in rows:
            directory = TokenizerSpec.parse(full).name
            mine = time_in_child(full, args.repeats, REPO_ROOT, floor_of=directory)
            ours[full] = _best_of(ours.get(full), mine)
            if args.upstream and ":source=auto" not in full:
                theirs = time_in_child(full, args.repeats, Path(args.upstream))
                upstream[full] = _best_of(upstream.get(full), theirs)

    print(
        f"{'tokenizer':<10} {'conversion':<10} {'vocab':>7} {'transformers s':>14} "
        f"{'ours s':>8} {'upstream s':>11} {'ratio':>6}"
    )
    for name, conversion, full in rows:
        mine, theirs = ours[full], upstream.get(full)
        if "error" in mine:
            raise RuntimeError(f"Ours fails on {full}: {mine['error']}")
        if not args.upstream:
            cell, ratio = "-", ""
        elif theirs is None:
            cell, ratio = "n/a", ""
        elif "error" in theirs:
            cell, ratio = "fails", ""
        else:
            cell, ratio = f"{theirs['seconds']:.2f}", f"{theirs['seconds'] / mine['seconds']:.2f}"
        print(
            f"{name:<10} {conversion:<10} {mine['size']:>7} {mine['transformers']:>14.2f} "
            f"{mine['seconds']:>8.2f} {cell:>11} {ratio:>6}"
        )
    for spec, result in upstream.items():
        if "error" in result:
            print(f"upstream fails on {spec}: {result['error'][:120]}")
    if not args.upstream:
        print("note: no --upstream checkout given: the upstream column is not measured")


def _best_of(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Per timing key, the smaller of two measurements."""
    if old is None or "error" in new:
        return new
    return {k: min(v, old[k]) if k in ("seconds", "transformers") else v for k, v in new.items()}


if __name__ == "__main__":
    main()
