"""Registries that resolve Detectron's function-name strings to our builders.

Detectron's configs name model pieces by the Python function that built them in Caffe2,
e.g. ``MODEL.CONV_BODY: FPN.add_fpn_ResNet50_conv5_body``. Each component kind has one
``Registry``; a builder registers under Detectron's name(s) and any short names:

    BACKBONES = Registry("MODEL.CONV_BODY")

    @BACKBONES.register("FPN.add_fpn_ResNet50_conv5_body", "R-50-FPN")
    def build_resnet50_fpn(cfg): ...

A registry also knows the names Detectron accepted (``declare``), before any builder is
registered: config validation checks a name against them without importing modeling code,
and ``get`` on a known name whose builder is missing says so instead of "unknown".

``get`` maps legacy names (those Detectron itself renamed) to current ones first.
"""
import difflib

from detectron_lib.errors import ConfigError


class Registry:
    """Maps names to builders for one component kind (named by the config key that selects it).

    legacy_names: {old name: current name}; the old name is accepted wherever the current
    one is (in ``register``, ``get`` and validation).
    """

    def __init__(self, config_key, legacy_names=None):
        self.config_key = config_key
        self.legacy_names = dict(legacy_names or {})
        self._builders = {}
        self._declared = set()

    def declare(self, *names):
        """Record ``names`` as valid values of the config key (builders may come later)."""
        self._declared.update(self.canonical_name(name) for name in names)

    def register(self, *names):
        """Decorator registering a builder under each of ``names`` (legacy names are remapped)."""
        if not names:
            raise ValueError("register() needs at least one name")

        def decorator(builder):
            for name in map(self.canonical_name, names):
                if name in self._builders and self._builders[name] is not builder:
                    raise ValueError(f"{self.config_key}: '{name}' is already registered")
                self._builders[name] = builder
            return builder

        return decorator

    def canonical_name(self, name):
        """The current name for ``name`` (Detectron's legacy names are remapped)."""
        return self.legacy_names.get(name, name)

    def __contains__(self, name):
        """Whether a builder is registered for ``name`` (i.e. it can be built now)."""
        return self.canonical_name(name) in self._builders

    def is_known(self, name):
        """Whether ``name`` is a valid value of the config key (declared or registered)."""
        name = self.canonical_name(name)
        return name in self._declared or name in self._builders

    def names(self):
        """Names with a registered builder."""
        return sorted(self._builders)

    def known_names(self):
        """Every valid value: declared Detectron names and registered names."""
        return sorted(self._declared | set(self._builders))

    def check_known(self, name):
        """Raise a ConfigError naming the key and the closest valid value if ``name`` is unknown."""
        if self.is_known(name):
            return
        close = difflib.get_close_matches(name, self.known_names() + list(self.legacy_names), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{self.config_key}: unknown value '{name}'.{hint}")

    def get(self, name):
        """The builder registered under ``name``; a ConfigError naming the key otherwise."""
        builder = self._builders.get(self.canonical_name(name))
        if builder is not None:
            return builder
        if not name:
            raise ConfigError(f"{self.config_key} is empty; set it in the config")
        self.check_known(name)
        raise ConfigError(
            f"{self.config_key}: '{name}' is a known Detectron name, but its builder is not "
            f"available in this build (available: {', '.join(self.names()) or 'none'})"
        )
