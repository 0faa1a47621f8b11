"""``CfgNode``: a nested dict of config keys with attribute access and a freeze switch.

A config is a tree of ``CfgNode``s whose leaves are plain Python values (str, int, float,
bool, tuple, list). Keys are read as attributes (``cfg.TRAIN.SCALES``) or items
(``cfg["TRAIN"]["SCALES"]``). After ``freeze()`` every node of the tree refuses writes, so
code deep inside training cannot silently change the experiment it belongs to.
"""
import copy

import yaml

from detectron_lib.errors import ConfigError


class CfgNode(dict):
    """A config (sub)tree: ``dict`` keyed by upper-case names, readable as attributes.

    ``prefix`` is the dotted key of this node inside the full config ("" for the root,
    "TEST.BBOX_AUG" for that subtree), used by error messages and ``to_flat_dict``.
    """

    # Class-level defaults: __setitem__ reads _frozen before __init__ has set it.
    _frozen = False
    _prefix = ""

    def __init__(self, init_dict=None, prefix=""):
        super().__init__()
        object.__setattr__(self, "_prefix", prefix)
        for key, value in (init_dict or {}).items():
            self[key] = value

    @property
    def prefix(self):
        """Dotted key of this node in the full config ("" for the root)."""
        return self._prefix

    def _full_key(self, key):
        return f"{self._prefix}.{key}" if self._prefix else str(key)

    # -- access -------------------------------------------------------------------------------

    def __getattr__(self, name):
        if name.startswith("__"):  # keep copy/pickle protocol lookups out of the key space
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key '{self._full_key(name)}'") from None

    def __setattr__(self, name, value):
        if name.startswith("_"):
            raise AttributeError(f"cannot set private attribute '{name}' on a CfgNode")
        self[name] = value

    def __setitem__(self, key, value):
        self._check_mutable(f"set config key '{self._full_key(key)}'")
        if isinstance(value, dict):
            value = CfgNode(value, prefix=self._full_key(key))
        super().__setitem__(key, value)

    # Every other dict mutator is guarded too; new values go through __setitem__.

    def __delitem__(self, key):
        self._check_mutable(f"delete config key '{self._full_key(key)}'")
        super().__delitem__(key)

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other):
        self.update(other)
        return self

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key, *default):
        self._check_mutable(f"delete config key '{self._full_key(key)}'")
        return super().pop(key, *default)

    def popitem(self):
        self._check_mutable(f"delete a key of config node '{self._prefix or '<root>'}'")
        return super().popitem()

    def clear(self):
        self._check_mutable(f"clear config node '{self._prefix or '<root>'}'")
        super().clear()

    def _check_mutable(self, action):
        if self._frozen:
            raise ConfigError(
                f"cannot {action}: the config is frozen (finalized); clone() it to get a mutable copy"
            )

    # -- freezing -----------------------------------------------------------------------------

    def freeze(self):
        """Make this node and every node below it immutable."""
        self._set_frozen(True)
        return self

    def is_frozen(self):
        return self._frozen

    def _set_frozen(self, frozen):
        object.__setattr__(self, "_frozen", frozen)
        for value in self.values():
            if isinstance(value, CfgNode):
                value._set_frozen(frozen)

    def clone(self):
        """A deep, mutable copy (even of a frozen config)."""
        twin = copy.deepcopy(self)
        twin._set_frozen(False)
        return twin

    def __deepcopy__(self, memo):
        twin = CfgNode(prefix=self._prefix)
        memo[id(self)] = twin
        for key, value in self.items():
            dict.__setitem__(twin, key, copy.deepcopy(value, memo))
        object.__setattr__(twin, "_frozen", self._frozen)
        return twin

    def __reduce__(self):
        # Items first, frozen flag last: the default protocol would restore the flag first
        # and then be refused when it sets the items.
        return _rebuild_node, (self._prefix, dict(self), self._frozen)

    # -- export -------------------------------------------------------------------------------

    def to_dict(self):
        """Plain nested dicts; tuples become lists (the YAML view of the config)."""
        return {key: _to_plain(value) for key, value in self.items()}

    def dump(self):
        """The config as a YAML string that ``merge_from_file`` reads back to an equal config."""
        return yaml.dump(self.to_dict(), Dumper=_ConfigDumper, sort_keys=False, width=100)

    def to_flat_dict(self):
        """``{"TRAIN.SCALES": (800,), ...}``: every leaf under its full dotted key."""
        flat = {}
        for key, value in self.items():
            if isinstance(value, CfgNode):
                flat.update(value.to_flat_dict())
            else:
                flat[self._full_key(key)] = value
        return flat

    def __repr__(self):
        return f"CfgNode({dict.__repr__(self)})"


class _ConfigDumper(yaml.SafeDumper):
    """Block-style sections, one key per line; lists inline (``SCALES: [800]``)."""


_ConfigDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def _rebuild_node(prefix, items, frozen):
    node = CfgNode(prefix=prefix)
    for key, value in items.items():
        dict.__setitem__(node, key, value)
    object.__setattr__(node, "_frozen", frozen)
    return node


def _to_plain(value):
    if isinstance(value, CfgNode):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_to_plain(item) for item in value]
    return value
