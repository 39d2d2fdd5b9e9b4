"""What a run needs beyond its teacher is declared by the component that needs it (`core.needs`): KED's MLPs over
input superfeatures declare the superfeatures artefact, a chimeric phase declares itself and (by default) the
artefact it assembles samples from; the engine merges the declarations and knows no KED word."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.tiny_run import TINY_RUN
from oracle_kd.cli import compose
from oracle_kd.config import TrainConfig
from oracle_kd.core.needs import RunView, run_needs
from oracle_kd.core.superfeatures import SAMPLES
from oracle_kd.engine.cohort import stream_key
from oracle_kd.engine.teacher import artefact_source_config, identify, needs
from oracle_kd.errors import ConfigError

ENGINE = Path(__file__).resolve().parents[2] / "oracle_kd" / "engine"
CHIMERIC = TrainConfig(chimeric_epochs=2, chimeric_size=50, chimeric_lr=0.01)


def test_a_plain_run_needs_nothing():
    assert run_needs(RunView("resnet20", "resnet56", TrainConfig())) == run_needs(RunView("mlp16", None, TrainConfig()))
    assert not run_needs(RunView("resnet20", "resnet56", TrainConfig())).artefacts


def test_an_mlp_over_input_superfeatures_needs_them_with_its_own_groups():
    for view in (RunView("sfx4_mlp16", "sfx4_mlp64", TrainConfig()), RunView("sfx4_mlp64", None, TrainConfig())):
        (art,) = run_needs(view).artefacts
        assert art.name == "superfeatures" and dict(art.identity) == {"groups": 4, "samples": SAMPLES}
        assert not run_needs(view).phases


def test_a_chimeric_phase_declares_itself_and_the_superfeatures_it_assembles_from():
    got = run_needs(RunView("resnet8", "resnet8", CHIMERIC))
    (phase,) = got.phases
    assert (phase.name, phase.epochs, phase.lr, dict(phase.stream)) == ("chimeric", 2, 0.01, {"chimeric_size": 50})
    (art,) = got.artefacts
    assert art.default and dict(art.identity) == {"groups": 4, "samples": SAMPLES}
    merged = run_needs(RunView("sfx4_mlp16", "sfx4_mlp64", CHIMERIC)).artefacts  # the models' declaration wins
    assert len(merged) == 1 and not merged[0].default


def test_models_that_disagree_on_their_groups_are_refused():
    from oracle_kd.models import mlp

    mlp.INPUT_SUPERFEATURES["sfx8_fake"] = 8  # a model of another M, registered for this test only
    try:
        with pytest.raises(ConfigError, match="different superfeature counts"):
            run_needs(RunView("sfx4_mlp16", "sfx8_fake", TrainConfig()))
    finally:
        del mlp.INPUT_SUPERFEATURES["sfx8_fake"]


def test_an_artefact_enters_the_run_identity_and_stream_as_it_always_did(tmp_path):
    """{"superfeatures": {"source": <run_id of the ordinary teacher>, "groups": M, "samples": 1000}}: the shape
    the stored runs were hashed with, so their run_ids stand."""
    rc = compose([*TINY_RUN, "teacher=sfx4_mlp64", "student=sfx4_mlp16", "method=ked", "train=mlp_digits",
                  f"store={tmp_path}"])
    semantic, _, _ = identify(rc)
    source = artefact_source_config(rc)
    assert (source.student.arch, source.method.name) == ("mlp64", "ce")
    assert semantic["superfeatures"] == {"source": identify(source)[1], "groups": 4, "samples": SAMPLES}
    assert [a.name for a in needs(rc).artefacts] == ["superfeatures"]
    other = compose([*TINY_RUN, "teacher=sfx4_mlp64", "student=sfx4_mlp16", "method=ked", "train=mlp_digits",
                     f"store={tmp_path}", "train.chimeric_epochs=1", "train.chimeric_size=40"])
    assert stream_key(other) != stream_key(rc)  # the phase's samples are part of the stream


def test_the_engine_names_no_method_specific_need():
    text = "".join(p.read_text().lower() for p in ENGINE.glob("*.py"))
    assert "chimeric" not in text and "superfeature" not in text
