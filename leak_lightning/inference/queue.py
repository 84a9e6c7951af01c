"""The review queue: which of a site's recordings to label first so that `adapt --labels` learns the site's rule.

A site's rule is a cutoff on the decision score; what moves at a new site is where that cutoff should sit. Labels
teach it where they bracket the site's true boundary, and the base cutoff is the best guess of where that is, so
the queue looks near the cutoff first. But at a site far from the training corpus (a louder pump, distant leaks) the
true boundary can lie far from the base cutoff, and labels near the cutoff alone would all fall on one side of it
(`adapt` then has too few of one kind to fit anything). So each side of the cutoff is walked outwards with
widening steps, to its far end: the k-th of K picks on a side sits at the rank (k / (K - 1))³ of the way from the
cutoff to that side's most confident recording. The sides share the picks in proportion to their recordings (at
least MIN_PER_SIDE each): where the base rule finds few leaks, most labels fall just below its cutoff, where the
leaks it misses are. The two sides alternate in the queue, the side decided leak first (a false alarm sends a crew).

Recordings of one sensor, and of one night, are alike (the same pipe, the same traffic), so a second label from
the same sensor teaches less than one from another: around each target rank (within the band halfway to its
neighbouring targets) the pick is the recording nearest the target from a sensor not yet in the queue, else from
a night of that sensor not yet in the queue, else the nearest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from .adapt import MIN_PER_SIDE

# the k-th of K picks on a side sits (k / (K - 1)) ** SPACING of the way out: chosen among 1, 1.5, 2 and 3 on one set of
# the site benchmark's corpora and measured on another (docs/benchmarks.md, "Which 20 to label")
SPACING = 3


@dataclass(frozen=True)
class Candidate:
    """One scored recording: `margin` = decision score − decision cutoff (≥ 0: decided leak); `score`, its leak
    score, orders recordings of equal margin (a vote over few windows gives many: one window's vote is 0 or 1)."""

    key: int  # the caller's index of the recording
    margin: float
    sensor: str  # "" when its name holds none: then it counts as a sensor of its own
    night: str = ""  # `night_of` its time, "" when unknown
    score: float = 0.0


@dataclass(frozen=True)
class Pick:
    key: int
    why: str


def candidate_of(key: int, path: str, decision_score: float | None, decision_cutoff: float | None,
                 leak_score: float | None) -> Candidate | None:
    """A recording of the predictions (a CSV row, a `Prediction`) as the queue sees it: its margin, its sensor and
    night from its name, its leak score; None without a decision (silent, skipped, unscored)."""
    from .predict import name_fields

    if decision_score is None or decision_cutoff is None:
        return None
    sensor, when = name_fields(path)
    return Candidate(key, decision_score - decision_cutoff, sensor, night_of(when), leak_score or 0.0)


def night_of(when: datetime | None) -> str:
    """The night a recording belongs to, noon to noon (a logger's 22:00 and 03:00 recordings are one night),
    named by the evening's date; "" without a time."""
    return (when - timedelta(hours=12)).date().isoformat() if when else ""


def _targets(picks: int, size: int) -> list[int]:
    """`picks` ranks among `size`, from 0 (nearest the cutoff) to size - 1 (the far end), spaced by the cube."""
    if picks == 1:
        return [0]
    return [round((k / (picks - 1)) ** SPACING * (size - 1)) for k in range(picks)]


def _share(size: int, above: int, below: int) -> tuple[int, int]:
    """How many picks each side gets: in proportion to its recordings, and at least MIN_PER_SIDE each (adapt's
    fewest) where the queue and the side are long enough; a shorter queue alternates."""
    if size >= 2 * MIN_PER_SIDE:
        a = min(above, max(MIN_PER_SIDE, round(size * above / max(1, above + below))))
        a = min(a, size - min(below, MIN_PER_SIDE))
    else:
        a = min(above, (size + 1) // 2)
    b = min(below, size - a)
    return min(above, size - b), b


def _tier(m: Candidate, used: set[str], nights: set[tuple[str, str]]) -> int:
    """0: a sensor not yet in the queue; 1: a night of a sensor in it not yet in it; 2: neither."""
    sensor = m.sensor or f"#{m.key}"
    return 0 if sensor not in used else 1 if (sensor, m.night) not in nights else 2


def _side(members: list[Candidate], picks: int, used: set[str], nights: set[tuple[str, str]], side: str) -> list[Pick]:
    """`picks` of one side's members (sorted nearest the cutoff first), updating the sensors and nights used."""
    targets = _targets(picks, len(members))
    taken: set[int] = set()
    out = []
    for k, target in enumerate(targets):
        lo = (targets[k - 1] + target) / 2 if k else 0
        hi = (target + targets[k + 1]) / 2 if k + 1 < len(targets) else len(members) - 1
        band = [i for i in range(len(members)) if lo <= i <= hi and i not in taken]
        pool = band or [i for i in range(len(members)) if i not in taken]

        best = min(pool, key=lambda i, t=target: (_tier(members[i], used, nights), abs(i - t)))
        taken.add(best)
        m = members[best]
        sensor = m.sensor or f"#{m.key}"
        used.add(sensor)
        nights.add((sensor, m.night))
        out.append(Pick(m.key, f"{side}, {best + 1} of {len(members)} from the cutoff (margin {m.margin:+.3f}, "
                               f"leak score {m.score:.3f})"))
    return out


def review_queue(candidates: list[Candidate], size: int) -> list[Pick]:
    """The first `size` recordings to label, in the order to label them (see the module's docstring)."""
    above = sorted((c for c in candidates if c.margin >= 0), key=lambda c: (c.margin, c.score, c.key))
    below = sorted((c for c in candidates if c.margin < 0), key=lambda c: (-c.margin, -c.score, c.key))
    n_above, n_below = _share(max(0, size), len(above), len(below))
    used: set[str] = set()
    nights: set[tuple[str, str]] = set()
    # the sides are picked one after the other but interleaved in the queue; the leak side claims its sensors first
    leak = _side(above, n_above, used, nights, "decided leak") if n_above else []
    other = _side(below, n_below, used, nights, "decided no leak") if n_below else []
    queue = []
    for i in range(max(len(leak), len(other))):
        queue += leak[i:i + 1] + other[i:i + 1]
    return queue
