"""grad-cam's CAM methods on ConvMixer, checked against independent computations.

At the last mixer block, which feeds global average pooling and the linear head, the gradient of logit c with
respect to the block's output A (C x h x w) is W[c, k] / (h w) at every position. So several methods have closed
forms in the head's weights and the activations: Grad-CAM, HiResCAM and XGradCAM are the original CAM
(sum_k W[c, k] A_k) divided by h w; LayerCAM and the element-wise Grad-CAM keep the positive parts; Grad-CAM++ has its
own weights; EigenCAM is the activations' first principal component; AblationCAM's weights are the logit's relative
drop when a channel is set to zero. Methods without such a form get sanity checks.
"""

import numpy as np
import pytest
import torch
from pytorch_grad_cam.utils.image import scale_cam_image

from trainer.cam_methods import (CLASS_AGNOSTIC, CLASSES, ROAD_PERCENTILES, cam_maps, random_maps, road, sobel_maps)
from trainer.config import CAM_METHODS
from trainer.model import ConvMixer


def trained_looking(dim, depth, seed=0):
    torch.manual_seed(seed)
    model = ConvMixer(dim=dim, depth=depth, kernel_size=5, patch_size=2)
    for m in model.modules():  # non-trivial BN statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def model_and_images():
    return trained_looking(32, 3), torch.randn(6, 3, 32, 32)


@pytest.fixture(scope="module")
def last_block(model_and_images):
    """The last block's activations (double), the head's weights and the logits, by plain PyTorch."""
    model, images = model_and_images
    seen = {}
    handle = model.blocks[-1].register_forward_hook(lambda module, args, out: seen.update(a=out.detach()))
    with torch.no_grad():
        logits = model(images).double()
    handle.remove()
    return seen["a"].double(), model.head.weight.detach().double(), logits


def classes_for(logits):
    preds = logits.argmax(1)
    return preds, (preds + 3) % 10  # a second target per image, as the true class would be


def original_cam(activations, weights, classes):
    """Zhou et al.'s CAM: sum_k W[c, k] A_k, per image."""
    return torch.einsum("nk,nkhw->nhw", weights[classes], activations)


def closed_form(method, activations, weights, classes, logits):
    hw = activations.shape[-1] * activations.shape[-2]
    grads = weights[classes] / hw  # N x C: the same at every position
    a = activations
    if method in ("gradcam", "hirescam", "xgradcam"):
        return original_cam(a, weights, classes) / hw
    if method == "layercam":
        return torch.einsum("nk,nkhw->nhw", grads.clamp_min(0), a)
    if method == "gradcamelementwise":
        return (grads[:, :, None, None] * a).clamp_min(0).sum(1)
    if method == "gradcam++":
        sums = a.sum((2, 3))
        alpha = grads ** 2 / (2 * grads ** 2 + sums * grads ** 3 + 1e-6)
        return torch.einsum("nk,nkhw->nhw", hw * grads.clamp_min(0) * alpha, a)
    if method == "ablationcam":  # channel k set to zero: the logit drops by W[c, k] mean(A_k), relative to the logit
        drop = weights[classes] * a.mean((2, 3))
        return torch.einsum("nk,nkhw->nhw", drop / logits[torch.arange(len(classes)), classes][:, None], a)
    raise KeyError(method)


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "xgradcam", "layercam", "gradcamelementwise", "gradcam++",
                                    "ablationcam"])
def test_raw_maps_at_the_last_block_have_their_closed_form(model_and_images, last_block, method):
    model, images = model_and_images
    activations, weights, logits = last_block
    for classes in classes_for(logits):
        maps = cam_maps(model, images, classes, method, block=-1)
        expected = closed_form(method, activations, weights, classes, logits)
        assert maps.raw.shape == (6, 16, 16) and maps.shown.shape == (6, 32, 32)
        scale = expected.abs().amax((1, 2), keepdim=True)  # compare relative to each map's size
        torch.testing.assert_close(torch.from_numpy(maps.raw).double() / scale, expected / scale, rtol=0, atol=2e-4)


def test_eigencam_is_the_first_principal_component(model_and_images, last_block):
    """By an eigendecomposition of the covariance (grad-cam takes an SVD), up to the component's sign."""
    model, images = model_and_images
    activations = last_block[0]
    maps = cam_maps(model, images, torch.zeros(6, dtype=torch.long), "eigencam")
    for raw, a in zip(maps.raw, activations):
        rows = a.flatten(1).T - a.flatten(1).T.mean(0)  # positions x channels, centred
        _, vectors = torch.linalg.eigh(rows.T @ rows)
        expected = (rows @ vectors[:, -1]).view(16, 16)
        raw = torch.from_numpy(raw).double()
        sign = torch.sign((raw * expected).sum())
        torch.testing.assert_close(raw * sign, expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item())


