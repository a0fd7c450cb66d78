"""The Feast objects for the ``feast`` CLI: the same ones ``funnelflow features apply`` registers.

The pipeline never imports this file: it builds its objects with ``features.store.feast_objects``
from explicit folders. The CLI imports it after parsing feature_store.yaml, so the tables' folder
comes from there (``offline_store.tables``), and the feature service's name from params.yaml.
"""
from pathlib import Path

from feast.repo_config import load_repo_config

from features.contract import MissingInput
from features.store import feast_objects
from features.views import VIEWS
from flows.params import load_params

_REPO = Path(__file__).resolve().parent
_TABLES = Path(load_repo_config(_REPO, _REPO / "feature_store.yaml").offline_store.tables)
try:
    _OBJECTS = feast_objects(_TABLES, load_params().features.feature_service, VIEWS)
except MissingInput as exc:  # one line for the CLI, as for a missing FUNNELFLOW_DATA_DIR
    raise SystemExit(str(exc)) from None

# The CLI collects the Feast objects it finds among this module's attributes.
globals().update({obj.name: obj for obj in _OBJECTS})
