"""(3) How long to intervene: SynGen with guidance during the first 5 / 15 / 25 / 50 of 50 steps.

The released SynGen intervenes during the first 25 of 50 steps. With ``--n-steps N`` the four variants guide the
first round(k·N/50) steps, k ∈ {5, 15, 25, 50} (``--n-steps 50`` gives exactly 5/15/25/50). The figure shows, per
variant, the latent drift from the unguided run with the same seed (relative L2) and the JSD of bound pairs against
the step; the table the paired comparison with ``none``.

    python analyses/03_intervention_steps.py --out out/analyses/03
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

PROMPT = "a red apple and a green banana"
OF_50 = (5, 15, 25, 50)


def main() -> None:
    args = C.parser(__doc__, "03", steps=10, seeds="0,1").parse_args()
    t0, out, seeds, rec = C.setup(args)
    from attnlens.compare import compare
    from attnlens.figures import curves_figure

    for seed in seeds:
        rec.run(PROMPT, seed, "none")
        for k in OF_50:
            n = C.scaled_steps(k, args.steps)
            rec.run(PROMPT, seed, "syngen", {"intervention_steps": n}, label=f"syngen-i{k}of50")
    df = C.analyse(rec.root, out, layers=["all"], metrics=["jsd", "leak_in", "latent_drift_rel", "latent_drift"])
    c = compare(df, by="variant", metrics=["latent_drift_rel", "jsd", "leak_in"], n_boot=args.n_boot)
    paths = C.write_tables(c, out)
    fig = curves_figure(df, ["latent_drift_rel", "jsd"], role=["latent", "bound"], by="variant", width="page",
                        baseline="none")
    paths += C.write_figure(fig, out)
    C.done(out, paths, t0, rec)


if __name__ == "__main__":
    main()