def test_gradcam_at_an_inner_block_weights_its_activations_by_the_mean_gradient(model_and_images):
    """Selvaraju et al.'s definition, with the gradient from autograd: another block, another map."""
    model, images = model_and_images
    classes = torch.tensor([0, 1, 2, 3, 4, 5])
    seen = {}
    handle = model.blocks[0].register_forward_hook(lambda module, args, out: seen.update(a=out))
    logits = model(images)
    handle.remove()
    grads, = torch.autograd.grad(logits[torch.arange(6), classes].sum(), seen["a"])
    expected = (grads.mean((2, 3), keepdim=True) * seen["a"]).sum(1).detach()
    inner = cam_maps(model, images, classes, "gradcam", block=0)
    torch.testing.assert_close(torch.from_numpy(inner.raw), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(inner.raw, cam_maps(model, images, classes, "gradcam", block=-1).raw)


def test_raw_map_sums_to_logit_minus_bias(model_and_images, last_block):
    model, images = model_and_images
    _, _, logits = last_block
    bias = model.head.bias.detach().double()
    for classes in classes_for(logits):
        maps = cam_maps(model, images, classes)
        sums = torch.from_numpy(maps.raw.astype(np.float64)).sum(dim=(1, 2))
        expected = logits[torch.arange(6), classes] - bias[classes]
        torch.testing.assert_close(sums, expected, rtol=1e-4, atol=1e-4)


def test_map_alone_equals_map_in_batch_and_display_is_scaled_relu(model_and_images):
    model, images = model_and_images
    classes = torch.arange(6) % 10
    batch = cam_maps(model, images, classes)
    alone = cam_maps(model, images[2:3], classes[2:3])
    np.testing.assert_allclose(alone.raw[0], batch.raw[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone.shown[0], batch.shown[2], rtol=1e-5, atol=1e-6)
    # ReLU, min-max scale, upsample (bilinear); grad-cam then min-max scales once more across its layers
    expected = scale_cam_image(scale_cam_image(np.maximum(batch.raw, 0), (32, 32)))
    np.testing.assert_allclose(batch.shown, expected, atol=1e-6)
    assert batch.shown.min() >= 0 and batch.shown.max() <= 1 + 1e-6


@pytest.mark.parametrize("method", ["eigengradcam", "kpcacam", "fem", "shapleycam", "fullgrad", "scorecam"])
def test_methods_without_a_closed_form_give_maps_that_follow_the_class(method):
    """Shape and range; a map that changes with the class asked for, or, for the class-agnostic methods, does not."""
    model = trained_looking(16, 2)
    images = torch.randn(3, 3, 32, 32)
    first = cam_maps(model, images, torch.tensor([0, 1, 2]), method)
    second = cam_maps(model, images, torch.tensor([5, 6, 7]), method)
    for maps in (first, second):
        assert maps.shown.shape == (3, 32, 32) and np.isfinite(maps.raw).all() and maps.raw.std() > 0
        # shown: ReLU then scaled to [0, 1]; an untrained model's map may be negative everywhere, and shown all zero
        assert maps.shown.min() >= 0 and maps.shown.max() <= 1 + 1e-6
        positive = np.maximum(maps.raw, 0).max(axis=tuple(range(1, maps.raw.ndim))) > 0
        np.testing.assert_allclose(maps.shown.max(axis=(1, 2)), positive.astype(np.float32), atol=1e-5)
    scale = np.abs(first.raw).max()
    if method in CLASS_AGNOSTIC:  # KPCA-CAM's eigensolver (ARPACK) starts from a random vector: equal to rounding
        np.testing.assert_allclose(first.raw / scale, second.raw / scale, atol=1e-4)
    else:
        assert not np.allclose(first.raw / scale, second.raw / scale, atol=1e-3)


def test_every_configured_method_has_its_class():
    assert tuple(CLASSES) == CAM_METHODS


def test_no_hooks_left_on_the_model(model_and_images):
    model, images = model_and_images
    for method in ("gradcam", "fullgrad", "ablationcam"):
        cam_maps(model, images[:2], torch.zeros(2, dtype=torch.long), method)
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks
    assert type(model.blocks[-1]).__name__ == "MixerBlock"  # AblationCAM puts its layer back


def test_road_repeats_exactly_and_leaves_the_global_generator_alone(model_and_images):
    """ROAD's imputation adds noise from torch's global generator: 0.751 then 0.749 on the same images before it was
    seeded. Now the same seed gives the same scores, another seed other scores, and the caller's stream goes on."""
    model, images = model_and_images
    classes = torch.tensor([0, 1, 2, 3, 4, 5])
    maps = cam_maps(model, images, classes).shown
    state = torch.get_rng_state()
    first = road(model, images, classes, maps, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(road(model, images, classes, maps, seed=0), first)
    assert not np.array_equal(road(model, images, classes, maps, seed=1), first)
    assert first.shape == (6,) and np.isfinite(first).all() and ROAD_PERCENTILES == [20, 40, 60, 80]


def test_baselines():
    noise = random_maps(3, 32, seed=4)
    assert noise.shape == (3, 32, 32) and np.array_equal(noise, random_maps(3, 32, seed=4))
    image = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    image[..., 16:] = 255  # one vertical edge between columns 15 and 16
    edges = sobel_maps(image)[0]
    assert edges.max() == 1 and edges[:, 15:17].min() == 1 and edges[:, :14].max() == 0 and edges[:, 18:].max() == 0
