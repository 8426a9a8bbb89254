"""Shared fixtures: the embedded tiny pipeline and tiny SD 2.x / SDXL pipelines (CPU, fp32)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))
sys.path.insert(0, str(Path(__file__).parent))

PROMPT = "a red crown and a golden strawberry"


def crown_parse():
    """The parse of ``PROMPT`` built by hand (no spaCy): sets red→crown (3) and golden→strawberry (7)."""
    from attnlens.parse import BindingSet, Parse, Unit  # not at collection time: some tests time the first import

    pieces = ("<|startoftext|>", "a</w>", "red</w>", "crown</w>", "and</w>", "a</w>", "golden</w>",
              "strawberry</w>", "<|endoftext|>")
    crown, berry = Unit("crown", (3,)), Unit("strawberry", (7,))
    sets = (BindingSet((Unit("red", (2,)),), crown, "A"), BindingSet((Unit("golden", (6,)),), berry, "A"))
    return Parse(PROMPT, pieces, sets, (crown, berry), "manual")


def pytest_configure(config):
    import logging

    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass


@pytest.fixture(scope="session")
def tiny_pipe():
    import attnlens

    return attnlens.load_pipeline("attnlens-tiny")


@pytest.fixture(scope="session")
def sd2_pipe(tmp_path_factory):
    import attnlens
    from tiny_models import build_sd2

    return attnlens.load_pipeline(str(build_sd2(tmp_path_factory.mktemp("sd2"))))


@pytest.fixture(scope="session")
def sdxl_pipe(tmp_path_factory):
    import attnlens
    from tiny_models import build_sdxl

    return attnlens.load_pipeline(str(build_sdxl(tmp_path_factory.mktemp("sdxl"))))


def attnlens_cmd() -> list[str]:
    return [sys.executable, "-m", "attnlens"]


@pytest.fixture
def run_cli(tiny_pipe, monkeypatch, capsys):
    """Call the CLI in-process (the console script's entry point); the embedded models resolve to the session's
    tiny pipeline. ``run_cli("ls", root)`` returns (exit code, stdout, stderr)."""
    import attnlens
    from attnlens.cli import main

    real = attnlens.models.load_pipeline

    def load(model=attnlens.DEFAULT_MODEL, *args, **kwargs):
        return tiny_pipe if model in ("attnlens-tiny", attnlens.DEFAULT_MODEL) else real(model, *args, **kwargs)

    monkeypatch.setattr(attnlens.models, "load_pipeline", load)

    def call(*args) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


def descend_at_fixed_step(pipe, method, parse, *, iterations: int = 6, objective=lambda out: out.loss) -> list[float]:
    """Repeated gradient updates of one latent at the first of 50 timesteps (α = 1 % of |z| / |∇| of the first
    gradient): ``objective(out)`` at each iteration. The method's self-attention layers are watched when it asks."""
    import torch

    import attnlens
    from attnlens.sampler import guidance_forward

    pipe.scheduler.set_timesteps(50)
    t = pipe.scheduler.timesteps[0]
    z = pipe.prepare_latents(1, 4, 64, 64, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0))
    with torch.no_grad():
        cond, _ = pipe.encode_prompt(parse.prompt, torch.device("cpu"), 1, False)
    losses, step_size = [], None
    with attnlens.record(pipe, None) as rec:
        rec.latent_hw = tuple(z.shape[-2:])
        rec.need_live = set(method.layers(rec.resolutions()))
        rec.watch_self_attention(method.self_attention_layers(rec.resolutions()))
        for it in range(iterations):
            leaf, out = guidance_forward(pipe, rec, method, parse, z, t, cond, step=0, iteration=it)
            loss = objective(out)
            losses.append(float(loss.detach()))
            grad = torch.autograd.grad(loss, [leaf])[0]
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0
            if step_size is None:
                step_size = 0.01 * float(z.norm()) / float(grad.norm())
            z = leaf.detach() - step_size * grad
    return losses
