"""ReviewKD (Chen et al., CVPR 2021) checked on numbers: HCL on maps whose pooled pyramids are known by hand and
against the reference's formula in float64, the attention-based fusion with hand-set weights, the warm-up ramp,
the per-pair weights of the official script, the levels a shape probe gives (the reference's hand-written lists
for its pairs), the refusals, and the loss terms of a training step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from helpers.methods import batch_of, refuses
from oracle_kd.cli import compose
from oracle_kd.config import CONF_DIR
from oracle_kd.engine.teacher import identify
from oracle_kd.errors import ConfigError
from oracle_kd.methods import build_distiller
from oracle_kd.methods.reviewkd import ABF, ReviewKDConfig, hcl, hcl_loss, resize, student_maps, teacher_maps
from oracle_kd.models import available_models, build_model


def checkerboard(size: int) -> torch.Tensor:
    """(1, 1, size, size) of ±1, +1 at (0, 0): every 2×2 block (hence every coarser block) averages to 0."""
    i = torch.arange(size, dtype=torch.float64)
    return (1 - 2 * ((i[:, None] + i[None, :]) % 2)).view(1, 1, size, size)


# ------------------------------------------------------------------------------------------------ HCL

@pytest.mark.parametrize("size,total", [(16, 1 + 1 / 2 + 1 / 4 + 1 / 8),  # pools 4, 2, 1
                                        (8, 1 + 1 / 2 + 1 / 4 + 1 / 8),   # pools 4, 2, 1
                                        (4, 1 + 1 / 2 + 1 / 4),           # pool 4 is not coarser than 4x4
                                        (2, 1 + 1 / 2)])                  # only the 1x1 pool
def test_hcl_of_a_checkerboard_on_an_offset(size: int, total: float) -> None:
    """Student 0, teacher c + checkerboard: the full MSE is mean((c ± 1)²) = c² + 1 and every pool is exactly c,
    MSE c². HCL = (c² + 1 + (total − 1)·c²) / total = c² + 1/total."""
    c = 2.0
    teacher = c + checkerboard(size)
    got = hcl(torch.zeros_like(teacher), teacher)
    assert got.item() == pytest.approx(c * c + 1 / total, rel=1e-12)


def test_hcl_of_a_one_by_one_map_is_its_mse() -> None:
    s, t = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1), torch.tensor([4.0, 2.0]).view(1, 2, 1, 1)
    assert hcl(s, t).item() == pytest.approx((9 + 16) / 2)


def test_hcl_weighs_each_pool_level_by_hand() -> None:
    """A 4x4 teacher of 2x2 blocks 1, 3, 5, 7 plus a checkerboard, student 0: full MSE = (1+9+25+49)/4 + 1 = 22,
    the 2x2 pool gives the blocks (MSE 21), the 1x1 pool their mean 4 (MSE 16), the 4x4 pool is skipped:
    HCL = (22 + 21/2 + 16/4) / (1 + 1/2 + 1/4) = 36.5 / 1.75."""
    blocks = torch.tensor([[1.0, 3.0], [5.0, 7.0]], dtype=torch.float64)
    teacher = blocks.repeat_interleave(2, 0).repeat_interleave(2, 1).view(1, 1, 4, 4) + checkerboard(4)
    assert hcl(torch.zeros_like(teacher), teacher).item() == pytest.approx(36.5 / 1.75, rel=1e-12)


def reference_hcl(fstudent: list[torch.Tensor], fteacher: list[torch.Tensor]) -> torch.Tensor:
    """The reference's hcl written out (square maps): a pool level is skipped when l >= h, the weight halves at
    each level used, the sum is divided by the weights' total, levels summed."""
    out = torch.zeros((), dtype=torch.float64)
    for fs, ft in zip(fstudent, fteacher):
        h = fs.shape[2]
        loss, cnt, tot = ((fs - ft) ** 2).mean(), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= h:
                continue
            cnt /= 2.0
            ps = torch.stack([torch.stack([fs[:, :, (i * h) // size:-(-(i + 1) * h // size),
                                              (j * h) // size:-(-(j + 1) * h // size)].mean(dim=(2, 3))
                                           for j in range(size)], -1) for i in range(size)], -2)
            pt = torch.stack([torch.stack([ft[:, :, (i * h) // size:-(-(i + 1) * h // size),
                                              (j * h) // size:-(-(j + 1) * h // size)].mean(dim=(2, 3))
                                           for j in range(size)], -1) for i in range(size)], -2)
            loss = loss + ((ps - pt) ** 2).mean() * cnt
            tot += cnt
        out = out + loss / tot
    return out


def test_hcl_loss_is_the_references_sum_over_levels_in_float64() -> None:
    """Random maps of sizes 1 to 16 (5 and 3: adaptive pools with overlapping windows), float64, pools written out
    as explicit window means rather than adaptive_avg_pool2d."""
    torch.manual_seed(0)
    shapes = [(3, 4, 16, 16), (3, 5, 8, 8), (3, 2, 5, 5), (3, 6, 4, 4), (3, 3, 3, 3), (3, 2, 2, 2), (3, 7, 1, 1)]
    s = [torch.randn(shape, dtype=torch.float64) for shape in shapes]
    t = [torch.randn(shape, dtype=torch.float64) for shape in shapes]
    torch.testing.assert_close(hcl_loss(s, t), reference_hcl(s, t), rtol=1e-12, atol=0)


def test_hcl_loss_is_fp32_for_bf16_maps() -> None:
    s, t = torch.randn(2, 3, 4, 4).bfloat16(), torch.randn(2, 3, 4, 4).bfloat16()
    assert hcl_loss([s], [t]).dtype == torch.float32


# ------------------------------------------------------------------------------------------------ resizing, ABF

def test_resize_pools_to_shrink_and_repeats_to_enlarge() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert resize(x, (4, 4)) is x
    torch.testing.assert_close(resize(x, (2, 2)), torch.tensor([[2.5, 4.5], [10.5, 12.5]]).view(1, 1, 2, 2))
    small = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    torch.testing.assert_close(resize(small, (4, 4)), small.repeat_interleave(2, 2).repeat_interleave(2, 3))
    # (4, 2) -> (2, 4): rows averaged in pairs, then each column repeated
    tall = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]).view(1, 1, 4, 2)
    torch.testing.assert_close(resize(tall, (2, 4)), torch.tensor([[2.0, 2, 3, 3], [6, 6, 7, 7]]).view(1, 1, 2, 4))


