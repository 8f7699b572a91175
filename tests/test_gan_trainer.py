"""GanTrainer: EMA, callbacks, bit-for-bit resume through weights_only checkpoints; sampling."""

import io

import numpy as np
import pytest
import torch

from models.gan_trainer import GanTrainer, real_pyramid
from models.msggan import config_from
from models.sampling import build_generator_from_state, iter_samples

TINY = {"width": 1 / 64, "latent_dim": 16, "batch_size": 4, "fixed_samples": 4}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    # 10 patches of 50x50 with batch 4: an epoch is 2 batches, so 6 steps cross epochs
    return np.random.default_rng(0).integers(0, 256, (10, 50, 50, 3), dtype=np.uint8)


def tiny_trainer(patches, **overrides) -> GanTrainer:
    return GanTrainer(config_from("paper", {**TINY, **overrides}), patches)


def assert_same_state(a: dict, b: dict, path: str = "") -> None:
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_state(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}/{i}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, path


def test_real_pyramid_resizes_bilinear_and_pools():
    batch = np.full((2, 50, 50, 3), 255, np.uint8)
    batch[1] = 0
    pyramid = real_pyramid(batch, 64, 5)
    assert [tuple(x.shape) for x in pyramid] == [(2, 3, s, s) for s in (4, 8, 16, 32, 64)]
    for x in pyramid:
        torch.testing.assert_close(x[0], torch.ones_like(x[0]))
        torch.testing.assert_close(x[1], -torch.ones_like(x[1]))
    same = real_pyramid(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(1, 64, 64, 3), 64, 5)
    assert torch.equal(same[-1][0, 0, 0, :3], torch.tensor([0.0, 3.0, 6.0]) / 127.5 - 1)
    torch.testing.assert_close(same[-2], torch.nn.functional.avg_pool2d(same[-1], 2))


def test_ema_update_formula(patches):
    trainer = tiny_trainer(patches, ema_beta=0.9)
    with torch.no_grad():
        for p, q in zip(trainer.G.parameters(), trainer.G_ema.parameters()):
            p.copy_(torch.randn_like(p))
            q.copy_(torch.randn_like(q))
    before = [q.clone() for q in trainer.G_ema.parameters()]
    trainer._update_ema()
    for p, q, q0 in zip(trainer.G.parameters(), trainer.G_ema.parameters(), before):
        torch.testing.assert_close(q, 0.9 * q0 + 0.1 * p)
    # and a real step moves the EMA a tenth of the way towards the new weights
    trainer.train_step()
    assert not all(torch.equal(p, q) for p, q in zip(trainer.G.parameters(), trainer.G_ema.parameters()))


