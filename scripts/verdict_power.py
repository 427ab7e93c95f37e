"""How often the claim verdict's checks come out as they should, on simulated sweeps at a given noise.

Each simulated sweep draws every (norm, batch) cell's seeds from a normal distribution around a
true mean shape (BN: 70, 8 points lower at the smallest batch; GN: flat, --gn-loss points below its
reference at the smallest batch, or 4 below it at the second-smallest batch only) and is judged by
normexp.analysis.verdict with today's criteria (conf/verdict/default.yaml, plus --set overrides).
The rates size the criteria's comments.

Usage: python scripts/verdict_power.py [--sd 1.0] [--sd-at 2=0.6,32=0.1] [--gn-sd-at 32=0.4] [--seeds 3]
                                       [--batches 2,4,8,16,32,64] [--gn-loss 3.0] [--sweeps 2000]
                                       [--set gn_loss_margin=3.5 ...]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import yaml

from normexp.analysis.verdict import verdict
from normexp.criteria import load_criteria


def simulated(bn: dict[int, float], gn: dict[int, float], seeds: int, sd: dict[str, dict[int, float]],
              rng: np.random.Generator) -> pd.DataFrame:
    """Seeds drawn around each cell's mean with its norm's per-seed SD at its batch (`sd[tag][batch]`)."""
    rows = [(tag, b, s, means[b] + rng.normal(0, sd[tag][b]), 5) for tag, means in (("bn", bn), ("gn8", gn))
            for b in means for s in range(seeds)]
    return pd.DataFrame(rows, columns=["norm", "batch_size", "seed", "final_test_acc", "epochs"])


def per_batch(parser: argparse.ArgumentParser, flag: str, text: str) -> dict[int, float]:
    """`BATCH=SD,...` as {batch: SD}; anything else exits 2 naming the flag."""
    try:
        return {int(b): float(v) for b, v in (item.split("=") for item in text.split(",") if item)}
    except ValueError:
        parser.error(f"{flag} takes BATCH=SD pairs separated by commas, e.g. 2=0.6,32=0.1; got {text!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd", type=float, default=1.0, help="per-seed SD in points")
    parser.add_argument("--sd-at", default="", metavar="BATCH=SD,...",
                        help="per-seed SD at these batch sizes (others: --sd), e.g. 2=0.6,32=0.1")
    parser.add_argument("--gn-sd-at", default="", metavar="BATCH=SD,...",
                        help="GN's per-seed SD at these batch sizes (others: BN's, from --sd-at and --sd)")
    parser.add_argument("--gn-loss", type=float, default=3.0,
                        help="the loss at the smallest batch that GN's check must find (points)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batches", default="2,4,8,16,32,64")
    parser.add_argument("--sweeps", type=int, default=2000)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    # every check judged, whatever the preset requires, at the simulated number of seeds
    judged_all = {"require_parity": True, "min_seeds": args.seeds, "min_reference_accuracy": 0.0}
    criteria, _ = load_criteria({**judged_all,
                                 **{k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}})
    batches = [int(b) for b in args.batches.split(",")]
    small, ref = min(batches), criteria.reference_batch
    at, gn_at = per_batch(parser, "--sd-at", args.sd_at), per_batch(parser, "--gn-sd-at", args.gn_sd_at)
    bn_sd = {b: at.get(b, args.sd) for b in batches}
    sd = {"bn": bn_sd, "gn8": {b: gn_at.get(b, bn_sd[b]) for b in batches}}
    loss = args.gn_loss
    bn = {b: 70.0 - 8.0 * (b == small) for b in batches}
    below = [b for b in batches if b < ref]
    dip = below[1] if len(below) > 1 else small  # the second-smallest batch: a loss the two ends do not see
    shapes = {"GN flat: passes": ({b: 69.5 for b in batches}, True),
              f"GN {loss:g} below its reference at {small}: fails": ({b: 69.5 - loss * (b == small) for b in batches},
                                                                    False),
              f"GN 4 below its reference at {dip} only: fails": ({b: 69.5 - 4.0 * (b == dip) for b in batches}, False)}
    rng = np.random.default_rng(0)
    print(f"per-seed SD {sd}, {args.seeds} seeds, batches {batches} (reference {ref}), {args.sweeps} sweeps, "
          f"gn_loss_margin {criteria.gn_loss_margin}, max_parity_gap {criteria.max_parity_gap}")
    judged = {"gn_holds": shapes, "parity": {"true parity: passes": ({b: 70.0 for b in batches}, True),
                                             "a 2-point gap: fails": ({b: 68.0 for b in batches}, False)}}
    for check, cases in judged.items():
        for label, (gn, expected) in cases.items():
            held = [verdict(simulated(bn, gn, args.seeds, sd, rng), criteria)["checks"][check]["holds"]
                    for _ in range(args.sweeps)]
            print(f"  {check}, {label} {np.mean(np.array(held) == expected):.1%}")


if __name__ == "__main__":
    main()
