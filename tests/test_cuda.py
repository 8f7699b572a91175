"""The GPU paths: run with `pytest -m cuda` on a machine with a CUDA device (bench/gpu_check.sh
does). Skipped where torch sees no GPU; their CPU halves are in test_gan_trainer.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from models.gan_speed import TrainSpeed
from models.gan_trainer import GanTrainer
from models.msggan import config_from
from models.sampling import build_generator_from_state, iter_samples

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# Quarter width keeps these to seconds; the paper width runs in bench/gan_step.py.
SMALL = {"width": 0.25, "latent_dim": 128, "batch_size": 16, "fixed_samples": 4}
EAGER_FP32 = TrainSpeed(precision="fp32", channels_last=False, cuda_graph=False, tf32=False)
EAGER_BF16 = TrainSpeed(precision="bf16", cuda_graph=False)
GRAPH_BF16 = TrainSpeed(precision="bf16", cuda_graph=True)


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (96, 50, 50, 3), dtype=np.uint8)


def fixed_batch(patches, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(patches), (16,), generator=g).numpy()
    return (torch.from_numpy(patches[idx]), torch.randn(16, SMALL["latent_dim"], generator=g),
            torch.rand(16, 1, 1, 1, generator=g))


def rel(a: dict, b: dict) -> float:
    return max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-2) for k in a)


@pytest.mark.parametrize("speed", [EAGER_FP32, EAGER_BF16, GRAPH_BF16], ids=["eager-fp32", "eager-bf16", "graph-bf16"])
def test_steps_are_finite_and_learn(patches, speed):
    trainer = GanTrainer(config_from("paper", SMALL), patches, "cuda", speed)
    g0 = [p.detach().clone() for p in trainer.G.parameters()]
    assert trainer.train(8)
    assert len(trainer.history) == 8 and np.isfinite([list(h.values()) for h in trainer.history]).all()
    assert trainer.history[0]["gp"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(g0, trainer.G.parameters()))
    assert (trainer._graph is not None) == bool(speed.cuda_graph)  # captured after the warm-up steps
    trainer.close()


def test_bf16_penalty_matches_fp32(patches):
    """Same weights and inputs: the bf16 step's losses, the double-backward penalty included,
    stay close to fp32's."""
    cfg = config_from("paper", SMALL)
    fp32 = GanTrainer(cfg, patches, "cuda", EAGER_FP32)
    bf16 = GanTrainer(cfg, patches, "cuda", EAGER_BF16)
    batch, z, alpha = fixed_batch(patches)
    a, b = fp32.train_step_on(batch, z, alpha), bf16.train_step_on(batch, z, alpha)
    assert rel(b, a) < 0.05, (a, b)
    assert b["gp"] > 0


def test_graph_replay_matches_eager(patches):
    """The CUDA-graph step computes what the eager step computes: same data, noise and losses."""
    cfg = config_from("paper", SMALL)
    eager = GanTrainer(cfg, patches, "cuda", EAGER_BF16)
    graph = GanTrainer(cfg, patches, "cuda", GRAPH_BF16)
    eager.train(8)
    graph.train(8)
    assert graph._graph is not None
    assert (eager.epoch, eager.position) == (graph.epoch, graph.position)
    for h_e, h_g in zip(eager.history, graph.history):
        assert rel(h_g, h_e) < 0.05, (h_e, h_g)


def test_resume_on_cuda(patches):
    cfg = config_from("paper", SMALL)
    straight = GanTrainer(cfg, patches, "cuda", GRAPH_BF16)
    straight.train(10)
    first = GanTrainer(cfg, patches, "cuda", GRAPH_BF16)
    first.train(5)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = GanTrainer(cfg, patches, "cuda", GRAPH_BF16)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.step == 5 and torch.equal(resumed.noise_rng.get_state(), first.noise_rng.get_state())
    resumed.train(10)
    assert (resumed.step, resumed.epoch, resumed.position) == (straight.step, straight.epoch, straight.position)
    assert torch.equal(resumed.noise_rng.get_state(), straight.noise_rng.get_state())
    assert len(resumed.history) == 10
    for h_r, h_s in zip(resumed.history, straight.history):
        assert rel(h_r, h_s) < 0.05, (h_r, h_s)


def test_sampling_on_cuda_is_seeded_and_close_to_cpu(patches):
    trainer = GanTrainer(config_from("paper", SMALL), patches, "cuda", EAGER_BF16)
    trainer.train(2)
    G = build_generator_from_state(trainer.config.to_dict(), trainer.ema_generator_state())
    a = np.concatenate(list(iter_samples(G, 300, seed=3, batch_size=128, device="cuda")))
    b = np.concatenate(list(iter_samples(G, 300, seed=3, batch_size=128, device="cuda")))
    assert a.shape == (300, 64, 64, 3) and np.array_equal(a, b)
    fp32_gpu = np.concatenate(list(iter_samples(G, 300, seed=3, batch_size=128, device="cuda", precision="fp32")))
    cpu = np.concatenate(list(iter_samples(G.cpu(), 300, seed=3, batch_size=128, device="cpu")))
    diff_bf16 = np.abs(a.astype(int) - cpu.astype(int))
    diff_fp32 = np.abs(fp32_gpu.astype(int) - cpu.astype(int))
    print(f"pixels vs CPU fp32: bf16 mean {diff_bf16.mean():.3f} max {diff_bf16.max()}; "
          f"GPU fp32 mean {diff_fp32.mean():.4f} max {diff_fp32.max()}")
    assert diff_fp32.mean() < 0.05 and diff_fp32.max() <= 2
    assert diff_bf16.mean() < 2.0


def test_inference_on_cuda_matches_cpu():
    from models.classifier import build_resnet18
    from models.inference import InferenceModel

    torch.manual_seed(0)
    model = build_resnet18("none", "finetune")
    images = [torch.randint(0, 256, (50, 50, 3), dtype=torch.uint8) for _ in range(12)]
    images += [torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8) for _ in range(4)]
    cpu = InferenceModel(model, 224, "fp32", "cpu").probabilities(images)
    gpu = InferenceModel(model, 224, "fp32", "cuda").probabilities(images)
    bf16 = InferenceModel(model, 224, "bf16", "cuda").probabilities(images)
    assert gpu.device.type == "cpu" and gpu.shape == (16,)
    assert (gpu - cpu).abs().max() < 1e-3
    assert (bf16 - cpu).abs().max() < 0.05


def test_compiled_sampling_matches_eager(patches):
    trainer = GanTrainer(config_from("paper", SMALL), patches, "cuda", EAGER_BF16)
    trainer.train(2)
    G = build_generator_from_state(trainer.config.to_dict(), trainer.ema_generator_state())
    eager = np.concatenate(list(iter_samples(G, 300, seed=3, batch_size=128, device="cuda", compile=False)))
    compiled = np.concatenate(list(iter_samples(G, 300, seed=3, batch_size=128, device="cuda", compile=True)))
    assert compiled.shape == eager.shape == (300, 64, 64, 3)  # the padded tail batch is cut back to 44
    assert np.abs(compiled.astype(int) - eager.astype(int)).mean() < 1.0