def hand_set_abf(att_bias: tuple[float, float] | None) -> ABF:
    """ABF 2 -> mid 2 -> 3 in float64, eval mode (BN at its initial statistics: x / sqrt(1 + eps)): the 1x1
    reduction is the identity, the attention conv reads nothing (zero weights) and its bias sets the two maps."""
    abf = ABF(2, 2, 3, fuse=att_bias is not None).double().eval()
    with torch.no_grad():
        abf.reduce[0].weight.copy_(torch.eye(2, dtype=torch.float64).view(2, 2, 1, 1))
        if att_bias is not None:
            abf.attention[0].weight.zero_()
            abf.attention[0].bias.copy_(torch.tensor(att_bias, dtype=torch.float64))
    return abf


@pytest.mark.parametrize("att_bias,mix", [((40.0, -40.0), (1.0, 0.0)),  # sigmoid(±40) is 1 or 4e-18
                                          ((-40.0, 40.0), (0.0, 1.0)),
                                          ((0.0, 0.0), (0.5, 0.5))])
def test_abf_mixes_the_student_and_the_residual_by_its_attention(att_bias, mix) -> None:
    """Student map 2x2, residual from the deeper level 1x1 (enlarged to 2x2 by repetition), teacher size 4x4:
    the fused map is a·x + b·residual, then repeated to 4x4; the output is the 3x3 conv + BN of that."""
    abf = hand_set_abf(att_bias)
    k = 1 / math.sqrt(1 + abf.reduce[1].eps)  # an eval-mode BN at mean 0, variance 1
    torch.manual_seed(0)
    x, residual = torch.randn(2, 2, 2, 2, dtype=torch.float64), torch.randn(2, 2, 1, 1, dtype=torch.float64)
    out, fused = abf(x, residual, (4, 4))
    a, b = mix
    want = (a * k * x + b * residual.expand(-1, -1, 2, 2)).repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(fused, want)  # float64: sigmoid(-40) = 4e-18 is far below its tolerance
    torch.testing.assert_close(out, k * F.conv2d(want, abf.project[0].weight, padding=1))
    assert out.shape == (2, 3, 4, 4)


