"""The augmentations after the warp (`Augmentation`: elastic distortion, random erasing, Gaussian noise)
checked against torchvision's definitions of the same operations, on real test images."""

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

import mnistfx
from mnistfx import Augmentation, augment_batch
from mnistfx.data.augment import elastic_field, elastic_warp, random_erase


@pytest.fixture(scope="module")
def digits(test_slice):
    return test_slice[0][:256].unsqueeze(1).float() / 255


def test_elastic_distortion_is_torchvisions(digits):
    """Our batched field and warp equal torchvision's ElasticTransform, image by image, on the same draws:
    its gaussian_blur of 2u - 1 times alpha / 28, then its elastic_image (bilinear, black outside)."""
    alpha, sigma = 34.0, 4.0
    u = torch.rand(16, 2, 28, 28, generator=torch.Generator().manual_seed(3))
    field = elastic_field(u, alpha, sigma)
    ours = elastic_warp(digits[:16], field)
    k = int(8 * sigma + 1) + (1 - int(8 * sigma + 1) % 2)
    for i in range(16):
        d = [TF.gaussian_blur(u[i : i + 1, a : a + 1] * 2 - 1, [k, k], [sigma, sigma]) * alpha / 28 for a in (0, 1)]
        theirs_field = torch.cat(d, 1).permute(0, 2, 3, 1)
        theirs = TF.elastic_image(digits[i : i + 1], theirs_field)
        # float32 sums of 33 taps and a bilinear mix of values in [0, 1]: a few units of float32's spacing
        assert (field[i : i + 1] - theirs_field).abs().max() < 64 * torch.finfo(torch.float32).eps
        assert (ours[i : i + 1] - theirs).abs().max() < 1e-4
    moved = (ours - digits[:16]).abs().amax((1, 2, 3))
    assert (moved > 0.05).all()  # every digit changed, none beyond recognition of its ink
    assert (ours.sum((1, 2, 3)) / digits[:16].sum((1, 2, 3)) - 1).abs().max() < 0.2


def test_random_erasing_is_torchvisions_erase(digits):
    """Each erased rectangle is torchvision's erase(img, i, j, h, w, v) with the documented draws, and the
    draws follow RandomErasing's: probability p, 2-33 % of the area, aspect ratio 0.3-3.3."""
    n, p = 256, 0.5
    g = torch.Generator().manual_seed(5)
    u, fill = torch.rand(n, 5, generator=g), torch.rand(n, 1, 28, 28, generator=g)
    ours = random_erase(digits, u, fill, p)
    hit = 0
    for i in range(n):
        if u[i, 0] >= p:
            assert torch.equal(ours[i], digits[i])
            continue
        hit += 1
        area = 784 * (0.02 + 0.31 * u[i, 1].item())
        aspect = math.exp(math.log(0.3) + (math.log(10 / 3) - math.log(0.3)) * u[i, 2].item())
        h = min(max(round(math.sqrt(area * aspect)), 1), 27)
        w = min(max(round(math.sqrt(area / aspect)), 1), 27)
        top, left = math.floor(u[i, 3].item() * (28 - h + 1)), math.floor(u[i, 4].item() * (28 - w + 1))
        assert 0 <= top <= 28 - h and 0 <= left <= 28 - w
        v = fill[i, :, top : top + h, left : left + w]
        assert torch.equal(ours[i], TF.erase(digits[i], top, left, h, w, v))
    # Binomial(256, 0.5): within 5 standard deviations (8)
    assert abs(hit - n * p) < 5 * math.sqrt(n * p * (1 - p))


def test_gaussian_noise_has_the_drawn_spread():
    """On mid-grey images (no clipping within 6 sigma of 0.08), each image's noise has a standard deviation
    drawn from U(0, noise): all below it, their mean near noise / 2."""
    n, noise = 512, 0.08
    x = torch.full((n, 1, 28, 28), 0.5)
    out = Augmentation(noise=noise)(x, key=11)
    s = (out - x).std((1, 2, 3))
    assert (s < noise * 1.1).all() and s.min() < noise / 10
    # the mean of U(0, 0.08) is 0.04, its standard error over 512 images 0.08 / sqrt(12 * 512) = 0.001
    assert abs(s.mean().item() - noise / 2) < 5 * noise / math.sqrt(12 * n)


