"""(2) SynGen's two loss terms: positive-only vs negative-only vs both (and no guidance).

SynGen's loss is L = L_pos + L_neg: L_pos pulls each modifier's attention map towards its noun's, L_neg pushes the
set's maps away from the other words'. Each variant is recorded on a few CC-500 prompts ("a {colour} {object} and
a {colour} {object}") over several seeds; the figure shows the JSD of bound (modifier, own noun) and unbound
(modifier, other noun) pairs against the step (layer ``all``, mean over prompts and seeds with 95 % bootstrap bands),
the table the paired comparison with ``none`` on the headline metrics.

    python analyses/02_positive_negative.py --out out/analyses/02
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

VARIANTS = [("none", "none", {}), ("both", "syngen", {}), ("positive-only", "syngen", {"pos_only": True}),
            ("negative-only", "syngen", {"neg_only": True})]


def main() -> None:
    p = C.parser(__doc__, "02", steps=8, seeds="0,1")
    p.add_argument("--prompts", type=int, default=2, help="how many CC-500 prompts (default 2)")
    args = p.parse_args()
    t0, out, seeds, rec = C.setup(args)
    from attnlens.compare import compare
    from attnlens.figures import curves_figure

    prompts = C.prompts_from_datasets(args.prompts, kinds=("cc500",))
    for prompt in prompts:
        for seed in seeds:
            for label, method, options in VARIANTS:
                rec.run(prompt, seed, method, options, label=None if label == "none" else label)
    df = C.analyse(rec.root, out, layers=["all"],
                   metrics=["jsd", "leak_in", "leak_out", "otsu_iou", "latent_drift_rel", "scalar/*"])
    c = compare(df, by="variant", metrics=["jsd", "leak_in", "latent_drift_rel"], n_boot=args.n_boot)
    paths = C.write_tables(c, out)
    fig = curves_figure(df, ["jsd", "jsd"], role=["bound", "unbound"], by="variant", width="page", baseline="none")
    paths += C.write_figure(fig, out)
    C.done(out, paths, t0, rec)


if __name__ == "__main__":
    main()
