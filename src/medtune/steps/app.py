"""``medtune app``: serve the demo on the models of the MLflow Model Registry.

:class:`RegistryModels` is the page's model source: it lists every alias and version of the
``medtune-*`` registered models, loads them (a few kept in memory) and reads their model cards.
Nothing is written to the tracking store.
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from medtune.app.inference import LoadedModel
from medtune.errors import ConfigError

log = logging.getLogger(__name__)

PREFIX = "medtune-"
KEEP_LOADED = 4


class RegistryModels:
    """Models of the registry, addressed as ``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""

    def __init__(self, client: MlflowClient | None = None):
        self.client = client or MlflowClient()
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def choices(self) -> list[tuple[str, str]]:
        out = []
        for rm in sorted(self.client.search_registered_models(f"name LIKE '{PREFIX}%'"), key=lambda r: r.name):
            for alias, version in sorted((rm.aliases or {}).items()):
                out.append((f"{rm.name}@{alias} (v{version})", f"models:/{rm.name}@{alias}"))
            versions = self.client.search_model_versions(f"name = '{rm.name}'")
            for mv in sorted(versions, key=lambda v: -int(v.version)):
                out.append((f"{rm.name} v{mv.version}", f"models:/{rm.name}/{mv.version}"))
        return out

    def default_uris(self) -> tuple[str, str | None]:
        """The first model's @champion (else its latest version), and its @challenger when there is one."""
        names = sorted(rm.name for rm in self.client.search_registered_models(f"name LIKE '{PREFIX}%'"))
        if not names:
            raise ConfigError(
                f"no {PREFIX}* registered model in {self.client.tracking_uri}: train one first "
                "(`mlflow run . --env-manager local`), or pass --model"
            )
        rm = self.client.get_registered_model(names[0])
        aliases = rm.aliases or {}
        first = f"models:/{rm.name}@champion" if "champion" in aliases else self._latest(rm.name)
        return first, f"models:/{rm.name}@challenger" if "challenger" in aliases else None

    def counterpart(self, uri: str) -> str | None:
        """For ``...@champion`` the same model's ``@challenger`` (and back), when that alias is set."""
        name, _, alias = uri.partition("@")
        other = {"champion": "challenger", "challenger": "champion"}.get(alias)
        if other is None or other not in (self.client.get_registered_model(name[len("models:/") :]).aliases or {}):
            return None
        return f"{name}@{other}"

    def _latest(self, name: str) -> str:
        version = max(int(v.version) for v in self.client.search_model_versions(f"name = '{name}'"))
        return f"models:/{name}/{version}"

    def version_of(self, uri: str):
        """The registered version behind ``uri`` (aliases resolved now: they move)."""
        rest = uri[len("models:/") :] if uri.startswith("models:/") else ""
        name, sep, alias = rest.partition("@")
        if not rest or not name.startswith(PREFIX):
            raise ConfigError(
                f"model={uri}: expected models:/{PREFIX}<dataset>@<alias> or models:/{PREFIX}<dataset>/<version>"
            )
        try:
            if sep:
                return self.client.get_model_version_by_alias(name, alias)
            name, _, version = rest.rpartition("/")
            return self.client.get_model_version(name, version)
        except MlflowException as exc:
            raise ConfigError(f"model={uri}: not in the registry at {self.client.tracking_uri}") from exc

    def load(self, uri: str) -> LoadedModel:
        from medtune.serving import load_keras_from_uri

        mv = self.version_of(uri)
        key = f"{mv.name}/{mv.version}"
        alias = f" (@{uri.split('@', 1)[1]})" if "@" in uri else ""
        with self._lock:
            if key not in self._loaded:
                with tempfile.TemporaryDirectory() as tmp:
                    model, meta = load_keras_from_uri(f"models:/{key}", Path(tmp))
                self._loaded[key] = LoadedModel(f"models:/{key}", f"{mv.name} v{mv.version}", model, meta)
                while len(self._loaded) > KEEP_LOADED:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            loaded = self._loaded[key]
        return LoadedModel(uri, loaded.title + alias, loaded.model, loaded.metadata)

    def card(self, uri: str) -> str:
        from medtune.model_card import render_markdown
        from medtune.steps.model_card import load_card

        mv = self.version_of(uri)
        card = load_card(mv.run_id)
        if card is None:
            return (
                f"No model card was logged for {mv.name} v{mv.version} (trained before medtune wrote them).\n\n"
                f"{mv.description or ''}"
            )
        return render_markdown(card)


def run_app(model_uri: str | None, host: str, port: int, max_file_size: str, *, block: bool = True):
    """Check the model, then serve the demo (see :func:`medtune.app.server.start`)."""
    from medtune.app.server import start

    if not re.fullmatch(r"\d+\s*(b|kb|mb|gb)", max_file_size.strip().lower()):
        raise ConfigError(f"max_file_size={max_file_size}: expected a size such as 20mb or 1gb")
    source = RegistryModels()
    default, other = (model_uri, None) if model_uri else source.default_uris()
    source.load(default)  # a wrong URI stops here, with one line
    if model_uri:
        other = source.counterpart(model_uri)
    _end_launcher_run()
    return start(source, default, other, host=host, port=port, max_file_size=max_file_size, block=block)


def _end_launcher_run() -> None:
    """Under ``mlflow run -e app`` the launcher run records nothing: end it now, so it is never left RUNNING."""
    import os

    run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    if run_id:
        client = MlflowClient()
        client.set_tag(run_id, "medtune.note", "medtune app serves registered models and logs nothing")
        client.set_terminated(run_id, "FINISHED")