def test_a_fused_map_larger_than_the_teachers_is_averaged_down_not_subsampled() -> None:
    """A 4x4 student level under a 2x2 teacher level (a ResNet student under a VGG teacher): each output position
    is the mean of its 2x2 block (nearest interpolation, the reference's, would keep one of the four)."""
    abf = hand_set_abf((40.0, -40.0))  # the student's map alone
    k = 1 / math.sqrt(1 + abf.reduce[1].eps)
    x = torch.arange(32, dtype=torch.float64).view(1, 2, 4, 4)
    _, fused = abf(x, torch.zeros(1, 2, 1, 1, dtype=torch.float64), (2, 2))
    blocks = k * x.view(1, 2, 2, 2, 2, 2).mean(dim=(3, 5))  # (row block, row, col block, col) -> block means
    torch.testing.assert_close(fused, blocks)
    assert fused[0, 0, 0, 0].item() == pytest.approx(k * (0 + 1 + 4 + 5) / 4)


def test_the_deepest_abf_has_no_attention_and_only_reduces_resizes_and_projects() -> None:
    abf = hand_set_abf(None)
    assert abf.attention is None
    k = 1 / math.sqrt(1 + abf.reduce[1].eps)
    x = torch.randn(2, 2, 1, 1, dtype=torch.float64)
    out, fused = abf(x, None, (1, 1))
    torch.testing.assert_close(fused, k * x)
    torch.testing.assert_close(out, k * F.conv2d(k * x, abf.project[0].weight, padding=1))  # the 3x3's centre tap


# ------------------------------------------------------------------------------------------------ config

