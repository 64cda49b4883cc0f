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

from medtune import tracking
from medtune.app.inference import LoadedModel
from medtune.errors import ConfigError
from medtune.tracking.registry import RegistryReader

log = logging.getLogger(__name__)

PREFIX = "medtune-"
KEEP_LOADED = 4


class RegistryModels:
    """Models of the registry, addressed as ``models:/<name>@<alias>`` or ``models:/<name>/<version>``."""

    def __init__(self, reader: RegistryReader | None = None):
        self.registry = reader or RegistryReader(PREFIX)
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def choices(self) -> list[tuple[str, str]]:
        out = []
        for name in self.registry.names():
            for alias, version in sorted(self.registry.aliases(name).items()):
                out.append((f"{name}@{alias} (v{version})", f"models:/{name}@{alias}"))
            for version in self.registry.versions(name):
                out.append((f"{name} v{version}", f"models:/{name}/{version}"))
        return out

    def default_uris(self) -> tuple[str, str | None]:
        """The first model's @champion (else its latest version), and its @challenger when there is one."""
        names = self.registry.names()
        if not names:
            raise ConfigError(
                f"no {PREFIX}* registered model in {self.registry.tracking_uri}: train one first "
                "(`mlflow run . --env-manager local`), or pass --model"
            )
        name = names[0]
        aliases = self.registry.aliases(name)
        first = (
            f"models:/{name}@champion" if "champion" in aliases else f"models:/{name}/{self.registry.versions(name)[0]}"
        )
        return first, f"models:/{name}@challenger" if "challenger" in aliases else None

    def counterpart(self, uri: str) -> str | None:
        """For ``...@champion`` the same model's ``@challenger`` (and back), when that alias is set."""
        name, _, alias = uri.partition("@")
        other = {"champion": "challenger", "challenger": "champion"}.get(alias)
        if other is None or other not in self.registry.aliases(name[len("models:/") :]):
            return None
        return f"{name}@{other}"

    def version_of(self, uri: str):
        """The registered version behind ``uri`` (aliases resolved now: they move)."""
        rest = uri[len("models:/") :] if uri.startswith("models:/") else ""
        name, sep, alias = rest.partition("@")
        if not rest or not name.startswith(PREFIX):
            raise ConfigError(
                f"model={uri}: expected models:/{PREFIX}<dataset>@<alias> or models:/{PREFIX}<dataset>/<version>"
            )
        if sep:
            return self.registry.version(name, alias=alias)
        name, _, version = rest.rpartition("/")
        return self.registry.version(name, version)

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
        from medtune.tracking.cards import load_card

        mv = self.version_of(uri)
        card = load_card(mv.run_id)
        if card is None:
            return (
                f"No model card was logged for {mv.name} v{mv.version} (trained before medtune wrote them).\n\n"
                f"{mv.description or ''}"
            )
        return render_markdown(card)


def parse_auth(auth: str | None, host: str, no_auth: bool) -> tuple[str, str] | None:
    """``user:password`` as Gradio's ``auth``; a host beyond loopback needs it, or an explicit ``no_auth``."""
    from medtune.app.server import is_loopback

    if auth is None:
        if not (no_auth or is_loopback(host)):
            raise ConfigError(
                f"host={host}: the demo would be open to the network with no login; "
                "pass --auth user:password (or $MEDTUNE_APP_AUTH), or --no-auth to open it to anyone anyway"
            )
        return None
    user, _, password = auth.partition(":")
    if not (user and password):
        raise ConfigError("auth: expected user:password, both non-empty")  # the value is not echoed: a password
    if no_auth:
        raise ConfigError("auth: --auth and --no-auth contradict each other; pass one")
    return user, password


def run_app(
    model_uri: str | None,
    host: str,
    port: int,
    max_file_size: str,
    *,
    auth: str | None = None,
    no_auth: bool = False,
    block: bool = True,
):
    """Check the options and the model, then serve the demo (see :func:`medtune.app.server.start`)."""
    from medtune.app.server import start

    if not re.fullmatch(r"\d+\s*(b|kb|mb|gb)", max_file_size.strip().lower()):
        raise ConfigError(f"max_file_size={max_file_size}: expected a size such as 20mb or 1gb")
    login = parse_auth(auth, host, no_auth)
    source = RegistryModels()
    default, other = (model_uri, None) if model_uri else source.default_uris()
    source.load(default)  # a wrong URI stops here, with one line
    if model_uri:
        other = source.counterpart(model_uri)
    tracking.end_launcher_run("medtune app serves registered models and logs nothing")
    return start(source, default, other, host=host, port=port, max_file_size=max_file_size, auth=login, block=block)
