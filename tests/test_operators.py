"""Forward operators of ``scorestudio.data.operators`` against closed forms."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scorestudio
from scorestudio.data.operators import (
    OPERATOR_NAMES,
    Operator,
    build_operator,
    gaussian_kernel,
    motion_kernel,
)
from scorestudio.utils.config import ConfigError
from scorestudio.utils.registry import RegistryError
from scorestudio.utils.seeding import generator


def images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Random images [n, 3, size, size] in [-1, 1]."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def impulse(size: int = 64) -> torch.Tensor:
    x = torch.zeros(1, 3, size, size)
    x[..., size // 2, size // 2] = 1.0
    return x


# ------------------------------------------------------------------------------ registry


def test_every_operator_is_registered_and_builds():
    for name in OPERATOR_NAMES:
        if name == "mask-inpaint":
            continue  # needs a file; see test_mask_inpaint_reads_png
        cls = scorestudio.find(name)
        assert issubclass(cls, Operator)
        op = build_operator(name, {"sigma_y": 0.01})
        assert isinstance(op, cls) and op.cfg.sigma_y == 0.01
        x = images(1)
        assert op(x).shape == op.output_shape(tuple(x.shape))


def test_unknown_operator_lists_close_matches():
    with pytest.raises(RegistryError) as err:
        build_operator("gausian-blur")
    assert "'gaussian-blur'" in str(err.value) and "Did you mean" in str(err.value)


def test_unknown_config_key_names_full_path():
    with pytest.raises(ConfigError, match="data.kernel_sise.*Did you mean 'kernel_size'"):
        build_operator("gaussian-blur", {"kernel_sise": 5})
    with pytest.raises(ConfigError, match="data.kernel_size=4"):
        build_operator("gaussian-blur", {"kernel_size": 4})


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match="3 \\(RGB\\) channels, got 4.*latents"):
        build_operator("hdr")(torch.zeros(1, 4, 8, 8))


# ------------------------------------------------------------------------------ blur


def test_gaussian_kernel_closed_form():
    k = gaussian_kernel(5, 1.0)
    i = torch.arange(5.0) - 2
    expected = torch.exp(-(i[:, None] ** 2 + i[None, :] ** 2) / 2)
    torch.testing.assert_close(k, expected / expected.sum())


@pytest.mark.parametrize("padding", ["reflect", "zeros", "circular"])
def test_blur_of_impulse_is_the_kernel(padding):
    op = build_operator("gaussian-blur", {"kernel_size": 9, "sigma": 1.5, "padding": padding})
    y = op(impulse())
    torch.testing.assert_close(y[0, :, 28:37, 28:37], op.kernel.expand(3, 9, 9))
    assert y.sum().item() == pytest.approx(3.0, abs=1e-5)


def test_motion_blur_of_impulse_is_the_unflipped_kernel():
    op = build_operator("motion-blur", {"kernel_size": 9, "seed": 3})
    y = op(impulse())
    torch.testing.assert_close(y[0, 0, 28:37, 28:37], op.kernel)


def test_blur_of_constant_is_constant_with_reflect_padding():
    x = torch.full((1, 3, 32, 32), 0.3)
    for name in ("gaussian-blur", "motion-blur"):
        torch.testing.assert_close(build_operator(name)(x), x)
    # zero padding: the border darkens towards 0 (by the kernel mass outside the image)
    y = build_operator("gaussian-blur", {"padding": "zeros"})(x)
    assert y[0, 0, 0, 0] < 0.3 * 0.6 and y[0, 0, 16, 16].item() == pytest.approx(0.3)


def test_motion_kernel_is_normalised_seeded_and_centred():
    kernels = [build_operator("motion-blur", {"seed": s}).kernel for s in (0, 0, 1)]
    for k in kernels:
        assert k.shape == (15, 15) and (k >= 0).all()
        assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert k[0].sum() + k[-1].sum() + k[:, 0].sum() + k[:, -1].sum() > 0  # spans the kernel
    assert torch.equal(kernels[0], kernels[1]) and not torch.allclose(kernels[0], kernels[2])
    # intensity 0: a straight centred segment, symmetric under 180° rotation
    line = motion_kernel(15, 0.0, generator(0, "motion-kernel"))
    torch.testing.assert_close(line, line.flip(0, 1), atol=1e-6, rtol=0)


def test_wiener_pseudo_inverse_deblurs_circular_blur():
    x = F.avg_pool2d(images(1, 32), 3, 1, 1)  # smooth-ish content
    op = build_operator("gaussian-blur", {"padding": "circular", "wiener_reg": 1e-6})
    y = op(x)
    x_hat = op.pseudo_inverse(y)
    assert x_hat.shape == x.shape
    assert (x_hat - x).abs().max() < 0.02 < (y - x).abs().max()
    torch.testing.assert_close(op(x_hat), y, atol=1e-4, rtol=0)


def test_blur_too_large_for_reflect_padding():
    with pytest.raises(ValueError, match="lower data.kernel_size"):
        build_operator("gaussian-blur", {"kernel_size": 61, "sigma": 3.0})(images(1, 16))


# ------------------------------------------------------------------------------ super-resolution


def test_avgpool_of_known_pattern():
    pattern = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    op = build_operator("super-resolution", {"scale": 2, "method": "avgpool"})
    expected = torch.tensor([[2.5, 4.5], [10.5, 12.5]])
    torch.testing.assert_close(op(pattern)[0, 1], expected)
    torch.testing.assert_close(build_operator("super-resolution", {"method": "avgpool"})(pattern)[0, 0],
                               torch.tensor([[7.5]]))


def test_bicubic_downsample_of_constant_is_constant():
    x = torch.full((2, 3, 64, 64), -0.4)
    y = build_operator("super-resolution", {"scale": 4, "method": "bicubic"})(x)
    assert y.shape == (2, 3, 16, 16)
    torch.testing.assert_close(y, torch.full_like(y, -0.4))


@pytest.mark.parametrize("method", ["avgpool", "bicubic"])
def test_super_resolution_pseudo_inverse_shape(method):
    op = build_operator("super-resolution", {"method": method})
    y = op(images())
    assert y.shape == (2, 3, 16, 16) and op.pseudo_inverse(y).shape == (2, 3, 64, 64)


def test_super_resolution_rejects_indivisible_size():
    op = build_operator("super-resolution", {"scale": 4})
    with pytest.raises(ValueError, match="62x64 is not divisible by data.scale=4"):
        op(torch.zeros(1, 3, 62, 64))
    with pytest.raises(ValueError, match="not divisible"):
        op.output_shape((1, 3, 62, 64))


# ------------------------------------------------------------------------------ inpainting


def test_box_inpaint_hides_right_half_exactly():
    x = images()
    y = build_operator("box-inpaint")(x)
    assert (y[..., 32:] == 0).all() and torch.equal(y[..., :32], x[..., :32])
    y = build_operator("box-inpaint", {"box": [0.25, 0.0, 0.5, 1.0]})(x)
    assert (y[..., 16:48, :] == 0).all() and torch.equal(y[..., :16, :], x[..., :16, :])
    with pytest.raises(ConfigError, match="data.box"):
        build_operator("box-inpaint", {"box": [0.0, 0.7, 1.0, 0.5]})


def test_random_inpaint_mask_fraction_and_seed():
    x = images()
    op = build_operator("random-inpaint", {"p": 0.8, "seed": 1})
    y = op(x)
    hidden = op.mask[0, 0] == 0
    assert abs(hidden.float().mean().item() - 0.8) < 0.02
    assert (y[..., hidden] == 0).all() and torch.equal(y[..., ~hidden], x[..., ~hidden])
    assert torch.equal(op.mask, build_operator("random-inpaint", {"seed": 1}).mask)
    assert not torch.equal(op.mask, build_operator("random-inpaint", {"seed": 2}).mask)
    with pytest.raises(ValueError, match="mask is 64x64.*images are 32x32.*data.resolution"):
        op(images(1, 32))


def test_mask_inpaint_reads_png(tmp_path):
    mask = np.full((64, 64), 255, np.uint8)
    mask[10:20, 30:50] = 0  # black = hidden
    iio.imwrite(tmp_path / "mask.png", mask)
    x = images()
    y = build_operator("mask-inpaint", {"mask_path": str(tmp_path / "mask.png")})(x)
    assert (y[..., 10:20, 30:50] == 0).all() and torch.equal(y[..., :10, :], x[..., :10, :])
    inverted = build_operator("mask-inpaint", {"mask_path": str(tmp_path / "mask.png"), "invert": True})
    assert torch.equal(inverted(x)[..., 10:20, 30:50], x[..., 10:20, 30:50])
    with pytest.raises(ValueError, match=r"mask is 64x64 \(HxW\) but the images are 32x48"):
        inverted(torch.zeros(1, 3, 32, 48))
    with pytest.raises(ConfigError, match="data.mask_path: image not found"):
        build_operator("mask-inpaint", {"mask_path": str(tmp_path / "missing.png")})


def test_inpainting_noise_leaves_hidden_pixels_zero():
    op = build_operator("box-inpaint", {"sigma_y": 0.1})
    y = op.measure(images(), generator(0, "y"))
    assert (y[..., 32:] == 0).all() and (y[..., :32] != images()[..., :32]).all()


# ------------------------------------------------------------------------------ non-linear


def test_phase_retrieval_shape_dc_and_invariances():
    op = build_operator("phase-retrieval")
    x = torch.zeros(1, 3, 32, 32)
    x[..., 8:24, 8:24] = images(1, 16)  # content with a zero border, so it can move
    y = op(x)
    assert y.shape == (1, 3, 64, 64) == op.output_shape((1, 3, 32, 32))
    torch.testing.assert_close(y[0, :, 32, 32], x[0].sum((1, 2)).abs() / 64)  # DC, ortho FFT
    torch.testing.assert_close(op(x.flip(-2, -1)), y, atol=1e-5, rtol=1e-5)        # 180° rotation
    torch.testing.assert_close(op(x.roll((5, -7), (-2, -1))), y, atol=1e-5, rtol=1e-5)  # translation
    assert not torch.allclose(op(x.flip(-1)), y, atol=1e-3)  # a mirror is not an invariance
    with pytest.raises(NotImplementedError, match="phase"):
        op.pseudo_inverse(y)
    assert not op.has_pseudo_inverse and not op.is_linear


def test_phase_retrieval_is_differentiable():
    x = images(1, 16).requires_grad_()
    build_operator("phase-retrieval")(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_hdr_closed_form_and_pseudo_inverse():
    op = build_operator("hdr")
    x = torch.tensor([-1.0, -0.6, -0.25, 0.0, 0.3, 0.5, 0.9]).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    torch.testing.assert_close(op(x)[0, 0, 0], torch.tensor([-1.0, -1.0, -0.5, 0.0, 0.6, 1.0, 1.0]))
    torch.testing.assert_close(op.pseudo_inverse(op(x))[0, 0, 0],
                               torch.tensor([-0.5, -0.5, -0.25, 0.0, 0.3, 0.5, 0.5]))


@pytest.mark.parametrize("name,cfg", [
    ("box-inpaint", {}), ("random-inpaint", {}), ("super-resolution", {"method": "avgpool"}), ("hdr", {}),
])
def test_pseudo_inverse_is_a_right_inverse_on_the_range(name, cfg):
    op = build_operator(name, cfg)
    y = op(images() * 0.5)  # |x| ≤ 0.5: HDR unclipped
    torch.testing.assert_close(op(op.pseudo_inverse(y)), y)


# ------------------------------------------------------------------------------ noise


def test_measure_is_seeded_and_has_sigma_y():
    op = build_operator("gaussian-blur", {"sigma_y": 0.05})
    x = images(4)
    y1, y2 = op.measure(x, generator(0, "y")), op.measure(x, generator(0, "y"))
    assert torch.equal(y1, y2) and not torch.equal(y1, op.measure(x, generator(1, "y")))
    assert (y1 - op(x)).std().item() == pytest.approx(0.05, rel=0.03)