def tiny_distiller(cfg: ReviewKDConfig | None = None, teacher: str = "resnet14", student: str = "resnet8",
                   size: int = 16, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    t = build_model(teacher, 10, 3, image_size=size).to(dtype)
    s = build_model(student, 10, 3, image_size=size).to(dtype)
    return build_distiller(cfg or ReviewKDConfig(), s, t, (3, size, size))


@pytest.mark.parametrize("warmup,epoch,factor", [(20, 1, 0.05), (20, 10, 0.5), (20, 20, 1.0), (20, 21, 1.0),
                                                 (20, 240, 1.0), (0, 1, 1.0), (1, 1, 1.0)])
def test_the_warmup_factor_is_min_epoch_over_warmup_and_one(warmup: int, epoch: int, factor: float) -> None:
    d = tiny_distiller(ReviewKDConfig(warmup=warmup))
    assert d.warmup_factor(epoch) == pytest.approx(factor)


# The official CIFAR-100 script (dvlab-research/ReviewKD, CIFAR-100/script/reviewKD.sh), its student names -> ours
OFFICIAL = {"resnet56-resnet20": 0.6, "resnet110-resnet32": 1.0, "resnet32x4-resnet8x4": 5.0,
            "wrn_40_2-wrn_16_2": 5.0, "wrn_40_2-wrn_40_1": 5.0, "wrn_40_2-shufflenetv1": 5.0,
            "resnet32x4-shufflenetv1": 5.0, "resnet32x4-shufflenetv2": 8.0}


def test_the_preset_table_is_the_official_script_over_the_benchmark_pairs() -> None:
    table = OmegaConf.load(CONF_DIR / "method" / "reviewkd_crd.yaml").weight_by_pair
    assert dict(table) == OFFICIAL
    pairs = {f"{p.teacher.arch}-{p.student.arch}" for p in map(OmegaConf.load, (CONF_DIR / "pair").glob("*.yaml"))}
    assert all(arch in available_models() for key in table for arch in key.split("-"))
    assert set(table) <= pairs
    # not in the script: three pairs of the DKD table, and the pairs only the CRD and LSKD tables add
    assert pairs - set(table) == {"vgg13-vgg8", "vgg13-mobilenetv2", "resnet50c-mobilenetv2", "resnet110-resnet20",
                                  "resnet50c-vgg8", "resnet32x4-wrn_16_2", "resnet32x4-wrn_40_2", "wrn_40_2-resnet8x4",
                                  "wrn_40_2-mobilenetv2"}


def test_a_pair_weight_resolves_and_leaves_the_identity_of_the_plain_weight() -> None:
    cfg = ReviewKDConfig(weight_by_pair=dict(OFFICIAL))
    assert cfg.for_pair("resnet56", "resnet20") == ReviewKDConfig(weight=0.6)  # table dropped: None
    assert cfg.for_pair("resnet32x4", "shufflenetv2").weight == 8.0
    assert cfg.for_pair("vgg13", "vgg8") == ReviewKDConfig()  # not listed: weight 5
    assert ReviewKDConfig().weight_by_pair is None and ReviewKDConfig().for_pair("a", "b") == ReviewKDConfig()
    via_table = compose(["method=reviewkd_crd", "+pair=res56_res20"])
    direct = compose(["method=reviewkd", "+pair=res56_res20", "method.weight=0.6"])
    assert via_table.method == direct.method and identify(via_table)[1] == identify(direct)[1]
    assert identify(compose(["method=reviewkd", "+pair=res56_res20"]))[1] != identify(direct)[1]


@pytest.mark.parametrize("field,value", [("weight", -1.0), ("warmup", -1), ("max_mid_channels", 0),
                                         ("weight_by_pair", {"resnet56-resnet20": -0.6})])
def test_bad_options_are_one_line_config_errors(field: str, value) -> None:
    with pytest.raises(ConfigError, match=f"method.{field}") as info:
        ReviewKDConfig(**{field: value}).validate()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ levels from a probe

# (teacher, student): the student's and teacher's channels shallow to deep and sizes deepest first, as the
# reference lists them (mdistiller's cfg.py for resnet32x4 -> resnet8x4; the others: the official
# build_review_kd's lists for that student and teacher), and the mid width min(512, deepest student width)
LEVELS = {
    ("resnet32x4", "resnet8x4"): ([64, 128, 256, 256], [64, 128, 256, 256], [1, 8, 16, 32], [1, 8, 16, 32], 256),
    ("resnet56", "resnet20"): ([16, 32, 64, 64], [16, 32, 64, 64], [1, 8, 16, 32], [1, 8, 16, 32], 64),
    ("wrn_40_2", "wrn_16_2"): ([32, 64, 128, 128], [32, 64, 128, 128], [1, 8, 16, 32], [1, 8, 16, 32], 128),
    ("wrn_40_2", "shufflenetv1"): ([240, 480, 960, 960], [32, 64, 128, 128], [1, 4, 8, 16], [1, 8, 16, 32], 512),
    ("resnet32x4", "shufflenetv2"): ([116, 232, 464, 1024], [64, 128, 256, 256], [1, 4, 8, 16], [1, 8, 16, 32],
                                     512),
    ("vgg13", "mobilenetv2"): ([12, 16, 48, 160, 1280], [128, 256, 512, 512, 512], [1, 2, 4, 8, 16],
                               [1, 4, 4, 8, 16], 512),
    # deepest levels pair up: vgg8's shallowest stage is left out under a 4-level teacher ...
    ("resnet32x4", "vgg8"): ([256, 512, 512, 512], [64, 128, 256, 256], [1, 4, 4, 8], [1, 8, 16, 32], 512),
    # ... and a 5-level teacher's shallowest under a 4-level student
    ("vgg13", "resnet8x4"): ([64, 128, 256, 256], [256, 512, 512, 512], [1, 8, 16, 32], [1, 4, 4, 8], 256),
}


@pytest.mark.parametrize("teacher,student", sorted(LEVELS))
def test_the_levels_come_from_a_shape_probe(teacher: str, student: str) -> None:
    in_ch, out_ch, shapes, out_shapes, mid = LEVELS[teacher, student]
    d = tiny_distiller(teacher=teacher, student=student, size=32)
    assert [lv.in_channels for lv in d.levels] == in_ch and [lv.out_channels for lv in d.levels] == out_ch
    assert [lv.in_size for lv in d.levels][::-1] == [(s, s) for s in shapes]
    assert [lv.out_size for lv in d.levels][::-1] == [(s, s) for s in out_shapes]
    assert all(abf.reduce[0].out_channels == mid for abf in d.abfs)
    assert [abf.attention is not None for abf in d.abfs] == [True] * (len(in_ch) - 1) + [False]


def test_a_teacher_without_pre_relu_maps_gives_its_stage_outputs() -> None:
    """MobileNetV2 as teacher: its stages after the stem and its pooled feature (1280 wide)."""
    d = tiny_distiller(teacher="mobilenetv2", student="resnet8", size=32)
    assert [lv.out_channels for lv in d.levels] == [16, 48, 160, 1280]
    assert [lv.out_size for lv in d.levels] == [(8, 8), (4, 4), (2, 2), (1, 1)]


# ------------------------------------------------------------------------------------------------ refusals

@pytest.mark.parametrize("teacher,student,side", [("resnet8", "mlp16", "student MLP"), ("mlp64", "resnet8",
                                                                                       "teacher MLP")])
def test_a_model_without_spatial_maps_is_refused_in_one_line(teacher: str, student: str, side: str) -> None:
    assert refuses("reviewkd", teacher, student)
    t, s = build_model(teacher, 10, 1, image_size=8), build_model(student, 10, 1, image_size=8)
    with pytest.raises(ConfigError, match=f"^method=reviewkd: {side} has no spatial stage maps") as info:
        build_distiller(ReviewKDConfig(), s, t, (1, 8, 8))
    assert "\n" not in str(info.value)


def test_student_preact_on_a_student_without_pre_relu_maps_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="^method=reviewkd: student MobileNetV2 has no pre-ReLU") as info:
        tiny_distiller(ReviewKDConfig(student_preact=True), student="mobilenetv2")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ a training step