def test_resume_is_bit_for_bit(patches):
    steps = 3
    straight = tiny_trainer(patches)
    straight.train(2 * steps)

    first = tiny_trainer(patches)
    first.train(steps)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = tiny_trainer(patches)
    resumed.load_state_dict(state)
    assert resumed.step == steps
    resumed.train(2 * steps)  # the target is a total

    assert resumed.step == straight.step == 2 * steps
    assert resumed.epoch == straight.epoch >= 2
    for name in ("G", "D", "G_ema"):
        for (k, a), b in zip(getattr(straight, name).state_dict().items(),
                             getattr(resumed, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{k}"
    assert_same_state(straight.state_dict(), resumed.state_dict())
    assert resumed.history == straight.history and len(resumed.history) == 2 * steps


def test_state_dict_rejects_another_config(patches):
    state = tiny_trainer(patches).state_dict()
    other = tiny_trainer(patches, lr=5e-4)
    with pytest.raises(ValueError):
        other.load_state_dict(state)


def test_train_callbacks_and_abort(patches):
    trainer = tiny_trainer(patches)
    progress, checkpoints, samples = [], [], []
    done = trainer.train(4, progress_fn=lambda s, t, stats: progress.append((s, t, sorted(stats))),
                         checkpoint_fn=lambda tr: checkpoints.append(tr.step), checkpoint_every=2,
                         sample_fn=lambda s, imgs: samples.append((s, [tuple(x.shape) for x in imgs])),
                         sample_every=3)
    assert done and trainer.step == 4
    assert [p[:2] for p in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert progress[0][2] == ["d_loss", "g_loss", "gp", "wasserstein"]
    assert checkpoints == [2, 4]
    assert samples == [(3, [(4, 3, s, s) for s in (4, 8, 16, 32, 64)])]
    assert all(np.isfinite(list(h.values())).all() for h in trainer.history)
    assert trainer.history[0]["gp"] > 0
    calls = []
    aborted = trainer.train(10, abort_fn=lambda: calls.append(1) or len(calls) > 2)
    assert not aborted and trainer.step == 6


@pytest.mark.parametrize("overrides", [{"n_critic": 2}, {"loss": "rahinge", "gp_lambda": 0.0},
                                       {"optimizer": "adam", "drift": 0.0}])
def test_options_train(patches, overrides):
    trainer = tiny_trainer(patches, **overrides)
    g0 = [p.clone() for p in trainer.G.parameters()]
    trainer.train(2)
    assert all(np.isfinite(list(h.values())).all() for h in trainer.history)
    assert any(not torch.equal(a, b) for a, b in zip(g0, trainer.G.parameters()))


def test_trainer_reads_a_memmap_and_validates_input(tmp_path, patches):
    mm = np.memmap(tmp_path / "p.u8", dtype=np.uint8, mode="w+", shape=patches.shape)
    mm[:] = patches
    mm.flush()
    ro = np.memmap(tmp_path / "p.u8", dtype=np.uint8, mode="r", shape=patches.shape)
    trainer = tiny_trainer(ro)
    trainer.train(1)
    assert trainer.step == 1
    with pytest.raises(ValueError):
        tiny_trainer(patches[:3])  # fewer than one batch
    with pytest.raises(ValueError):
        tiny_trainer(patches.astype(np.float32))


def test_sampling_is_seeded_and_rebuilds_from_a_checkpoint(patches):
    trainer = tiny_trainer(patches)
    trainer.train(1)
    state = torch.load(io.BytesIO(_saved(trainer.state_dict())), weights_only=True)
    G = build_generator_from_state(state["config"], state["G_ema"])
    with torch.no_grad():
        torch.testing.assert_close(G(trainer.fixed_z)[-1], trainer.G_ema(trainer.fixed_z)[-1])

    a = list(iter_samples(G, 10, seed=7, batch_size=4))
    b = list(iter_samples(G, 10, seed=7, batch_size=4))
    assert [x.shape for x in a] == [(4, 64, 64, 3), (4, 64, 64, 3), (2, 64, 64, 3)]
    assert all(x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = np.concatenate(list(iter_samples(G, 10, seed=8, batch_size=4)))
    assert not np.array_equal(np.concatenate(a), c)
    # the latents of sample i do not depend on the batch size or on n
    whole = np.concatenate(list(iter_samples(G, 10, seed=7, batch_size=10)))
    assert np.abs(whole.astype(int) - np.concatenate(a).astype(int)).max() <= 1
    first = next(iter_samples(G, 3, seed=7, batch_size=256))
    assert np.abs(first.astype(int) - whole[:3].astype(int)).max() <= 1

    small = np.concatenate(list(iter_samples(G, 5, seed=7, batch_size=2, size=50)))
    assert small.shape == (5, 50, 50, 3) and small.dtype == np.uint8
    assert list(iter_samples(G, 0, seed=7)) == []
    with pytest.raises(ValueError):
        build_generator_from_state({**state["config"], "nope": 1}, state["G_ema"])


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_batch_order_is_a_function_of_seed_and_epoch(patches):
    from models.gan_data import BatchLoader, epoch_order

    assert torch.equal(epoch_order(10, 3, 1), epoch_order(10, 3, 1))
    assert not torch.equal(epoch_order(10, 3, 1), epoch_order(10, 3, 2))
    assert sorted(epoch_order(10, 3, 1).tolist()) == list(range(10))
    sync = BatchLoader(patches, 4, seed=3)
    ahead = BatchLoader(patches, 4, seed=3, ahead=3)
    seen = []
    for _ in range(7):  # 2 batches per epoch of 10 (the ragged tail of 2 is dropped): crosses 3 epochs
        a, b = sync.next(), ahead.next()
        assert torch.equal(a, b) and a.dtype == torch.uint8 and a.shape == (4, 50, 50, 3)
        assert (sync.epoch, sync.position) == (ahead.epoch, ahead.position)
        seen.append((sync.epoch, sync.position))
    assert seen == [(0, 4), (0, 8), (1, 4), (1, 8), (2, 4), (2, 8), (3, 4)]
    first_epoch = epoch_order(10, 3, 0)[:8].numpy()
    resumed = BatchLoader(patches, 4, seed=3, epoch=0, position=4)  # resume after one batch
    np.testing.assert_array_equal(resumed.next().numpy(), patches[first_epoch[4:8]])
    ahead.close()


def test_read_ahead_errors_reach_the_trainer(patches):
    from models.gan_data import BatchLoader

    class Broken:
        shape, dtype, ndim = patches.shape, patches.dtype, 4

        def __len__(self):
            return len(patches)

        def __getitem__(self, idx):
            raise OSError("disk gone")

    loader = BatchLoader(Broken(), 4, seed=0, ahead=2)
    with pytest.raises(RuntimeError, match="reading a training batch failed"):
        loader.next()
    loader.close()


def test_speed_options_resolve_per_device_and_reject_unknown_names():
    from models.gan_speed import TrainSpeed

    cpu = TrainSpeed().resolve(torch.device("cpu"))
    assert (cpu.bf16, cpu.cuda_graph, cpu.channels_last, cpu.read_ahead, cpu.sync_every) == (False, False, False, 0, 1)
    gpu = TrainSpeed().resolve(torch.device("cuda"))
    assert (gpu.bf16, gpu.cuda_graph, gpu.channels_last, gpu.tf32, gpu.read_ahead) == (True, True, True, True, 4)
    assert TrainSpeed(cuda_graph=True).resolve(torch.device("cpu")).cuda_graph is False  # graphs are CUDA-only
    with pytest.raises(ValueError, match="unknown speed option"):
        TrainSpeed.from_dict({"warp": 9})
    with pytest.raises(ValueError):
        TrainSpeed(precision="fp8")


def test_losses_are_read_every_sync_every_steps(patches):
    from models.gan_speed import TrainSpeed

    trainer = GanTrainer(config_from("paper", TINY), patches, speed=TrainSpeed(sync_every=3))
    progress = []
    trainer.train(7, progress_fn=lambda s, t, stats: progress.append(s))
    assert progress == [3, 6, 7] and len(trainer.history) == 7


def test_checkpoint_of_another_format_is_refused(patches):
    trainer = tiny_trainer(patches)
    state = trainer.state_dict()
    state["format"] = "histosynth.gan/1"
    with pytest.raises(ValueError, match="not a histosynth.gan/2 checkpoint"):
        tiny_trainer(patches).load_state_dict(state)


def test_dihedral_gives_the_eight_flips_and_rotations():
    from models.gan_data import dihedral

    patch = np.arange(3 * 3 * 1, dtype=np.uint8).reshape(1, 3, 3, 1)
    images = [dihedral(patch.copy(), np.array([code]))[0, :, :, 0] for code in range(8)]
    assert len({im.tobytes() for im in images}) == 8  # an asymmetric patch: 8 distinct images
    np.testing.assert_array_equal(images[0], patch[0, :, :, 0])
    np.testing.assert_array_equal(images[1], np.rot90(patch[0, :, :, 0]))
    np.testing.assert_array_equal(images[4], patch[0, :, ::-1, 0])
    batch = np.repeat(patch, 3, axis=0)  # several codes in one batch, each row its own
    out = dihedral(batch.copy(), np.array([2, 0, 5]))
    for row, code in zip(out, (2, 0, 5)):
        np.testing.assert_array_equal(row[:, :, 0], images[code])


def test_dihedral_augmentation_is_seeded_resumable_and_off_by_default(patches):
    from models.gan_data import BatchLoader, epoch_dihedral, epoch_order

    codes = epoch_dihedral(10, 3, 0)
    assert codes.shape == (10,) and set(codes.tolist()) <= set(range(8))
    np.testing.assert_array_equal(codes, epoch_dihedral(10, 3, 0))
    assert not np.array_equal(epoch_dihedral(1000, 3, 0), epoch_dihedral(1000, 3, 1))
    plain, augmented = BatchLoader(patches, 4, seed=3), BatchLoader(patches, 4, seed=3, augment_dihedral=True)
    a, b = plain.next().numpy(), augmented.next().numpy()
    order = epoch_order(10, 3, 0)[:4].numpy()
    np.testing.assert_array_equal(a, patches[order])  # off: the patches as stored
    for got, original, code in zip(b, patches[order], codes[:4]):
        moved = np.rot90(original, k=int(code) % 4)
        np.testing.assert_array_equal(got, moved[:, ::-1] if code >= 4 else moved)
    with pytest.raises(ValueError, match="square"):
        BatchLoader(np.zeros((8, 4, 6, 3), np.uint8), 4, seed=0, augment_dihedral=True)
    # a trainer with it resumes bit for bit too, and an old checkpoint (no `augment`) still loads
    straight = tiny_trainer(patches, augment="dihedral")
    straight.train(4)
    first = tiny_trainer(patches, augment="dihedral")
    first.train(2)
    resumed = tiny_trainer(patches, augment="dihedral")
    resumed.load_state_dict(first.state_dict())
    resumed.train(4)
    assert_same_state(straight.state_dict(), resumed.state_dict())
    old = tiny_trainer(patches).state_dict()
    del old["config"]["augment"]
    tiny_trainer(patches).load_state_dict(old)
    with pytest.raises(ValueError):
        tiny_trainer(patches, augment="dihedral").load_state_dict(old)
    with pytest.raises(ValueError, match="augment"):
        config_from("paper", {"augment": "mixup"})


def test_d_lr_sets_the_discriminators_learning_rate_alone(patches):
    """Two time-scales (TTUR): `d_lr` is D's optimizer's lr; G keeps `lr`; None (default) is `lr`."""
    both = tiny_trainer(patches, optimizer="adam", lr=1e-4)
    ttur = tiny_trainer(patches, optimizer="adam", lr=1e-4, d_lr=4e-4)
    assert [g["lr"] for g in both.opt_D.param_groups] == [1e-4]
    assert [g["lr"] for g in ttur.opt_D.param_groups] == [4e-4]
    assert [g["lr"] for g in ttur.opt_G.param_groups] == [1e-4]
    both.train(1)
    ttur.train(1)
    # Same draws and G lr, other D step: D's weights after the first step differ.
    assert any(not torch.equal(a, b) for a, b in zip(both.D.parameters(), ttur.D.parameters()))
    with pytest.raises(ValueError, match="d_lr"):
        config_from("paper", {"d_lr": 0.0})
    for trainer in (both, ttur):
        trainer.close()


def test_lr_factor_holds_then_falls_linearly_to_zero():
    cfg = config_from("paper", {"lr_decay_start": 10, "lr_decay_steps": 4})
    assert [cfg.lr_factor(s) for s in (0, 9, 10, 11, 12, 13, 14, 20)] == [1, 1, 1, 0.75, 0.5, 0.25, 0, 0]
    assert config_from("paper", {}).lr_factor(10**6) == 1.0  # the paper: constant
    with pytest.raises(ValueError, match="lr_decay"):
        config_from("paper", {"lr_decay_steps": -1})


def test_lr_decay_sets_both_optimizers_each_step_and_resumes_bit_for_bit(patches):
    """A resumed run re-derives the lr from its step count: the same weights as an unbroken run."""
    decay = {"optimizer": "adam", "lr": 1e-3, "d_lr": 2e-3, "lr_decay_start": 1, "lr_decay_steps": 4}
    whole = tiny_trainer(patches, **decay)
    whole.train(3)  # steps 0, 1, 2 ran at factors 1, 1, 0.75
    assert [g["lr"] for g in whole.opt_G.param_groups] == [pytest.approx(0.75e-3)]
    assert [g["lr"] for g in whole.opt_D.param_groups] == [pytest.approx(1.5e-3)]
    whole.train(6)
    assert [g["lr"] for g in whole.opt_G.param_groups] == [pytest.approx(0.0)]  # step 5: factor 0
    # At lr 0 Adam moves nothing: one more step leaves G's weights as they were.
    before = [p.detach().clone() for p in whole.G.parameters()]
    whole.train(7)
    assert all(torch.equal(a, b) for a, b in zip(before, whole.G.parameters()))

    first = tiny_trainer(patches, **decay)
    first.train(2)
    resumed = tiny_trainer(patches, **decay)
    resumed.load_state_dict(torch.load(io.BytesIO(_saved(first.state_dict())), weights_only=True))
    resumed.train(7)
    assert_same_state(whole.state_dict(), resumed.state_dict())
    # and the schedule changes the run: a constant lr ends elsewhere
    constant = tiny_trainer(patches, optimizer="adam", lr=1e-3, d_lr=2e-3)
    constant.train(7)
    assert any(not torch.equal(a, b) for a, b in zip(whole.G.parameters(), constant.G.parameters()))
    for trainer in (whole, first, resumed, constant):
        trainer.close()
