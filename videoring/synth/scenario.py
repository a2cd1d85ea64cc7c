"""The story of a synthetic clip: who enters when, does what, and leaves.

Pure planning, no pixels: :func:`make_scenario` turns (seed, duration, size)
into actors with piecewise motion and labelled phases. The renderer draws it;
:func:`ground_truth` turns it into the results schema.

Actors walk on three depth lanes. A *visit* is one actor's (or, for ``meet``,
two actors') stay in view: enter (labelled ``arrive`` when the appearance has
never been seen, ``return`` when it has), a few actions, walk out. Appearances
(shape x colour x pattern) are drawn without replacement for arrivals, so
telling ``return`` from ``arrive`` needs memory of everything seen before --
for clips of 20 minutes or more one return is forced at least 10 minutes after
that appearance was last in view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ACTIONS", "SHAPES", "COLORS", "PATTERNS", "Appearance", "Actor", "Scenario", "make_scenario"]

ACTIONS = ("idle", "walk", "run", "jump", "spin", "wave", "meet", "arrive", "return")
MOVES = ("idle", "walk", "run", "jump", "spin", "wave")
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star", "hexagon", "tee")
COLORS = (
    (230, 40, 40), (40, 200, 60), (50, 80, 235), (245, 220, 40), (220, 50, 220), (40, 220, 230),
    (250, 140, 20), (130, 40, 200), (160, 240, 60), (250, 150, 190), (250, 250, 250), (20, 20, 20),
)
PATTERNS = ("solid", "stripes", "dots", "frame")
N_APPEARANCES = len(SHAPES) * len(COLORS) * len(PATTERNS)

WALK_SPEED = 0.14  # frame widths per second
RUN_SPEED = 0.38
LANE_BOTTOMS = (0.60, 0.76, 0.92)  # box bottom, as a fraction of the frame height
RETURN_GAP_S = 600.0  # long clips: one return at least this long after last seen
LONG_CLIP_S = 1200.0


@dataclass(frozen=True)
class Appearance:
    id: int
    shape: str
    color: tuple[int, int, int]
    pattern: str
    height_frac: float
    aspect: float


@dataclass
class Actor:
    track_id: int
    appearance: Appearance
    lane: int
    knots_t: list[float] = field(default_factory=list)
    knots_x: list[float] = field(default_factory=list)
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    """(label, start_s, end_s), contiguous, covering the whole visit."""

    @property
    def t_enter(self) -> float:
        return self.knots_t[0]

    @property
    def t_exit(self) -> float:
        return self.knots_t[-1]


@dataclass
class Scenario:
    seed: int
    duration_s: float
    fps: float
    width: int
    height: int
    world_width: int
    pan: bool
    actors: list[Actor]
    occluder_x: float
    """World x of the foreground pillar (left edge)."""

    def cam_x(self, t: np.ndarray | float) -> np.ndarray | float:
        """Camera's left edge in world pixels: a slow sinusoidal pan (period 90 s)."""
        amp = (self.world_width - self.width) / 2
        return amp * (1 - np.cos(2 * np.pi * np.asarray(t) / 90.0))


