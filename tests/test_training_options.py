"""Training options beyond the reference recipe (all off by default): each does what it says."""

import math

import pytest
import torch
from accelerate import Accelerator

from trainer.augment import Normalize
from trainer.batches import seeded
from trainer.config import AugmentConfig, TrainConfig
from trainer.data import Split, hold_out
from trainer.ema import WeightAverage
from trainer.errors import DataError
from trainer.mixing import Mixing
from trainer.steps import predict, train_step


class FixedLogits(torch.nn.Module):
    """Logits that are a parameter: image i of the batch gets row i."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, images):
        return self.logits[: len(images)] + 0 * images.sum()


def test_label_smoothing_gives_the_smoothed_cross_entropy():
    """With smoothing e over K classes the target is 1 - e + e / K for the label and e / K for the others:
    loss = -(1 - e) log p_y - e / K sum_k log p_k."""
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 2])
    accelerator = Accelerator(cpu=True)
    for smoothing in (0.0, 0.2):
        model, optimizer = accelerator.prepare(FixedLogits(logits), torch.optim.SGD([torch.zeros(1)], lr=0.0))
        _, loss_sum, _ = train_step(accelerator, model, optimizer, torch.zeros(2, 3, 2, 2), labels,
                                    TrainConfig(label_smoothing=smoothing))
        expected = 0.0
        for row, label in zip(logits.tolist(), labels.tolist()):
            log_p = [x - math.log(sum(math.exp(v) for v in row)) for x in row]
            expected += -(1 - smoothing) * log_p[label] - smoothing / 3 * sum(log_p)
        assert abs(loss_sum.item() - expected) < 1e-5


def test_tta_averages_the_logits_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    split = Split(images, torch.tensor([0, 1, 2, 3, 4, 0]))
    normalize = Normalize([0.5] * 3, [0.25] * 3, torch.device("cpu"))
    model(normalize(images))  # the lazy layer takes its shape
    accelerator = Accelerator(cpu=True)
    plain = predict(accelerator, model, split, 4, normalize, channels_last=False)
    both = predict(accelerator, model, split, 4, normalize, channels_last=False, tta=True)
    with torch.no_grad():
        x = normalize(images)
        mirrored = model(x.flip(3))
        assert not torch.allclose(mirrored, model(x), atol=1e-3)  # the mirror is another view
        expected = ((model(x) + mirrored) / 2).softmax(1)
    torch.testing.assert_close(both.probs, expected)
    torch.testing.assert_close(plain.probs, model(x).softmax(1).detach())


def test_the_validation_split_is_held_out_with_the_seed_alone():
    train = Split(torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 2, 2).clone(), torch.arange(20))
    kept, held = hold_out(train, 6, seed=3)
    assert len(held) == 6 and len(kept) == 14
    assert set(held.labels.tolist()).isdisjoint(kept.labels.tolist())
    assert sorted(held.labels.tolist() + kept.labels.tolist()) == list(range(20))
    assert torch.equal(held.images[:, 0, 0, 0].long(), held.labels)  # images and labels stay together
    assert held.labels.tolist() == sorted(held.labels.tolist())
    torch.manual_seed(123)  # the global generator (each process's differs in a run) plays no part
    assert torch.equal(hold_out(train, 6, seed=3)[1].labels, held.labels)
    assert not torch.equal(hold_out(train, 6, seed=4)[1].labels, held.labels)
    with pytest.raises(DataError, match="data.val_size=20 leaves no training images"):
        hold_out(train, 20, seed=3)


def test_the_weight_average_follows_its_closed_form():
    """ema_0 = the start; after step n: ema = d_n ema + (1 - d_n) w_n, d_n = min(decay, (1 + n) / (10 + n)); the
    integer buffers are copied."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    average = WeightAverage(model, decay=0.9)
    expected = {k: v.clone().double() for k, v in start.items() if v.is_floating_point()}
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(4, 3))  # moves BatchNorm's running statistics and its batch count
        average.update(step)
        d = min(0.9, (1 + step) / (10 + step))
        for key, value in model.state_dict().items():
            if key in expected:
                expected[key] = d * expected[key] + (1 - d) * value.double()
    got = average.model.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key].double(), value, rtol=1e-6, atol=1e-6)
    assert got["1.num_batches_tracked"].item() == 5
    assert not torch.equal(got["0.weight"], model.state_dict()["0.weight"])
    assert all(not p.requires_grad for p in average.model.parameters())


