"""Write a synthetic leak/no-leak WAV corpus in the origin or single-pool layout."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

try:
    import leak_lightning  # noqa: F401
except ImportError:  # run as `python scripts/make_synthetic_dataset.py` from a plain checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthetic import Conditions, make_dataset  # noqa: E402

from leak_lightning.runtime.logs import setup_logging  # noqa: E402

log = logging.getLogger("leak_lightning.synthetic")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output", required=True, type=Path, help="corpus root to write into")
    p.add_argument("--layout", choices=("origin", "pool"), default="origin",
                   help="origin: ROOT/{TRAINING,VALIDATION,TESTING}/<LABEL>/; pool: ROOT/<LABEL>/")
    p.add_argument("--files-per-label", type=int, default=40)
    p.add_argument("--sensors-per-label", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-rate", type=int, default=4096)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--subtype", default="PCM_16", help="PCM_16, PCM_24, PCM_32 or FLOAT")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    p.add_argument("--labels", nargs="+", default=None, help="the classes to write (default: all five)")
    p.add_argument("--resonance-scale", type=float, default=1.0,
                   help="another site: every pipe mode moves by this factor (material, diameter)")
    p.add_argument("--gain-db", type=float, default=0.0, help="another site: every clip this much louder")
    p.add_argument("--background", choices=("standard", "machinery"), default="standard",
                   help="another site: machinery replaces the pump hum by a generator's whine")
    p.add_argument("--leak-level", type=float, default=1.0,
                   help="another site: leaks this much fainter against the ambient noise (distant leaks: 0.33)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        paths = make_dataset(args.output, layout=args.layout, files_per_label=args.files_per_label,
                             sensors_per_label=args.sensors_per_label, seed=args.seed,
                             sample_rate=args.sample_rate, duration_sec=args.duration,
                             channels=args.channels, subtype=args.subtype,
                             conditions=Conditions(args.resonance_scale, args.gain_db, args.background,
                                                   args.leak_level),
                             **({"labels": tuple(args.labels)} if args.labels else {}))
    except ValueError as err:
        log.error("%s", err)
        return 2
    log.info("wrote %d files under %s in %.1f s", len(paths), args.output, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
