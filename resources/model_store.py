"""The model store: where promoted bundles live ($VOICEFW_HOME/models by default).

Local folders today; the service finds the bundle to serve through the Dagster instance (the
latest `serving_model` materialization's "bundle_path"), never by listing this folder.
"""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from voicefw_assets.model_bundle import Bundle, load_bundle, write_bundle
from voicefw_assets.settings import paths


class ModelStore(ConfigurableResource):
    """`root` empty means $VOICEFW_HOME/models."""

    root: str = ""

    @property
    def models_dir(self) -> Path:
        return Path(self.root) if self.root else paths().models

    def write(self, **bundle_fields) -> tuple[str, Path]:
        """Write a bundle atomically; returns (version, path). See model_bundle.write_bundle."""
        return write_bundle(self.models_dir, **bundle_fields)

    def load(self, version: str) -> Bundle:
        return load_bundle(self.models_dir / version)

    def versions(self) -> list[str]:
        if not self.models_dir.exists():
            return []
        return sorted(p.name for p in self.models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