def test_mixup_and_cutmix_mix_pairs_as_described_with_the_steps_draws():
    images, labels = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5])
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    mixup = Mixing(AugmentConfig(mixup=0.8), 10)
    draw = mixup.draw(seeded(0, 1, 2, 0), epoch=1)
    assert draw == mixup.draw(seeded(0, 1, 2, 0), epoch=1) != mixup.draw(seeded(0, 1, 3, 0), epoch=1)
    assert draw.box is None and 0 < draw.lam < 1
    mixed, targets = mixup.apply(images, labels, draw)
    torch.testing.assert_close(mixed, draw.lam * images + (1 - draw.lam) * images.flip(0))
    torch.testing.assert_close(targets, draw.lam * one_hot + (1 - draw.lam) * one_hot.flip(0))

    cutmix = Mixing(AugmentConfig(cutmix=1.0), 10)
    draws = [cutmix.draw(seeded(0, 0, step, 0), epoch=0) for step in range(20)]
    draw = next(d for d in draws if 0 < d.lam < 1)
    top, bottom, left, right = draw.box
    mixed, targets = cutmix.apply(images, labels, draw)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert torch.equal(mixed[..., inside], images.flip(0)[..., inside])
    assert torch.equal(mixed[..., ~inside], images[..., ~inside])
    assert draw.lam == 1 - inside.sum().item() / 1024  # the share of the image left as it was
    torch.testing.assert_close(targets, draw.lam * one_hot + (1 - draw.lam) * one_hot.flip(0))

    both = Mixing(AugmentConfig(mixup=0.8, cutmix=1.0, mix_switch_prob=0.5), 10)
    kinds = {both.draw(seeded(0, 0, step, 0), epoch=0).box is None for step in range(40)}
    assert kinds == {True, False}  # some batches Mixup, some CutMix
    assert Mixing(AugmentConfig(mixup=0.8, mix_prob=0.0), 10).draw(seeded(0), epoch=0) is None
    late = Mixing(AugmentConfig(mixup=0.8, mix_off_epoch=3), 10)
    generator = seeded(5)
    assert late.draw(generator, epoch=3) is None and late.draw(seeded(5), epoch=2) is not None
    assert torch.equal(torch.rand(2, generator=generator), torch.rand(2, generator=seeded(5)))  # nothing drawn


def test_a_mixed_batch_is_the_reference_batch_mixed(tiny_cifar, cache_dir):
    """Mixing draws after the reference augmentation: the step's augmented images are the same, then mixed."""
    from trainer.augment import Augment
    from trainer.batches import BatchSource, epoch_order
    from trainer.config import Config, DataConfig
    from trainer.data import load_cifar

    data = load_cifar(DataConfig(name=str(tiny_cifar), cache_dir=str(cache_dir)))
    plain = Config(train=TrainConfig(batch_size=16))
    mixed = Config(train=TrainConfig(batch_size=16), augment=AugmentConfig(mixup=0.8))
    cpu = torch.device("cpu")
    order = epoch_order(len(data.train), 0, 0)
    images, labels = BatchSource(data.train, Augment(plain.augment, cpu), plain).batch(order, 0, 1)
    source = BatchSource(data.train, Augment(mixed.augment, cpu), mixed)
    mixed_images, targets = source.batch(order, 0, 1)
    lam = source.mixing.draw(_after_reference_draws(mixed, 16), 0).lam
    torch.testing.assert_close(mixed_images, lam * images + (1 - lam) * images.flip(0))
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.flip(0))


def _after_reference_draws(config, count):
    """The step's generator (seed 0, epoch 0, step 1, rank 0) after the reference augmentation's draws."""
    from trainer.augment import Augment

    generator = seeded(0, 0, 1, 0)
    Augment(config.augment, torch.device("cpu")).draw(count, generator)
    return generator


def test_a_resume_keeps_the_split_the_average_and_the_scoring():
    from trainer.config import Config, DataConfig
    from trainer.errors import ConfigError
    from trainer.cli import refuse_changed_evaluations

    run = Config(data=DataConfig(val_size=100), train=TrainConfig(ema_decay=0.99))
    refuse_changed_evaluations(run, Config(data=DataConfig(val_size=100), train=TrainConfig(ema_decay=0.99,
                                                                                             epochs=40)))
    for changed, said in ((Config(data=DataConfig(val_size=100), train=TrainConfig(ema_decay=0.99, tta=True)),
                           "train.tta was false in this run and is true now"),
                          (Config(seed=1, data=DataConfig(val_size=100), train=TrainConfig(ema_decay=0.99)),
                           "seed was 0 in this run and is 1 now"),
                          (Config(data=DataConfig(val_size=100)), "Resume with train.ema_decay=0.99")):
        with pytest.raises(ConfigError, match=said):
            refuse_changed_evaluations(run, changed)
    refuse_changed_evaluations(Config(), Config(seed=1))  # without a validation split the seed is another matter


def test_the_refusal_comes_before_the_data_is_read(trained_run, tmp_path):
    """The command line refuses a changed evaluation while it reads the settings: here the data is nowhere, and the
    refusal is still the first thing said."""
    from trainer.cli import training_request
    from trainer.errors import ConfigError

    with pytest.raises(ConfigError, match="train.tta was false in this run and is true now"):
        training_request([f"resume={trained_run[0]}", "train.tta=true", f"data.name={tmp_path / 'nowhere'}"])
