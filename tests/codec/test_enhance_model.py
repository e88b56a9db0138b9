"""The enhancer network and its training: shapes at odd sizes, determinism, the loss falls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec.enhance.data import PairSet
from codec.enhance.model import N_MOD, EnhanceNet, side_image, side_map, strength_of_psnr
from codec.enhance.train import TrainConfig, held_out_gain_db, save_weights, train
from codec.enhance.weights import EnhancerWeightsError, load_enhancer


@pytest.mark.parametrize(("h", "w"), [(1, 1), (17, 23), (33, 8), (64, 48)])
def test_shapes_at_odd_sizes(h: int, w: int) -> None:
    torch.manual_seed(0)
    net = EnhanceNet().eval()
    x = torch.rand(2, 3, h, w)
    side = side_image(side_map(torch.rand(2, 3, h, w) - 0.5, 4 / 255), 4 / 255, h, w)
    with torch.no_grad():
        y = net(x, torch.tensor([0.2, 0.7]), torch.randn(2, N_MOD) * 0.1, side)
    assert y.shape == (2, 3, h, w) and torch.isfinite(y).all()


def test_fresh_network_is_identity_and_modulation_reaches_the_output() -> None:
    torch.manual_seed(0)
    net = EnhanceNet().eval()
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        assert torch.equal(net(x, torch.tensor([0.5])), x)  # zero-initialised tail
        torch.nn.init.normal_(net.tail.weight, std=0.05)
        a = net(x, torch.tensor([0.5]), torch.zeros(1, N_MOD))
        b = net(x, torch.tensor([0.5]), torch.ones(1, N_MOD))
    assert not torch.equal(a, b)


def test_strength_schedule() -> None:
    assert strength_of_psnr(50.0) == 0.0 and strength_of_psnr(10.0) == 1.0
    assert strength_of_psnr(25.0) > strength_of_psnr(35.0)


def tiny_pairs(n_contents: int = 3, size: int = 24, seed: int = 0) -> PairSet:
    """Sources: smooth random textures; decoded: the same with less contrast and a colour cast."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(n_contents * 2, size, size, 3)).astype(np.float32)
    k = np.ones(5) / 5
    src = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, noise)
    src = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 2, src)
    dec = np.clip((src - 128) * 0.7 + 128 + np.array([30, -20, 10]), 0, 255)
    return PairSet(
        decoded=dec.round().astype(np.uint8),
        source=src.astype(np.uint8),
        content=np.repeat(np.arange(n_contents), 2),
        quality=np.full(n_contents * 2, 4),
    )


TINY = TrainConfig(steps=40, batch=4, patch=16, lr=5e-3, seed=3)


def test_training_lowers_the_loss_and_is_deterministic() -> None:
    torch.set_num_threads(1)
    pairs = tiny_pairs()
    a = train(pairs, TINY)
    assert np.mean(a.losses[-8:]) < 0.8 * np.mean(a.losses[:8])
    before, after = held_out_gain_db(a.model, pairs)
    assert after > before
    b = train(pairs, TINY)
    assert a.losses == b.losses
    for (ka, va), (kb, vb) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)


def test_weights_file_round_trip_and_damage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    net = EnhanceNet()
    path = tmp_path / "w.pt"
    sha = save_weights(net, path, {"note": "test"})
    loaded, got = load_enhancer(path, expected_sha256=sha)
    assert got == sha
    for (ka, va), (kb, vb) in zip(
        net.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(EnhancerWeightsError, match="bad.pt"):
        load_enhancer(bad, expected_sha256=sha)
    with pytest.raises(EnhancerWeightsError, match="missing.pt"):
        load_enhancer(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a weights file")
    with pytest.raises(EnhancerWeightsError, match="junk.pt"):
        load_enhancer(tmp_path / "junk.pt")
