"""What a run needs beyond its teacher, declared by the models and methods that need it, so the engine can
provide it without knowing why: artefacts computed once from a prerequisite run and kept in the store, and
training phases after the main epochs, with their own data, labels and learning rate.

A provider (a function of the run) is registered by the component that owns the need: a model over input
features that come from another network, a method with a phase of its own. The engine merges what every
provider declares for a run (`run_needs`), makes each artefact once, and trains the phases in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from oracle_kd.errors import ConfigError

# (model, sample) → the artefact's JSON-able value; sample(indices) gives those training images, normalised,
# on the device, and `count` is the training split's size
Compute = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Artefact:
    """Something computed once from a finished prerequisite run and kept at
    `<store>/<dataset>/<name>/<hash of identity>/<name>.json`. The prerequisite is the plain counterpart of the
    run's teacher (of its student when it has none), trained as an auto teacher on the whole training split;
    `identity` (plus that run's id, under `source`) is what the value is a function of, and enters the run's
    identity under `name`. A model option called `name` is filled with the value. `default`: yields to an
    artefact of the same name that a provider declares without it."""

    name: str
    identity: tuple[tuple[str, Any], ...]
    compute: Compute = field(compare=False)
    default: bool = False


@dataclass(frozen=True)
class Phase:
    """Epochs after the main ones over samples made from the training images (`make(images, artefacts, seed)`
    → uint8 images), labelled by the teacher's prediction on them; `lr` 0 goes on at the schedule's last rate.
    `stream` is what the phase adds to the batch stream's identity (runs share a stream only if it agrees)."""

    name: str
    epochs: int
    lr: float
    make: Callable[[torch.Tensor, dict[str, Any], int], torch.Tensor] = field(compare=False)
    stream: tuple[tuple[str, Any], ...] = ()


@dataclass
class Needs:
    artefacts: list[Artefact] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)


@dataclass(frozen=True)
class RunView:
    """What a provider may read of a run: its models (teacher None when its method has none) and its recipe."""

    student: str
    teacher: str | None
    train: Any


Provider = Callable[[RunView], Needs]
_PROVIDERS: list[Provider] = []


def register_needs(provider: Provider) -> Provider:
    _PROVIDERS.append(provider)
    return provider


def run_needs(view: RunView) -> Needs:
    """Every provider's needs for a run, merged: one artefact per name (a `default` one yields), phases in order."""
    artefacts: dict[str, Artefact] = {}
    phases: list[Phase] = []
    for provider in _PROVIDERS:
        needs = provider(view)
        phases.extend(needs.phases)
        for art in needs.artefacts:
            have = artefacts.get(art.name)
            if have is None or (have.default and not art.default):
                artefacts[art.name] = art
            elif not art.default and have.identity != art.identity:
                raise ConfigError(f"the run's models and method need different {art.name}: {dict(have.identity)} "
                                  f"and {dict(art.identity)}")
    return Needs(sorted(artefacts.values(), key=lambda a: a.name), phases)

