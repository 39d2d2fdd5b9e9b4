"""KED's MLP version on numbers: a branch sees only its own input superfeature, the width is matched to the
plain MLP's parameters, the partition travels with the weights, the closed-form input Hessian of our MLPs
equals autograd's, and an explaining teacher's branches give a chimeric sample exactly its donors' outputs."""

from __future__ import annotations

import pytest
import torch

from oracle_kd.core.superfeatures import chimeric_images, input_hessian, relu_input_hessian
from oracle_kd.data import ImageSet
from oracle_kd.models import build_model
from oracle_kd.models.sfx import combine_branches

PARTITION = [[0, 5, 9, 63], list(range(10, 30)), [1, 2, 3, 4, 6, 7, 8], list(range(30, 63))]


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _sfx(width: int = 16, prior: list[float] | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(f"sfx4_mlp{width}", 10, 1, image_size=8,
                       superfeatures={"partition": PARTITION, "log_prior": prior}).eval()


def test_each_branch_sees_only_its_superfeature():
    model = _sfx()
    x = torch.randn(3, 1, 8, 8)
    _, f = model(x)
    for i, group in enumerate(PARTITION):
        other = torch.ones(64, dtype=torch.bool)
        other[group] = False
        y = x.flatten(1).clone()
        y[:, other] += torch.randn(3, int(other.sum()))  # change every feature outside S_i
        _, g = model(y.view(3, 1, 8, 8))
        torch.testing.assert_close(g.branch_logits[i], f.branch_logits[i])
        assert not torch.allclose(g.branch_logits[(i + 1) % 4], f.branch_logits[(i + 1) % 4])


def test_the_prediction_combines_the_branches_over_the_prior():
    prior = torch.softmax(torch.randn(10, generator=torch.Generator().manual_seed(1)), dim=0)
    model = _sfx(prior=prior.log().tolist())
    z, f = model(torch.randn(2, 1, 8, 8))
    torch.testing.assert_close(z, combine_branches(f.branch_logits, prior.log()))
    product = torch.stack([torch.softmax(b, dim=1) for b in f.branch_logits]).prod(dim=0) / prior ** 3
    torch.testing.assert_close(torch.softmax(z, dim=1), product / product.sum(dim=1, keepdim=True))


@pytest.mark.parametrize("width", [16, 256])
def test_the_branch_width_matches_the_plain_mlp(width):
    model, plain = _sfx(width), build_model(f"mlp{width}", 10, 1, image_size=8)
    gap = abs(_params(model) - _params(plain))
    for w in (model.branch_width - 1, model.branch_width + 1):
        other = build_model(f"sfx4_mlp{width}", 10, 1, image_size=8, branch_width=w,
                            superfeatures={"partition": PARTITION})
        assert abs(_params(other) - _params(plain)) >= gap


def test_a_checkpoint_carries_its_partition_and_prior():
    model = _sfx(prior=[-2.0] * 10)
    state = model.state_dict()
    assert {"order", "log_prior"} <= set(state)
    same_sizes = [PARTITION[0][::-1][:1] + PARTITION[0][1:3] + [PARTITION[0][0]], *PARTITION[1:]]
    fresh = build_model("sfx4_mlp16", 10, 1, image_size=8, superfeatures={"partition": same_sizes})
    fresh.load_state_dict(state)
    assert fresh.partition() == model.partition() == PARTITION
    torch.testing.assert_close(fresh.log_prior, torch.full((10,), -2.0))


def test_the_closed_form_hessian_of_our_mlp_equals_autograd():
    torch.manual_seed(0)
    model = build_model("mlp32", 10, 1, image_size=8).double().eval()
    x = torch.randn(6, 64, dtype=torch.float64)
    def f(v: torch.Tensor) -> torch.Tensor:
        return model(v.view(-1, 1, 8, 8))[0]
    torch.testing.assert_close(relu_input_hessian(f, x), input_hessian(f, x), rtol=1e-9, atol=1e-11)


def test_a_chimeric_sample_gets_its_donors_branch_outputs():
    g = torch.Generator().manual_seed(0)
    train = ImageSet(torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8, generator=g), torch.zeros(12, dtype=torch.long))
    made = {"superfeatures": {"partition": PARTITION}}  # the run's artefacts, as the chimeric phase reads them
    images = chimeric_images(train.images, made, 3, size=20)
    assert images.shape == (20, 1, 8, 8) and images.dtype == torch.uint8
    model = _sfx()
    real = train.images.flatten(1).float()
    synth = images.flatten(1).float()
    _, f_real = model(real.view(-1, 1, 8, 8))
    _, f_synth = model(synth.view(-1, 1, 8, 8))
    for k in range(20):  # find each group's donor: the real sample whose features S_i match
        for i, group in enumerate(PARTITION):
            donor = next(n for n in range(12) if torch.equal(real[n, group], synth[k, group]))
            torch.testing.assert_close(f_synth.branch_logits[i][k], f_real.branch_logits[i][donor])
    assert torch.equal(chimeric_images(train.images, made, 3, size=20), images)  # drawn by the seed
