"""RoI ops of detectron_lib.ops (compiled CPU kernels) against torchvision.ops and against
the pure-PyTorch references of detectron_lib.ops.reference: values, gradients, float64
gradcheck, empty inputs, boxes outside the image and degenerate boxes."""
import pytest
import torch
import torchvision

from detectron_lib import ops
from detectron_lib.ops import reference

pytestmark = pytest.mark.skipif(ops.KERNELS_ERROR is not None, reason="compiled kernels not built")


def make_rois(num_rois, batch_size, image_size, generator, dtype=torch.float32):
    """Random RoIs (K, 5) in an image of image_size pixels, plus fixed awkward cases:
    partly and wholly outside the image, zero-size, inverted and sub-pixel boxes."""
    xy = torch.rand(num_rois, 2, generator=generator) * image_size
    wh = torch.rand(num_rois, 2, generator=generator) * image_size / 2 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    special = torch.tensor([
        [-20.0, -10.0, 15.0, 12.0],                              # crosses the top-left corner
        [image_size - 5, image_size - 8, image_size + 30, image_size + 9],  # crosses bottom-right
        [image_size + 10, 2.0, image_size + 40, 30.0],           # wholly outside
        [7.0, 9.0, 7.0, 9.0],                                    # zero-size
        [20.0, 20.0, 12.0, 15.0],                                # inverted
        [3.2, 4.1, 3.6, 4.3],                                    # sub-pixel
    ])
    boxes = torch.cat([boxes, special])
    batch = torch.randint(0, batch_size, (len(boxes), 1), generator=generator).float()
    return torch.cat([batch, boxes], dim=1).to(dtype)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


ALIGN_CASES = [(False, 2), (False, -1), (True, 2), (True, 0)]


@pytest.mark.parametrize("aligned,sampling_ratio", ALIGN_CASES)
def test_roi_align_matches_torchvision_and_reference(generator, aligned, sampling_ratio):
    features = torch.randn(2, 16, 20, 24, generator=generator, requires_grad=True)
    rois = make_rois(40, 2, 96, generator)
    args = ((5, 4), 0.25, sampling_ratio, aligned)
    ours = ops.roi_align(features, rois, *args)
    theirs = torchvision.ops.roi_align(features, rois, *args)
    ref = reference.roi_align(features, rois, *args)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn(ours.shape, generator=generator)
    (g_ours,) = torch.autograd.grad(ours, features, grad_out)
    (g_theirs,) = torch.autograd.grad(theirs, features, grad_out)
    (g_ref,) = torch.autograd.grad(ref, features, grad_out)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_rois", [3, 400])
def test_roi_align_both_feature_layouts(generator, num_rois):
    """Few RoIs on a large map read it planar (N, C, H, W); many read a channels-last copy."""
    features = torch.randn(2, 8, 40, 48, generator=generator, requires_grad=True)
    rois = make_rois(num_rois, 2, 180, generator)
    ours = ops.roi_align(features, rois, 7, 0.25, 2, True)
    theirs = torchvision.ops.roi_align(features, rois, 7, 0.25, 2, True)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn(ours.shape, generator=generator)
    torch.testing.assert_close(torch.autograd.grad(ours, features, grad_out)[0],
                               torch.autograd.grad(theirs, features, grad_out)[0], atol=1e-5, rtol=1e-5)


def test_roi_align_accepts_box_lists_and_channels_last(generator):
    """torchvision's list-of-boxes form; a channels-last input gives the same result."""
    features = torch.randn(2, 8, 10, 10, generator=generator)
    boxes = [torch.tensor([[1.0, 1.0, 30.0, 20.0]]), torch.tensor([[0.0, 5.0, 9.0, 39.0], [4.0, 4.0, 8.0, 8.0]])]
    expected = torchvision.ops.roi_align(features, boxes, 3, 0.25, 2)
    torch.testing.assert_close(ops.roi_align(features, boxes, 3, 0.25, 2), expected)
    nhwc = features.to(memory_format=torch.channels_last)
    torch.testing.assert_close(ops.roi_align(nhwc, boxes, 3, 0.25, 2), expected)


@pytest.mark.parametrize("aligned,sampling_ratio", [(False, 2), (True, -1)])
def test_roi_align_gradcheck_float64(generator, aligned, sampling_ratio):
    features = torch.randn(2, 3, 6, 7, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 2.0, 20.0, 17.0], [1, -4.0, 3.0, 11.0, 30.0], [1, 5.0, 5.0, 5.0, 5.0]],
                        dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: ops.roi_align(f, rois, (2, 3), 0.25, sampling_ratio, aligned),
                                    (features,))


def test_roi_align_empty_inputs(generator):
    features = torch.randn(1, 4, 5, 5, generator=generator, requires_grad=True)
    out = ops.roi_align(features, torch.zeros(0, 5), 7, 1.0, 2)
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))
    assert ops.roi_align(torch.zeros(1, 0, 5, 5), torch.tensor([[0, 0, 0, 3.0, 3.0]]), 2).shape == (1, 0, 2, 2)


def test_roi_align_rejects_bad_batch_index(generator):
    with pytest.raises(RuntimeError, match="batch indices"):
        ops.roi_align(torch.randn(2, 3, 5, 5), torch.tensor([[2, 0, 0, 3.0, 3.0]]), 2)


