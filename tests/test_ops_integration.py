"""detectron_lib.ops as torch custom ops: schema/fake/autograd checks (torch.library.opcheck),
torch.compile(fullgraph=True) of a function calling them, the backend switch, the fallback
when the kernels are missing, and the CUDA dispatch to torchvision."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from detectron_lib import ops
from detectron_lib.errors import ConfigError

needs_kernels = pytest.mark.skipif(ops.KERNELS_ERROR is not None, reason="compiled kernels not built")

def test_compiled_kernels_are_built():
    """The other ops tests skip without the kernels; this one fails, so a broken build shows."""
    assert ops.KERNELS_ERROR is None, f"detectron_lib._C failed to import: {ops.KERNELS_ERROR}"


OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor")


@needs_kernels
def test_opcheck_roi_ops():
    features = torch.randn(2, 8, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 2.0, 20.0, 17.0], [1, 4.0, 3.0, 11.0, 20.0]], dtype=torch.float64)
    detectron = torch.ops.detectron
    torch.library.opcheck(detectron.roi_align.default, (features, rois, 0.25, 2, 2, 2, False))
    torch.library.opcheck(detectron.roi_pool.default, (features, rois, 0.25, 2, 2))
    torch.library.opcheck(detectron.ps_roi_align.default, (features, rois, 0.25, 2, 2, -1))
    torch.library.opcheck(detectron.ps_roi_pool.default, (features, rois, 0.25, 2, 2))
    small = features[:, :, :3, :4].detach().clone().requires_grad_()
    levels = torch.tensor([0, 1])
    torch.library.opcheck(detectron.multilevel_roi_align.default,
                          ([features, small], rois, levels, [0.25, 0.125], 2, 2, 2, True))


@needs_kernels
def test_opcheck_box_ops():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    detectron = torch.ops.detectron
    torch.library.opcheck(detectron.nms.default, (boxes, scores, 0.5), test_utils=OPCHECK_TESTS)
    torch.library.opcheck(detectron.batched_nms.default, (boxes, scores, torch.tensor([0, 1, 0]), 0.5),
                          test_utils=OPCHECK_TESTS)
    torch.library.opcheck(detectron.soft_nms.default, (boxes, scores, 2, 0.5, 0.3, 0.001),
                          test_utils=OPCHECK_TESTS)
    torch.library.opcheck(detectron.box_iou.default, (boxes, boxes))
    torch.library.opcheck(detectron.paste_masks.default, (torch.rand(3, 5, 5), boxes, 32, 32))


@needs_kernels
def test_torch_compile_fullgraph_roi_align_forward_backward():
    """A box-head-like function compiles without graph breaks and matches eager."""
    def head(features, rois, weight):
        pooled = ops.roi_align(features, rois, 7, 0.25, 2, aligned=True)
        return (pooled.flatten(1) @ weight).relu().sum()

    features = torch.randn(2, 4, 16, 16, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 2.0, 40.0, 37.0], [1, 4.0, 3.0, 61.0, 50.0]])
    weight = torch.randn(4 * 49, 5)
    compiled = torch.compile(head, fullgraph=True, backend="aot_eager")
    loss = compiled(features, rois, weight)
    (grad,) = torch.autograd.grad(loss, features)
    (expected_grad,) = torch.autograd.grad(head(features, rois, weight), features)
    torch.testing.assert_close(loss, head(features, rois, weight))
    torch.testing.assert_close(grad, expected_grad)


@needs_kernels
def test_backend_switch_selects_reference():
    features = torch.randn(1, 3, 8, 8)
    rois = torch.tensor([[0, 1.0, 1.0, 20.0, 25.0]])
    compiled = ops.roi_align(features, rois, 3, 0.25, 2)
    assert ops.get_backend() == "compiled"
    try:
        ops.set_backend("reference")
        assert ops.get_backend() == "reference"
        torch.testing.assert_close(ops.roi_align(features, rois, 3, 0.25, 2), compiled)
    finally:
        ops.set_backend("compiled")
    with pytest.raises(ConfigError, match="'fast'"):
        ops.set_backend("fast")


def _run_python(code, **env):
    """Runs code in a fresh interpreter (module-level backend state is set at import)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_missing_kernels_warn_and_fall_back_to_reference():
    result = _run_python("""
        import sys, warnings
        sys.modules["detectron_lib._C"] = None  # the import of the compiled module fails
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from detectron_lib import ops
        assert ops.get_backend() == "reference"
        messages = [str(w.message) for w in caught]
        assert any("the compiled kernels are not built: run `make build`" in m for m in messages), messages
        import torch
        out = ops.roi_align(torch.ones(1, 2, 4, 4), torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]]), 2)
        assert torch.allclose(out, torch.ones(1, 2, 2, 2)), out
    """, DETECTRON_OPS="compiled")
    assert result.returncode == 0, result.stderr


def test_environment_variable_selects_backend():
    result = _run_python("""
        from detectron_lib import ops
        assert ops.get_backend() == "reference"
    """, DETECTRON_OPS="reference")
    assert result.returncode == 0, result.stderr
    result = _run_python("import detectron_lib.ops", DETECTRON_OPS="turbo")
    assert result.returncode != 0 and "DETECTRON_OPS='turbo'" in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_run_torchvision_kernels():
    import torchvision

    features = torch.randn(2, 4, 16, 16, device="cuda")
    rois = torch.tensor([[0, 1.0, 2.0, 40.0, 37.0], [1, 4.0, 3.0, 61.0, 50.0]], device="cuda")
    torch.testing.assert_close(ops.roi_align(features, rois, 7, 0.25, 2),
                               torchvision.ops.roi_align(features, rois, 7, 0.25, 2))
    boxes = rois[:, 1:]
    assert torch.equal(ops.nms(boxes, torch.tensor([0.9, 0.8], device="cuda"), 0.5),
                       torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8], device="cuda"), 0.5))
