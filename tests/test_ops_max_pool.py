"""detectron_lib.ops.max_pool2d (compiled CPU kernel) against F.max_pool2d_with_indices:
outputs, argmax indices and gradients bit for bit, on random maps and on maps full of ties,
-inf and NaN; the custom-op checks; the VGG16 body's pools."""
import pytest
import torch
from torch.nn import functional as F

from detectron_lib import ops
from detectron_lib.modeling.backbone.vgg import VGG16Body

pytestmark = pytest.mark.skipif(ops.KERNELS_ERROR is not None, reason="compiled kernels not built")

# (kernel, stride, padding): the ResNet stem, VGG16, and less usual ones.
POOLS = [(3, 2, 1), (2, 2, 0), (3, 1, 1), (1, 2, 0), (3, 3, 0), (5, 2, 2), (4, 3, 1)]
SIZES = [(24, 24), (15, 9), (7, 13), (2, 1), (1, 2)]
KINDS = ["random", "integers", "constant", "neginf", "nan"]


def make_input(kind, shape, dtype, generator):
    """Random values, or maps where most windows tie: few integer values, one constant,
    mostly -inf (all -inf windows), or NaNs among integers."""
    x = torch.randn(shape, generator=generator)
    mask = torch.rand(shape, generator=generator)
    if kind == "integers":
        x = torch.randint(-2, 3, shape, generator=generator).float()
    elif kind == "constant":
        x = torch.full(shape, -1.0)
    elif kind == "neginf":
        x = torch.where(mask < 0.7, float("-inf"), x.round())
    elif kind == "nan":
        x = torch.where(mask < 0.2, float("nan"), x.round())
    return x.to(dtype)


def bits(x):
    """The tensor's bit patterns, so that NaNs and signed zeros compare exactly."""
    return x.view(torch.int16 if x.dtype == torch.bfloat16 else torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel,stride,padding", POOLS)
def test_forward_and_backward_equal_max_pool2d(dtype, kernel, stride, padding):
    generator = torch.Generator().manual_seed(0)
    for height, width in SIZES:
        if min(height, width) + 2 * padding < kernel:
            continue
        for kind in KINDS:
            x = make_input(kind, (2, 3, height, width), dtype, generator)
            expected, expected_index = F.max_pool2d_with_indices(x, kernel, stride, padding)
            output, index = torch.ops.detectron.max_pool2d(
                x, [kernel] * 2, [stride] * 2, [padding] * 2)
            case = f"{kind} {height}x{width}"
            assert torch.equal(bits(output), bits(expected)), case
            assert index.dtype == torch.int32 and torch.equal(index.long(), expected_index), case

            grad = torch.randn(expected.shape, generator=generator).to(dtype)
            expected_grad = torch.ops.aten.max_pool2d_with_indices_backward(
                grad, x, [kernel] * 2, [stride] * 2, [padding] * 2, [1, 1], False, expected_index)
            ours_grad = torch.ops.detectron._max_pool2d_backward(grad, index, height, width)
            assert torch.equal(bits(ours_grad), bits(expected_grad)), case


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autograd_equals_max_pool2d(dtype):
    """Gradients through ops.max_pool2d, non-contiguous output gradients included; several
    windows share a maximum, so bfloat16 gradients are sums rounded as PyTorch rounds them."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(-3, 4, (3, 4, 17, 20), generator=generator).to(dtype).requires_grad_()
    weight = torch.randn(3, 4, 1, 1, generator=generator).to(dtype)  # expanded gradients
    for kernel, stride, padding in [(3, 2, 1), (2, 2, 0)]:
        ours = (ops.max_pool2d(x, kernel, stride, padding) * weight).sum()
        theirs = (F.max_pool2d(x, kernel, stride, padding) * weight).sum()
        assert torch.equal(ours, theirs)
        (ours_grad,) = torch.autograd.grad(ours, x)
        (theirs_grad,) = torch.autograd.grad(theirs, x)
        assert torch.equal(ours_grad, theirs_grad)


def test_other_inputs_fall_back_to_max_pool2d():
    """channels_last, float64 and the reference backend give F.max_pool2d's results."""
    x = torch.randn(2, 8, 9, 10)
    expected = F.max_pool2d(x, 3, 2, 1)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert ops.max_pool2d(channels_last, 3, 2, 1).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ops.max_pool2d(channels_last, 3, 2, 1), expected)
    assert torch.equal(ops.max_pool2d(x.double(), 3, 2, 1), expected.double())
    try:
        ops.set_backend("reference")
        assert torch.equal(ops.max_pool2d(x, 3, 2, 1), expected)
    finally:
        ops.set_backend("compiled")


def test_invalid_arguments_raise():
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(RuntimeError, match="at most half the kernel size"):
        torch.ops.detectron.max_pool2d(x, [2, 2], [2, 2], [2, 2])
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        torch.ops.detectron.max_pool2d(x, [7, 7], [1, 1], [0, 0])
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.detectron.max_pool2d(x.transpose(2, 3), [2, 2], [2, 2], [0, 0])


def test_opcheck_and_torch_compile():
    x = torch.randn(2, 3, 11, 8, requires_grad=True)
    torch.library.opcheck(torch.ops.detectron.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1]))

    def stem_pool(x):
        return (ops.max_pool2d(x, 3, 2, 1) ** 2).sum()

    compiled = torch.compile(stem_pool, fullgraph=True, backend="aot_eager")
    (grad,) = torch.autograd.grad(compiled(x), x)
    (expected_grad,) = torch.autograd.grad(stem_pool(x), x)
    assert torch.equal(grad, expected_grad)


def test_vgg16_body_unchanged():
    """The VGG16 body's 2x2 pools: outputs and gradients as with F.max_pool2d."""
    torch.manual_seed(0)
    body = VGG16Body(frozen_blocks=0)
    images = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(1))

    def run():
        out = body(images)["conv5_3"]
        return out, torch.autograd.grad(out.square().sum(), list(body.parameters()))

    ours, ours_grads = run()
    try:
        ops.set_backend("reference")
        expected, expected_grads = run()
    finally:
        ops.set_backend("compiled")
    assert torch.equal(ours, expected)
    assert all(torch.equal(a, b) for a, b in zip(ours_grads, expected_grads))
