"""The mutation fuzzer's recipe: >= 1,000 mutated clips through probe + full decode, isolated.

    python pipelines/fuzz_inputs.py [--cases 1000] [--seed 0]

Prints the report (decoded / clean errors / contained native crashes /
timeouts / failures) and exits 1 if any case failed. CI runs 100 cases
(tests/test_fuzz.py); docs/reliability.md has the last full run (1,000 cases:
~30 s on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videoring.fuzz import fuzz  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rep = fuzz(args.cases, args.seed, tmp)
    print(rep.summary())
    print("by mutation:", rep.by_kind)
    for f in rep.failures[:20]:
        print("FAIL", f)
    sys.exit(1 if rep.failures else 0)


if __name__ == "__main__":
    main()
