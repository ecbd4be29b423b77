"""Image-quality metrics of ``scorestudio.metrics.image_quality``."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from scorestudio.data.operators import build_operator
from scorestudio.metrics.image_quality import (
    LPIPS_UNAVAILABLE,
    MetricUnavailable,
    best_of_n,
    lpips,
    measurement_consistency,
    psnr,
    ssim,
    summarize,
)
from scorestudio.utils.seeding import generator


def unit_images(n: int = 3, size: int = 32, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_psnr_closed_form():
    ref = unit_images() * 0.9
    torch.testing.assert_close(psnr(ref + 0.1, ref), torch.full((3,), 20.0, dtype=torch.float64))
    torch.testing.assert_close(psnr(ref + 0.01, ref), torch.full((3,), 40.0, dtype=torch.float64))
    assert torch.isinf(psnr(ref, ref)).all()
    with pytest.raises(ValueError, match="same shape"):
        psnr(ref, ref[:, :, :16])


def test_ssim_matches_skimage():
    ref = unit_images(2, 40)
    noisy = (ref + 0.15 * unit_images(2, 40, seed=1) - 0.075).clamp(0, 1)
    smooth = torch.nn.functional.avg_pool2d(ref, 5, 1, 2)
    for x in (noisy, smooth, unit_images(2, 40, seed=2)):
        ours = ssim(x, ref)
        for i in range(2):
            theirs = structural_similarity(x[i].numpy(), ref[i].numpy(), channel_axis=0, data_range=1,
                                           gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
            assert ours[i].item() == pytest.approx(theirs, abs=1e-3)
    assert ssim(noisy.float(), ref.float()).dtype == torch.float32


def test_ssim_of_identical_images_is_one():
    x = unit_images()
    torch.testing.assert_close(ssim(x, x), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        ssim(x[..., :8, :8], x[..., :8, :8])


def test_measurement_consistency_is_rms_residual():
    op = build_operator("super-resolution", {"method": "avgpool", "sigma_y": 0.05})
    x = unit_images(4, 32, dtype=torch.float32)
    y = op(2 * x - 1)
    torch.testing.assert_close(measurement_consistency(op, x, y), torch.zeros(4))
    torch.testing.assert_close(measurement_consistency(op, x, y + 0.2), torch.full((4,), 0.2))
    noisy = op.measure(2 * x - 1, generator(0, "y"))
    assert measurement_consistency(op, x, noisy).mean().item() == pytest.approx(0.05, rel=0.1)


def test_best_of_n_and_summarize():
    values = torch.tensor([10.0, 30.0, 20.0])
    assert best_of_n(values, higher_is_better=True).item() == 30.0
    assert best_of_n(values, higher_is_better=False).item() == 10.0
    assert summarize(values) == {"mean": 20.0, "best": 30.0}
    per_measurement = torch.tensor([[1.0, 3.0], [0.5, 0.1]])  # 2 measurements x 2 particles
    assert summarize(per_measurement, higher_is_better=False) == pytest.approx({"mean": 1.15, "best": 0.55})
    with pytest.raises(ValueError, match=r"\[N\] or \[M, N\]"):
        summarize(torch.zeros(2, 2, 2))


@pytest.mark.skipif(importlib.util.find_spec("lpips") is not None, reason="lpips is installed")
def test_lpips_without_package_says_how_to_get_it():
    x = unit_images(1, 32, dtype=torch.float32)
    with pytest.raises(MetricUnavailable) as err:
        lpips(x, x)
    assert LPIPS_UNAVAILABLE in str(err.value)
    assert np.isfinite(psnr(x, x * 0.5).numpy()).all()  # other metrics unaffected


def test_load_image_modes_and_errors(tmp_path):
    """Every PNG mode a user may hand in reads as RGB in [0, 1] (alpha on white); a missing or
    unreadable file is one clear error, a ConfigError naming the setting when one is given."""
    import imageio.v3 as iio
    from PIL import Image

    from scorestudio.utils.config import ConfigError
    from scorestudio.utils.images import load_image

    rgb = np.array([[[255, 0, 0], [0, 153, 255]]], np.uint8)   # [1, 2, 3], on the web palette that "P" uses
    expected = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    assert torch.allclose(load_image(tmp_path / "palette.png"), expected)
    grey_alpha = np.array([[[100, 255], [100, 0]]], np.uint8)                     # opaque grey, transparent
    iio.imwrite(tmp_path / "la.png", grey_alpha)
    assert torch.allclose(load_image(tmp_path / "la.png"),
                          torch.tensor([100 / 255, 1.0]).view(1, 1, 2).expand(3, 1, 2))
    grey16 = np.array([[0, 65535, 32768]], np.uint16)
    iio.imwrite(tmp_path / "g16.png", grey16)
    assert torch.allclose(load_image(tmp_path / "g16.png"),
                          torch.from_numpy(grey16 / 65535.0).float().expand(3, 1, 3))
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read .*notes.png as an image"):
        load_image(tmp_path / "notes.png")
    with pytest.raises(ConfigError, match="^data.image: cannot read"):
        load_image(tmp_path / "notes.png", key="data.image")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ConfigError, match="^data.mask_path: image not found"):
        load_image(tmp_path / "missing.png", key="data.mask_path")
    from scorestudio.tools.probe import load_resized

    with pytest.raises(SystemExit, match="cannot read .*notes.png as an image"):   # the probe CLI: a message, no traceback
        load_resized(tmp_path / "notes.png", 64)
    assert load_resized(tmp_path / "palette.png", 4).shape == (3, 4, 4)
