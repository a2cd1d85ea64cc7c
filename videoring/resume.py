"""Resumable runs: what a killed `videoring analyze` had finished, so `--resume` continues from there.

The state of a rank lives in ``DIR/state-rank{r}/``: one ``part-NNNNN.pkl`` per
checkpoint holding only what was new since the previous one (track rows, frame
tokens, RoI features: writing is O(video), not O(video^2)), and ``head.pkl``
holding where to continue (span index, frames done) with the tracker and
pixel-statistics state at that point. Every file is written atomically and
``head.pkl`` last, so a kill at any instant leaves the previous checkpoint
intact. The head names the video's content hash and the config; a state from
another video or config is ignored.

These pickles are written and read only by videoring, in the user's own output
directory (the same trust as the results next to them).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from dataclasses import asdict
from pathlib import Path

from .io import atomic_path

__all__ = ["RunState"]

FORMAT = 2  # bumped when what a part holds changes (2: track rows of 15 columns): older states are ignored


class RunState:
    def __init__(self, root: str | Path, rank: int, video_hash: str, cfg) -> None:
        self.dir = Path(root) / f"state-rank{rank}"
        self.key = hashlib.blake2b((f"{FORMAT}:" + video_hash + json.dumps(asdict(cfg), sort_keys=True, default=str)).encode(),
                                   digest_size=16).hexdigest()
        self.parts = 0

    def _write(self, name: str, obj) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.dir / name) as tmp:
            with open(tmp, "wb") as f:
                pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)

    def load(self) -> dict | None:
        """The last checkpoint (head + all its parts, concatenated in order), or None."""
        head = self.dir / "head.pkl"
        if not head.exists():
            return None
        with open(head, "rb") as f:
            h = pickle.load(f)
        if h.get("key") != self.key:
            return None
        parts = []
        for i in range(h["parts"]):
            with open(self.dir / f"part-{i:05d}.pkl", "rb") as f:
                parts.append(pickle.load(f))
        self.parts = h["parts"]
        return {**h, "parts": parts}

    def save(self, new: dict, head: dict) -> None:
        """Append one part (what is new) then move the head to it."""
        self._write(f"part-{self.parts:05d}.pkl", new)
        self.parts += 1
        self._write("head.pkl", {**head, "key": self.key, "parts": self.parts})

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self.dir.parent.rmdir()  # the run's state directory, once no rank has state left in it
        except OSError:
            pass