def test_forward_train_returns_ce_and_the_weighted_warmed_up_review_term() -> None:
    """float64 throughout. The review term is re-derived with the reference's loop (the fusion modules taken
    deepest first, each output inserted at the front) and its HCL written out; the warm-up scales it linearly."""
    d = tiny_distiller(ReviewKDConfig(weight=3.0), dtype=torch.float64).train()
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (4,))
    logits, losses = d.forward_train(batch_of(x, y), 20)
    assert set(losses) == {"ce", "reviewkd"}
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-12)

    with torch.no_grad():
        _, s_feats = d.student(x)
        _, t_feats = d.teacher(x)
        s = (s_feats.stages[1:] + [s_feats.pooled[:, :, None, None]])[::-1]
        t = t_feats.preact + [t_feats.pooled[:, :, None, None]]
        abfs = list(d.abfs)[::-1]
        results = []
        out, res = abfs[0](s[0], None, d.levels[-1].out_size)
        results.append(out)
        for feat, abf, level in zip(s[1:], abfs[1:], d.levels[::-1][1:]):
            out, res = abf(feat, res, level.out_size)
            results.insert(0, out)
        assert [r.shape for r in results] == [m.shape for m in t]
        want = 3.0 * reference_hcl(results, t)
    assert losses["reviewkd"].item() == pytest.approx(want.item(), rel=1e-10)
    half = d.forward_train(batch_of(x, y), 10)[1]["reviewkd"]  # train-mode BN: the same batch, the same maps
    assert half.item() == pytest.approx(want.item() / 2, rel=1e-10)

    sum(losses.values()).backward()
    assert all(p.grad is not None for p in d.abfs.parameters())
    assert all(p.grad is None for p in d.teacher.parameters())


def test_the_maps_used_are_the_students_stages_and_the_teachers_pre_relu_maps() -> None:
    d = tiny_distiller()
    _, s_feats = d.student(torch.randn(2, 3, 16, 16))
    _, t_feats = d.teacher(torch.randn(2, 3, 16, 16))
    assert all(a is b for a, b in zip(student_maps(s_feats, False), s_feats.stages[1:]))
    assert all(a is b for a, b in zip(student_maps(s_feats, True), s_feats.preact))
    assert all(a is b for a, b in zip(teacher_maps(t_feats), t_feats.preact))
    assert torch.equal(teacher_maps(t_feats)[-1].flatten(1), t_feats.pooled)


def test_a_student_with_more_levels_than_its_teacher_trains_on_the_deepest() -> None:
    """vgg8 (5 levels) under resnet14 (4) at 16 px: its shallowest stage gets no fusion module and no gradient
    from the review term."""
    d = tiny_distiller(teacher="resnet14", student="vgg8").train()
    assert len(d.levels) == 4 and d.levels[0].in_channels == 256
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    _, losses = d.forward_train(batch_of(x, y), 20)
    assert torch.isfinite(losses["reviewkd"]) and losses["reviewkd"] > 0
    losses["reviewkd"].backward()
    assert all(p.grad is not None for p in d.abfs.parameters())

