import dataclasses
from pathlib import Path

import pytest

from trainer.config import Config, ConfigError, TrainConfig, for_device, load_config, validate

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_reference_recipe():
    c = Config()
    assert (c.model.dim, c.model.depth, c.model.kernel_size, c.model.patch_size) == (256, 8, 5, 2)
    assert (c.train.batch_size, c.train.epochs, c.train.lr_max, c.train.weight_decay) == (512, 25, 0.01, 0.01)
    a = c.augment
    assert (a.scale_min, a.hflip, a.randaug_n, a.randaug_m, a.jitter, a.erasing) == (0.75, 0.5, 1, 8, 0.1, 0.25)
    assert a.mean == [0.4914, 0.4822, 0.4465] and a.std == [0.2471, 0.2435, 0.2616]
    assert c.data.name == "uoft-cs/cifar10" and c.tracker == "wandb"


def test_shipped_configs_load():
    tuned = load_config(str(ROOT / "configs" / "tuned.yaml"))
    assert (tuned.train.lr_max, tuned.train.weight_decay) == (0.05, 0.005)
    assert (tuned.augment.randaug_n, tuned.augment.randaug_m, tuned.augment.scale_min) == (2, 12, 1.0)
    assert tuned.augment.jitter == 0 and tuned.augment.erasing == 0
    debug = load_config(str(ROOT / "configs" / "debug.yaml"))
    assert debug.data.train_limit and debug.tracker == "none"


def test_overrides_are_typed_and_nested():
    c = load_config(None, ["train.epochs=3", "train.lr_max=0.02", "data.name=../x", "data.train_limit=100",
                           "model.dim=64", "seed=7", "tracker=none", "output_dir=runs/a", "train.clip_norm=1"])
    assert c.train.epochs == 3 and c.train.lr_max == 0.02 and c.train.clip_norm == 1.0
    assert c.data.name == "../x" and c.data.train_limit == 100 and c.model.dim == 64 and c.seed == 7


@pytest.mark.parametrize("override,message", [
    (["train.epoch=3"], "Unknown setting 'train.epoch'. Did you mean train.epochs"),
    (["train.epochs=three"], "'train.epochs' must be an integer"),
    (["model.patch_size=3"], "does not divide the 32x32 image"),
    (["train.epochs=0"], "train.epochs must be at least 1"),
    (["train.mixed_precision=fp8"], "mixed_precision must be no, fp16, bf16"),
    (["epochs"], "overrides are section.key=value"),
    (["explain.select=worst"], "explain.select must be"),
])
def test_bad_settings_are_explained(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(None, override)


def test_batch_smaller_than_processes():
    c = load_config(None, ["train.batch_size=1"])
    with pytest.raises(ConfigError, match="at least the number of processes"):
        validate(c, num_processes=2)


def test_bad_key_in_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="in .*bad.yaml"):
        load_config(str(bad))


def test_every_setting_has_a_default():
    for section in dataclasses.fields(Config):
        assert section.default is not dataclasses.MISSING or section.default_factory is not dataclasses.MISSING


def test_no_stays_a_string_on_the_command_line_and_yaml_booleans_get_a_hint(tmp_path):
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="yes/no/on/off"):
        (tmp_path / "c.yaml").write_text("train:\n  mixed_precision: no\n")
        load_config(str(tmp_path / "c.yaml"))
    with pytest.raises(ConfigError, match="true or false"):
        load_config(None, ["train.channels_last=yes"])


def test_compile_choices_and_the_cpu_kernels_they_turn_off():
    with pytest.raises(ConfigError, match="train.compile must be no, blocks, model or null"):
        load_config(None, ["train.compile=true"])
    eager = for_device(load_config().train, on_cpu=True)
    kernels = lambda train: (train.fast_depthwise_grad, train.fast_pointwise_grad, train.fused_gelu_norm)
    assert (eager.compile, kernels(eager)) == ("no", (True, True, True))
    compiled = for_device(load_config(None, ["train.compile=blocks"]).train, on_cpu=True)
    assert (compiled.compile, kernels(compiled)) == ("blocks", (False, False, False))


def test_seeds_are_what_torch_keeps_of_them():
    """torch's CPU generator keeps 32 bits of a seed: 5 and 5 + 2**32 would be the same run."""
    validate(load_config(None, [f"seed={2**32 - 1}"]))
    with pytest.raises(ConfigError, match=r"seed must be in 0 \.\. 2\*\*32 - 1, got 4294967296"):
        validate(load_config(None, [f"seed={2**32}"]))


def test_sync_batchnorm_is_for_gpus():
    """PyTorch's SyncBatchNorm refuses CPU modules once DDP wraps them, after the data is loaded: say so at once."""
    with pytest.raises(ConfigError, match="train.sync_batchnorm=true needs GPUs"):
        for_device(TrainConfig(sync_batchnorm=True), on_cpu=True)
    assert for_device(TrainConfig(sync_batchnorm=True, mixed_precision="bf16"), on_cpu=False).sync_batchnorm
    # with passes, processes of unequal shares would make unequal numbers of passes: SyncBatchNorm would hang
    with pytest.raises(ConfigError, match="train.sync_batchnorm needs train.micro_batch_size=null"):
        validate(load_config(None, ["train.sync_batchnorm=true", "train.micro_batch_size=64"]))
