"""What the repository needs to know about ensembles before and after they load.

Kept apart from :mod:`tritium.repository.manager` so the manager only calls in:
which models an ensemble config needs (read before its load, to load them
first), and which loaded ensembles use a model (to take them down with it).
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import json_format

from tritium._proto import model_config_pb2 as mc
from tritium.config.ensemble import composing_models, is_ensemble
from tritium.config.parse import read_model_config
from tritium.core.errors import TritiumError
from tritium.core.model import Model


def read_ensemble_config(model_dir: str, config_name: str, config_json: str | None) -> mc.ModelConfig | None:
    """The model's config when it is an ensemble, else ``None``.

    Best effort: a config that cannot be read is reported by the load itself, with its own message.
    """
    try:
        if config_json is not None:
            config = json_format.Parse(config_json, mc.ModelConfig(), ignore_unknown_fields=True)
        elif model_dir:
            config = read_model_config(model_dir, config_name, "")
        else:
            return None
    except (TritiumError, json_format.ParseError, OSError):
        return None
    return config if config is not None and is_ensemble(config) else None


def uses(model: Model, name: str) -> bool:
    """``model`` is an ensemble with a step calling ``name``."""
    return is_ensemble(model.config) and any(step == name for step, _ in composing_models(model.config))


def dependents_of(name: str, models: Iterable[Model]) -> list[str]:
    """Names of the serving ensembles (among ``models``) with a step calling ``name``."""
    return sorted({m.name for m in models if m.name != name and uses(m, name)})
