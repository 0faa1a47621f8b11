"""Registries that resolve Detectron's function-name strings to our builders.

Detectron's configs name model pieces by the Python function that built them in Caffe2,
e.g. ``MODEL.CONV_BODY: FPN.add_fpn_ResNet50_conv5_body``. Each component kind has one
``Registry``; a builder registers under Detectron's name(s) and any short names:

    BACKBONES = Registry("MODEL.CONV_BODY")

    @BACKBONES.register("FPN.add_fpn_ResNet50_conv5_body", "R-50-FPN")
    def build_resnet50_fpn(cfg): ...

``get`` maps legacy names (those Detectron itself renamed) to current ones first.
"""
import difflib

from detectron_lib.errors import ConfigError


class Registry:
    """Maps names to builders for one component kind (named by the config key that selects it)."""

    def __init__(self, config_key, legacy_names=None):
        self.config_key = config_key
        self.legacy_names = dict(legacy_names or {})
        self._builders = {}

    def register(self, *names):
        """Decorator registering a builder under each of ``names``."""
        if not names:
            raise ValueError("register() needs at least one name")

        def decorator(builder):
            for name in names:
                if name in self._builders and self._builders[name] is not builder:
                    raise ValueError(f"{self.config_key}: '{name}' is already registered")
                self._builders[name] = builder
            return builder

        return decorator

    def canonical_name(self, name):
        """The current name for ``name`` (Detectron's legacy names are remapped)."""
        return self.legacy_names.get(name, name)

    def __contains__(self, name):
        return self.canonical_name(name) in self._builders

    def names(self):
        return sorted(self._builders)

    def get(self, name):
        """The builder registered under ``name``; a ConfigError naming the key otherwise."""
        builder = self._builders.get(self.canonical_name(name))
        if builder is None:
            close = difflib.get_close_matches(name, self._builders, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{self.config_key}: unknown value '{name}'.{hint}")
        return builder
