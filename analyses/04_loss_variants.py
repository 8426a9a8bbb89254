"""(4) The loss variants side by side: SynGen, SynGen + entropy, Attend-and-Excite, Divide & Bind, and none.

A handful of prompts from ``../shared/datasets/`` (CC-500 and the Attend-and-Excite benchmark, alternately, in
file order) over several seeds. Figures: JSD of bound and unbound pairs and the leak into other entities against
the step (``figure``), and the loss terms each method logs (``losses``). Table: the paired comparison with ``none``.

Attend-and-Excite and Divide & Bind refine the latent up to 20 (D&B: 50 at the first step) times per threshold
step; to fit the time budget on a CPU their refinement is capped at ``--refinement`` passes (default 2); pass
``--refinement -1`` for the released defaults.

    python analyses/04_loss_variants.py --out out/analyses/04
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def variants(refinement: int) -> list[tuple[str, dict]]:
    cap = {} if refinement < 0 else {"max_refinement_steps": refinement}
    cap_db = {} if refinement < 0 else {**cap, "max_refinement_steps_init_step": refinement}
    return [("none", {}), ("syngen", {}), ("syngen-entropy", {}), ("attend-excite", cap), ("divide-bind", cap_db)]


def main() -> None:
    p = C.parser(__doc__, "04", steps=8, seeds="0,1")
    p.add_argument("--prompts", type=int, default=2, help="how many dataset prompts (default 2)")
    p.add_argument("--refinement", type=int, default=2, help="refinement cap for A&E and D&B (-1: released)")
    args = p.parse_args()
    t0, out, seeds, rec = C.setup(args)
    import attnlens
    from attnlens.compare import compare
    from attnlens.figures import curves_figure, losses_figure

    available = set(attnlens.available_methods())
    prompts = C.prompts_from_datasets(args.prompts)
    for prompt in prompts:
        for seed in seeds:
            for method, options in variants(args.refinement):
                if method in available:
                    rec.run(prompt, seed, method, options)
    df = C.analyse(rec.root, out, layers=["all"],
                   metrics=["jsd", "leak_in", "leak_out", "otsu_iou", "neglect_peak", "latent_drift_rel", "scalar/*"])
    c = compare(df, by="method", n_boot=args.n_boot)  # the headline metrics
    paths = C.write_tables(c, out)
    fig = curves_figure(df, ["jsd", "jsd", "leak_in"], role=["bound", "unbound", "modifier"], by="method",
                        width="page", baseline="none")
    paths += C.write_figure(fig, out)
    paths += C.write_figure(losses_figure(df, by="method", width="page"), out, name="losses")
    C.done(out, paths, t0, rec)


if __name__ == "__main__":
    main()