def test_a_shard_is_drawn_as_the_whole_batch(digits):
    """A data-parallel rank's rows get what the same rows get in the single-process batch."""
    aug = Augmentation(noise=0.3, erase=0.5, elastic=34.0, elastic_sigma=4.0)
    whole = aug(digits[:64], key=7)
    rows = torch.tensor([1, 2, 3, 40, 63])
    assert torch.equal(aug(digits[:64][rows], key=7, rows=rows, n=64), whole[rows])
    assert torch.equal(aug(digits[:64], key=7), whole) and not torch.equal(aug(digits[:64], key=8), whole)


def test_no_augmentation_draws_nothing(digits):
    """With every augmentation off, a batch is what it was before they existed: the same warp from the same
    generator, and the generator left where the warp leaves it."""
    model = mnistfx.get_model("tuned")
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    plain = augment_batch(model, digits, key=g1)
    off = augment_batch(model, digits, key=g2, extra=Augmentation())
    assert torch.equal(plain, off) and torch.equal(g1.get_state(), g2.get_state())


def test_a_run_with_augmentations_trains_and_records_them(mnist):
    cfg = mnistfx.recipe(
        "tuned", epochs=1, train_size=3200, compile=False, aug_noise=0.3, aug_erase=0.5, aug_elastic=34.0
    )
    run = mnistfx.train(cfg, data=mnist, test=False)
    assert run.val.accuracy > 0.3  # 100 steps on heavily augmented images (53 % seen); chance is 0.1
    assert run.config.to_dict()["aug_erase"] == 0.5 and mnistfx.TrainConfig.from_dict(run.config.to_dict()) == cfg


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"aug_noise": 0.3, "augment": False}, "do not go with `augment=False`"),
        ({"aug_erase": 0.5, "faithful_fill": True}, "or `faithful_fill=True`"),
        ({"aug_noise": float("nan")}, "`aug_noise` must be a number from 0 to 1, not nan"),
        ({"aug_elastic": -1}, "`aug_elastic` must be a number from 0 to 500"),
        ({"aug_elastic_sigma": 0}, "`aug_elastic_sigma` must be a number above 0 to 6, not 0"),
        ({"aug_elastic_sigma": 7.0}, "to 6, not 7.0"),
        ({"aug_erase": "0.5"}, "`aug_erase` must be a number"),
    ],
)
def test_bad_augmentation_settings_are_refused(fields, words):
    with pytest.raises(mnistfx.ConfigError) as e:
        mnistfx.TrainConfig(**fields)
    assert words in str(e.value)


@pytest.mark.fast
def test_the_robust_recipe_is_the_default_with_noise_erasing_and_clean_epochs():
    """What docs/robustness.md says the recipe is: the default for `tuned`, plus noise and erasing (no MNIST-C
    corruption among them), 20 epochs with the last 4 (the decay) clean."""
    robust, default = mnistfx.RECIPES["robust"]["tuned"], mnistfx.RECIPES["default"]["tuned"]
    changed = {
        f: getattr(robust, f)
        for f in mnistfx.TrainConfig.__dataclass_fields__
        if getattr(robust, f) != getattr(default, f)
    }
    assert changed == {"epochs": 20, "clean_epochs": 4, "aug_noise": 0.5, "aug_erase": 0.5, "recipe": "robust"}
    assert mnistfx.recipe("tuned", "robust", seed=3).aug_noise == 0.5
    for bad in ("cnn", "resnet"):
        with pytest.raises(
            mnistfx.ConfigError, match="there is no 'robust' recipe for|the 'robust' recipe is for tuned"
        ):
            mnistfx.recipe(bad, "robust")
