"""Registries that resolve Detectron's function-name strings to our builders.

Detectron's configs name model pieces by the Python function that built them in Caffe2,
e.g. ``MODEL.CONV_BODY: FPN.add_fpn_ResNet50_conv5_body``. Each component kind has one
``Registry``, and ``config/names.py`` is the one list of the names each accepts:

    CONV_BODY = Registry("MODEL.CONV_BODY")
    CONV_BODY.provide("FPN.add_fpn_ResNet50_conv5_body",
                      "detectron_lib.modeling.backbone.build:fpn_from_config", depth=50)
    CONV_BODY.declare("VGG_CNN_M_1024.add_VGG_CNN_M_1024_conv5_body")  # no builder here

A provided builder is named by "module:function" (plus keyword arguments bound to it) and
imported when first built, so config validation checks names without importing modeling
code. ``declare`` lists Detectron names that have no builder here: the config accepts them,
and building one says so. Code outside the library adds builders at run time with the
``register`` decorator.

``get`` maps legacy names (those Detectron itself renamed) to current ones first.
"""
import difflib
import functools
import importlib

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
        self._provided = {}  # name -> (module:function, keyword arguments)
        self._declared = set()

    def declare(self, *names):
        """Accept ``names`` as values of the config key that have no builder here (Detectron
        names not carried over): building one says so instead of "unknown"."""
        self._declared.update(self.canonical_name(name) for name in names)

    def provide(self, name, target, **kwargs):
        """The library's builder of ``name``: the function ``target`` ("module:function"),
        called with ``kwargs`` bound, imported when first built."""
        name = self.canonical_name(name)
        if name in self:
            raise ValueError(f"{self.config_key}: '{name}' already has a builder")
        self._provided[name] = (target, kwargs)

    def register(self, *names):
        """Decorator registering a builder under each of ``names`` (legacy names are remapped)."""
        if not names:
            raise ValueError("register() needs at least one name")

        def decorator(builder):
            for name in map(self.canonical_name, names):
                if name in self._provided or (name in self._builders
                                              and self._builders[name] is not builder):
                    raise ValueError(f"{self.config_key}: '{name}' is already registered")
                self._builders[name] = builder
            return builder

        return decorator

    def canonical_name(self, name):
        """The current name for ``name`` (Detectron's legacy names are remapped)."""
        return self.legacy_names.get(name, name)

    def __contains__(self, name):
        """Whether ``name`` has a builder (provided or registered)."""
        name = self.canonical_name(name)
        return name in self._builders or name in self._provided

    def is_known(self, name):
        """Whether ``name`` is a valid value of the config key (with or without a builder)."""
        return name in self or self.canonical_name(name) in self._declared

    def names(self):
        """Names with a builder."""
        return sorted(set(self._builders) | set(self._provided))

    def known_names(self):
        """Every valid value: names with a builder and declared Detectron names."""
        return sorted(self._declared | set(self.names()))

    def check_known(self, name):
        """Raise a ConfigError naming the key and the closest valid value if ``name`` is unknown."""
        if self.is_known(name):
            return
        close = difflib.get_close_matches(name, self.known_names() + list(self.legacy_names), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{self.config_key}: unknown value '{name}'.{hint}")

    def get(self, name):
        """The builder registered under ``name``; a ConfigError naming the key otherwise."""
        name = self.canonical_name(name)
        if name in self._provided:
            target, kwargs = self._provided[name]
            module, function = target.split(":")
            builder = getattr(importlib.import_module(module), function)
            return functools.partial(builder, **kwargs) if kwargs else builder
        builder = self._builders.get(name)
        if builder is not None:
            return builder
        if not name:
            raise ConfigError(f"{self.config_key} is empty; set it in the config")
        self.check_known(name)
        raise ConfigError(
            f"{self.config_key}: '{name}' is a known Detectron name, but its builder is not "
            f"available in this build (available: {', '.join(self.names()) or 'none'})"
        )
