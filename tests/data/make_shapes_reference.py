"""Regenerate tests/data/shapes_reference.safetensors after shipping new attnlens-shapes weights:

    python tests/data/make_shapes_reference.py

Stores the final latent of a fixed unguided run (see REFERENCE) computed on CPU in float32. The prompt/seed is the
first (seed 0) that the evaluator scored correct among "a blue square", "a green circle", "a yellow triangle" x seeds
0-5 on the shipped weights (6000 steps: yellow triangle 0-5; blue square 0, 1, 3-5; green circle 0-4).
"""

from __future__ import annotations

from pathlib import Path

import torch

REFERENCE = {"prompt": "a yellow triangle", "seed": 0, "steps": 20, "guidance_scale": 7.5}
PATH = Path(__file__).with_name("shapes_reference.safetensors")


def final_latent(pipe) -> torch.Tensor:
    gen = torch.Generator().manual_seed(REFERENCE["seed"])
    out = pipe(REFERENCE["prompt"], num_inference_steps=REFERENCE["steps"], guidance_scale=REFERENCE["guidance_scale"],
               generator=gen, output_type="latent")
    return out.images[0].float().contiguous()


def main() -> None:
    import attnlens
    from safetensors.torch import save_file

    torch.set_num_threads(2)
    pipe = attnlens.load_pipeline("attnlens-shapes", device="cpu", dtype=torch.float32)
    save_file({"latent": final_latent(pipe)}, str(PATH),
              metadata={k: str(v) for k, v in {**REFERENCE, "version": attnlens.models.shapes_manifest()["version"]}.items()})
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