def test_multilevel_roi_align_equals_per_level_roi_align(generator):
    """One call over P2-P5 equals torchvision's roi_align run level by level."""
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    features = [torch.randn(2, 8, 64 // 2**i, 48 // 2**i, generator=generator, requires_grad=True)
                for i in range(4)]
    rois = make_rois(60, 2, 190, generator)
    levels = torch.randint(0, 4, (len(rois),), generator=generator)
    ours = ops.multilevel_roi_align(features, rois, levels, 7, scales, 2, aligned=True)
    expected = torch.zeros_like(ours)
    for level, scale in enumerate(scales):
        members = levels == level
        expected[members] = torchvision.ops.roi_align(features[level], rois[members], 7, scale, 2, True)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn(ours.shape, generator=generator)
    ours_grads = torch.autograd.grad(ours, features, grad_out)
    expected_grads = torch.autograd.grad(expected, features, grad_out)
    for g_ours, g_expected in zip(ours_grads, expected_grads):
        torch.testing.assert_close(g_ours, g_expected, atol=1e-5, rtol=1e-5)


def test_multilevel_roi_align_rejects_bad_levels(generator):
    features = [torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4)]
    rois = torch.tensor([[0, 2.0, 3.0, 20.0, 25.0]])
    with pytest.raises(RuntimeError, match="level index 2"):
        ops.multilevel_roi_align(features, rois, torch.tensor([2]), 2, [0.25, 0.125])
    with pytest.raises(ValueError, match="2 feature levels but 1 spatial scales"):
        ops.multilevel_roi_align(features, rois, torch.tensor([0]), 2, [0.25])


def test_multilevel_roi_align_gradcheck_float64(generator):
    features = [torch.randn(1, 2, 8, 8, generator=generator, dtype=torch.float64, requires_grad=True),
                torch.randn(1, 2, 4, 4, generator=generator, dtype=torch.float64, requires_grad=True)]
    rois = torch.tensor([[0, 2.0, 3.0, 20.0, 25.0], [0, 0.0, 0.0, 31.0, 30.0], [0, 9.0, 1.0, 14.0, 8.0]],
                        dtype=torch.float64)
    levels = torch.tensor([0, 1, 0])
    assert torch.autograd.gradcheck(
        lambda a, b: ops.multilevel_roi_align([a, b], rois, levels, 2, [0.25, 0.125], -1), features)


def test_roi_pool_matches_torchvision_and_reference(generator):
    features = torch.randn(2, 6, 14, 12, generator=generator, requires_grad=True)
    rois = make_rois(30, 2, 56, generator)
    ours = ops.roi_pool(features, rois, (4, 3), 0.25)
    theirs = torchvision.ops.roi_pool(features, rois, (4, 3), 0.25)
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    torch.testing.assert_close(ours, reference.roi_pool(features, rois, (4, 3), 0.25), atol=0, rtol=0)
    grad_out = torch.randn(ours.shape, generator=generator)
    torch.testing.assert_close(torch.autograd.grad(ours, features, grad_out)[0],
                               torch.autograd.grad(theirs, features, grad_out)[0])


def test_roi_pool_gradcheck_float64(generator):
    features = torch.randn(1, 2, 6, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.0, 0.0, 20.0, 16.0], [0, 8.0, 4.0, 23.0, 23.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: ops.roi_pool(f, rois, 2, 0.25), (features,))


def test_ps_roi_align_matches_torchvision_and_reference(generator):
    features = torch.randn(2, 3 * 9, 12, 14, generator=generator, requires_grad=True)
    rois = make_rois(25, 2, 48, generator)[:25]  # torchvision gives NaN for degenerate boxes
    ours = ops.ps_roi_align(features, rois, 3, 0.25, 2)
    theirs = torchvision.ops.ps_roi_align(features, rois, 3, 0.25, 2)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn(ours.shape, generator=generator)
    torch.testing.assert_close(torch.autograd.grad(ours, features, grad_out)[0],
                               torch.autograd.grad(theirs, features, grad_out)[0], atol=1e-5, rtol=1e-5)
    all_rois = make_rois(25, 2, 48, generator)  # with the degenerate cases: 0, not NaN
    torch.testing.assert_close(ops.ps_roi_align(features, all_rois, 3, 0.25, -1),
                               reference.ps_roi_align(features, all_rois, (3, 3), 0.25, -1), atol=1e-5, rtol=1e-5)


def test_ps_roi_pool_matches_torchvision_inside_and_reference_everywhere(generator):
    """torchvision's CPU forward clips bins at H-1/W-1, so it is compared on RoIs whose bins
    stay off the last row and column; the reference covers every case."""
    features = torch.randn(2, 2 * 4, 16, 16, generator=generator, requires_grad=True)
    xy = torch.rand(20, 2, generator=generator) * 30
    inside = torch.cat([torch.randint(0, 2, (20, 1), generator=generator).float(), xy,
                        xy + torch.rand(20, 2, generator=generator) * 24 + 2], dim=1)
    torch.testing.assert_close(ops.ps_roi_pool(features, inside, 2, 0.25),
                               torchvision.ops.ps_roi_pool(features, inside, 2, 0.25), atol=1e-6, rtol=1e-6)
    rois = make_rois(20, 2, 64, generator)
    ours = ops.ps_roi_pool(features, rois, 2, 0.25)
    ref = reference.ps_roi_pool(features, rois, (2, 2), 0.25)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    grad_out = torch.randn(ours.shape, generator=generator)
    torch.testing.assert_close(torch.autograd.grad(ours, features, grad_out)[0],
                               torch.autograd.grad(ref, features, grad_out)[0], atol=1e-6, rtol=1e-6)


def test_ps_roi_ops_gradcheck_float64(generator):
    features = torch.randn(1, 8, 6, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 2.0, 19.0, 22.0], [0, -3.0, 4.0, 9.0, 30.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: ops.ps_roi_align(f, rois, 2, 0.25, 2), (features,))
    assert torch.autograd.gradcheck(lambda f: ops.ps_roi_pool(f, rois, 2, 0.25), (features,))
