"""What a run with a chimeric phase needs (`train.chimeric_epochs` > 0, with KED or with a plain method such as
KD): the phase itself, over `train.chimeric_size` samples assembled from the input superfeatures and labelled by
the teacher, and so those superfeatures (M = 4 unless the run's models have their own M)."""

from __future__ import annotations

from oracle_kd.core.needs import Needs, RunView, register_needs
from oracle_kd.core.superfeatures import DEFAULT_GROUPS, chimeric_phase, superfeature_artefact


@register_needs
def chimeric(view: RunView) -> Needs:
    t = view.train
    if t.chimeric_epochs <= 0:
        return Needs()
    return Needs([superfeature_artefact(DEFAULT_GROUPS, default=True)],
                 [chimeric_phase(t.chimeric_epochs, t.chimeric_size, t.chimeric_lr)])