def _appearance(idx: int, rng: np.random.Generator) -> Appearance:
    shape = SHAPES[idx % len(SHAPES)]
    color = COLORS[(idx // len(SHAPES)) % len(COLORS)]
    pattern = PATTERNS[idx // (len(SHAPES) * len(COLORS))]
    return Appearance(idx, shape, color, pattern, float(rng.uniform(0.16, 0.28)), float(rng.uniform(0.7, 1.2)))


class _Planner:
    def __init__(self, seed: int, duration: float, width: int, height: int, pan: bool) -> None:
        self.rng = np.random.default_rng(seed)
        self.duration = duration
        self.W, self.H = width, height
        self.world_width = int(round(width * 1.4)) if pan else width
        self.pan = pan
        self.order = self.rng.permutation(N_APPEARANCES)  # order in which new appearances arrive
        self.n_new = 0
        self.looks: dict[int, Appearance] = {}
        self.last_seen: dict[int, float] = {}  # appearance -> exit time of its last visit
        self.in_view: set[int] = set()
        self.actors: list[Actor] = []
        self.protected: tuple[int, float] | None = None  # (appearance, not before t): the long return

    def cam(self, t: float) -> float:
        if not self.pan:
            return 0.0
        amp = (self.world_width - self.W) / 2
        return amp * (1 - math.cos(2 * math.pi * t / 90.0))

    # -- who enters
    def pick(self, t: float, k: int) -> list[tuple[Appearance, str]]:
        out = []
        for _ in range(k):
            # visits are planned in order of start time, but an earlier visit may
            # still be in view at t: only appearances that left before t can return
            forced = self.protected is not None and t >= self.protected[1]
            if forced and self.last_seen[self.protected[0]] < t and self.protected[0] not in self.in_view:
                a = self.protected[0]
                self.protected = None
            else:
                old = [
                    a for a, left in self.last_seen.items()
                    if left < t and a not in self.in_view and (self.protected is None or a != self.protected[0])
                ]
                # spread the unseen appearances over the whole clip, so late arrivals exist too
                left_visits = (self.duration - t) * 0.15 + 1.0
                p_new = min(0.5, (N_APPEARANCES - self.n_new) / left_visits)
                want_new = self.n_new < N_APPEARANCES and (not old or self.rng.random() < p_new)
                if want_new:
                    a = int(self.order[self.n_new])
                    self.n_new += 1
                    self.looks[a] = _appearance(a, self.rng)
                elif old:
                    a = old[int(self.rng.integers(len(old)))]
                else:
                    return out
            label = "return" if a in self.last_seen else "arrive"
            self.in_view.add(a)
            out.append((self.looks[a], label))
        return out

    # -- how an actor moves
    def enter(self, actor: Actor, t: float, side: int, target_frac: float, label: str) -> tuple[float, float]:
        w = actor.appearance.height_frac * self.H * actor.appearance.aspect
        cam = self.cam(t)
        x0 = cam - w if side < 0 else cam + self.W
        x1 = cam + target_frac * self.W - w / 2
        dur = max(abs(x1 - x0) / (WALK_SPEED * self.W), 0.5)
        actor.knots_t += [t, t + dur]
        actor.knots_x += [x0, x1]
        actor.phases.append((label, t, t + dur))
        return t + dur, x1

    def move(self, actor: Actor, t: float, x: float, label: str, dur: float) -> tuple[float, float]:
        """One action phase starting at (t, x); walk/run bounce inside the view."""
        if label in ("walk", "run"):
            speed = (WALK_SPEED if label == "walk" else RUN_SPEED) * self.W
            w = actor.appearance.height_frac * self.H * actor.appearance.aspect
            cam = self.cam(t)
            lo, hi = cam + 0.03 * self.W, cam + 0.97 * self.W - w
            d = 1.0 if self.rng.random() < 0.5 else -1.0
            tt, xx, left = t, x, dur
            while left > 1e-6:
                room = (hi - xx) if d > 0 else (xx - lo)
                step = min(left, max(room, 0.0) / speed)
                if step <= 1e-6:
                    d = -d
                    room = (hi - xx) if d > 0 else (xx - lo)
                    step = min(left, max(room, 0.0) / speed)
                    if step <= 1e-6:
                        break
                tt, xx, left = tt + step, xx + d * speed * step, left - step
                actor.knots_t.append(tt)
                actor.knots_x.append(xx)
                d = -d
            if actor.knots_t[-1] < t + dur:
                actor.knots_t.append(t + dur)
                actor.knots_x.append(xx)
            x = xx
        else:
            actor.knots_t.append(t + dur)
            actor.knots_x.append(x)
        actor.phases.append((label, t, t + dur))
        return t + dur, x

    def leave(self, actor: Actor, t: float, x: float) -> float:
        w = actor.appearance.height_frac * self.H * actor.appearance.aspect
        cam = self.cam(t)
        go_left = (x + w / 2 - cam) < self.W / 2
        x1 = cam - w - 2 if go_left else cam + self.W + 2
        dur = max(abs(x1 - x) / (WALK_SPEED * self.W), 0.3)
        actor.knots_t.append(t + dur)
        actor.knots_x.append(x1)
        actor.phases.append(("walk", t, t + dur))
        return t + dur

    def actions(self, actor: Actor, t: float, x: float, until: float) -> tuple[float, float]:
        while True:
            label = MOVES[int(self.rng.integers(len(MOVES)))]
            dur = float(self.rng.uniform(2.0, 5.0))
            if t + dur > until:
                return t, x
            t, x = self.move(actor, t, x, label, dur)

    def finish(self, actor: Actor, t_exit: float) -> None:
        a = actor.appearance.id
        self.in_view.discard(a)
        self.last_seen[a] = t_exit
        self.actors.append(actor)

    # -- visits
    def single(self, lane: int, t: float) -> float:
        picked = self.pick(t, 1)
        if not picked:
            return t + 5.0
        look, label = picked[0]
        actor = Actor(len(self.actors) + 1000, look, lane)  # ids renumbered by entry time later
        target = float(self.rng.uniform(0.2, 0.8))
        t, x = self.enter(actor, t, -1 if target < 0.5 else 1, target, label)
        stay = float(self.rng.uniform(6.0, 24.0))
        t, x = self.actions(actor, t, x, t + stay)
        t_exit = self.leave(actor, t, x)
        self.finish(actor, t_exit)
        return t_exit

    def pair(self, lane: int, t: float) -> float:
        picked = self.pick(t, 2)
        if len(picked) < 2:
            for look, _ in picked:
                self.in_view.discard(look.id)
            return self.single(lane, t)
        (la, lab_a), (lb, lab_b) = picked
        a, b = Actor(len(self.actors) + 1000, la, lane), Actor(len(self.actors) + 1001, lb, lane)
        ta, xa = self.enter(a, t, -1, float(self.rng.uniform(0.12, 0.25)), lab_a)
        tb, xb = self.enter(b, t, 1, float(self.rng.uniform(0.75, 0.88)), lab_b)
        t0 = max(ta, tb)
        # wait for the slower one, then walk towards each other and stand together: "meet"
        for actor, tt, xx in ((a, ta, xa), (b, tb, xb)):
            if tt < t0:
                self.move(actor, tt, xx, "idle", t0 - tt)
        wa = la.height_frac * self.H * la.aspect
        mid = (xa + wa + xb) / 2
        gap = 0.01 * self.W
        xa1, xb1 = mid - gap / 2 - wa, mid + gap / 2
        dur = max((xa1 - xa), (xb - xb1), 0.0) / (WALK_SPEED * self.W) + 0.2
        stand = float(self.rng.uniform(1.5, 3.0))
        for actor, x1 in ((a, xa1), (b, xb1)):
            actor.knots_t += [t0 + dur, t0 + dur + stand]
            actor.knots_x += [x1, x1]
            actor.phases.append(("meet", t0, t0 + dur + stand))
        t1 = t0 + dur + stand
        exits = []
        for actor, x1 in ((a, xa1), (b, xb1)):
            tt, xx = self.actions(actor, t1, x1, t1 + float(self.rng.uniform(0.0, 8.0)))
            exits.append(self.leave(actor, tt, xx))
            self.finish(actor, exits[-1])
        return max(exits)


def make_scenario(seed: int, duration_s: float, fps: float, width: int, height: int, pan: bool = False) -> Scenario:
    """Plan a clip. Deterministic for ``seed`` (and the other arguments)."""
    pl = _Planner(seed, duration_s, width, height, pan)
    lanes = [float(pl.rng.uniform(0.0, 2.0 + 3.0 * i)) for i in range(len(LANE_BOTTOMS))]
    long_clip = duration_s >= LONG_CLIP_S
    first = True
    while True:
        lane = int(np.argmin(lanes))
        t = lanes[lane]
        if t > duration_s - 2.0:
            break
        if pl.rng.random() < 0.25:
            end = pl.pair(lane, t)
        else:
            end = pl.single(lane, t)
            if first and long_clip:
                # the long-range pair: this appearance may come back only >= 10 min after it left
                a = pl.actors[-1].appearance.id
                pl.protected = (a, end + RETURN_GAP_S + float(pl.rng.uniform(0, 120)))
        first = False
        lanes[lane] = end + float(pl.rng.uniform(1.0, 6.0))
    # ids in order of entry, starting at 1
    actors = sorted(pl.actors, key=lambda a: (a.t_enter, a.lane, a.knots_x[0]))
    for i, a in enumerate(actors, start=1):
        a.track_id = i
    occ = 0.33 * pl.world_width
    return Scenario(seed, duration_s, fps, width, height, pl.world_width, pan, actors, occ)
