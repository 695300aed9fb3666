import pytest
import torch
from torch import nn

from trainer import reference  # the reference's nn.Sequential, verbatim
from trainer.model import ConvMixer, from_reference_state_dict, model_cost


def test_reference_parameter_count():
    assert sum(p.numel() for p in ConvMixer().parameters()) == 594_186
    assert sum(p.numel() for p in reference.ConvMixer(256, 8).parameters()) == 594_186


def randomize_batchnorm(model):
    """Non-trivial running statistics, so that eval-mode parity also checks the BN buffers."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.weight.data.normal_()
            m.bias.data.normal_()


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("dim,depth,kernel,patch", [(256, 8, 5, 2), (32, 3, 3, 4)])
def test_same_logits_as_reference(prefix, dim, depth, kernel, patch):
    torch.manual_seed(0)
    theirs = reference.ConvMixer(dim, depth, kernel, patch)
    randomize_batchnorm(theirs)
    state = {prefix + k: v for k, v in theirs.state_dict().items()}
    ours = ConvMixer(dim, depth, kernel, patch)
    ours.load_state_dict(from_reference_state_dict(state))  # strict: every key maps
    images = torch.randn(4, 3, 32, 32)
    theirs.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(images), theirs(images), rtol=0, atol=0)


def test_reference_mapping_rejects_other_layouts():
    with pytest.raises(ValueError, match="no ConvMixer blocks"):
        from_reference_state_dict(ConvMixer(16, 1).state_dict())


def test_model_cost_table():
    cost = model_cost(ConvMixer())
    assert cost.parameters == 594_186
    # about 148 M multiply-adds per image for the convolutions; torchinfo also counts BN and the head
    assert 147e6 < cost.mult_adds < 151e6
    assert "MixerBlock" in cost.table and "594,186" in cost.table
    assert "Total mult-adds (M): 149.24" in cost.table  # not torchinfo's "(Units.MEGABYTES)" on Python 3.11+
