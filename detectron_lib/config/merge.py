"""Merging YAML files and ``KEY VALUE`` override lists into a config, with Detectron's rules.

- Only keys of the default tree may be set; an unknown key is an error that suggests the
  closest valid key. Renamed keys are errors naming the new key; deprecated keys are
  ignored with a warning; inert keys (read by nothing here) are set, with a warning when
  the value is not the default (see ``compat``).
- String values that are Python literals are decoded with ``ast.literal_eval``
  (``"(800,)"`` -> ``(800,)``, ``"0.01"`` -> ``0.01``); other strings (paths, URLs, names)
  stay strings.
- The decoded value must have the type of the default it replaces, except that tuple and
  list convert into each other and any value converts to ``str`` for a string key.
"""
import ast
import difflib
from pathlib import Path

import yaml

from detectron_lib.config import compat
from detectron_lib.config.node import CfgNode
from detectron_lib.errors import ConfigError


def merge_from_file(cfg, path):
    """Merge the YAML config file ``path`` into ``cfg`` (in place) and return ``cfg``."""
    path = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of config keys (e.g. 'TRAIN: ...'), "
            f"got {type(loaded).__name__}"
        )
    _merge_dict(loaded, cfg, cfg, prefix="", source=path)
    return cfg


def merge_from_list(cfg, opts):
    """Merge ``["KEY", "VALUE", ...]`` (e.g. command-line overrides) into ``cfg`` in place.

    Values are strings as typed on a command line (``"0.5"``, ``"(800,)"``) or Python values.
    """
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(
            f"config overrides must be KEY VALUE pairs, got an odd number of tokens ({len(opts)}): "
            f"{' '.join(map(str, opts))}"
        )
    source = "command-line overrides"
    for full_key, raw_value in zip(opts[0::2], opts[1::2]):
        if compat.is_deprecated(full_key, source):
            continue
        compat.raise_if_renamed(full_key, source)
        *parents, leaf = full_key.split(".")
        node = cfg
        for part in parents:
            node = node.get(part) if isinstance(node, CfgNode) else None
        if not isinstance(node, CfgNode) or leaf not in node:
            raise _unknown_key_error(cfg, full_key, source)
        value = check_and_coerce_type(decode_value(raw_value), node[leaf], full_key, source)
        if isinstance(node[leaf], CfgNode):
            _merge_dict(value, node[leaf], cfg, full_key, source)
        else:
            node[leaf] = value
            compat.warn_if_inert(full_key, value, source)
    return cfg


def _merge_dict(loaded, node, root, prefix, source):
    """Merge the plain dict ``loaded`` into the config node ``node`` (``root`` is the whole tree)."""
    for key, raw_value in loaded.items():
        if not isinstance(key, str):
            raise ConfigError(
                f"{source}: config keys must be strings, got {key!r} under "
                f"'{prefix or '<root>'}' (YAML reads ON/OFF/YES/NO as booleans; quote the key)"
            )
        full_key = f"{prefix}.{key}" if prefix else key
        if key not in node:
            if compat.is_deprecated(full_key, source):
                continue
            compat.raise_if_renamed(full_key, source)
            raise _unknown_key_error(root, full_key, source)
        value = check_and_coerce_type(decode_value(raw_value), node[key], full_key, source)
        if isinstance(value, dict):
            _merge_dict(value, node[key], root, full_key, source)
        else:
            node[key] = value
            compat.warn_if_inert(full_key, value, source)


def decode_value(value):
    """Turn a raw config value into a Python object (Detectron's ``_decode_cfg_value``).

    Strings that parse as Python literals become those literals; any other string (a path,
    URL or name) is returned unchanged. Non-strings pass through.
    """
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def check_and_coerce_type(value, default, full_key, source=None):
    """``value`` converted to the type of ``default``, or a ConfigError saying why it cannot be.

    Detectron's ``_check_and_coerce_cfg_value_type``: the types must match exactly, except
    tuple <-> list, and any value for a string key (converted with ``str``). A dict may
    replace a config node (it is merged key by key by the caller).
    """
    if type(value) is type(default):
        return value
    if isinstance(default, CfgNode) and isinstance(value, dict):
        return value
    if isinstance(default, str):
        return str(value)
    if isinstance(value, tuple) and isinstance(default, list):
        return list(value)
    if isinstance(value, list) and isinstance(default, tuple):
        return tuple(value)
    where = f"{source}: " if source else ""
    hint = ""
    if isinstance(default, float) and type(value) is int:
        hint = " (write a float, e.g. 1.0 instead of 1)"
    expected = type(default).__name__
    if isinstance(default, CfgNode):
        expected = "a config section (mapping)"
    raise ConfigError(
        f"{where}type mismatch for config key '{full_key}': expected {expected} "
        f"(default {_short_repr(default)}), got {type(value).__name__} {_short_repr(value)}{hint}"
    )


def _unknown_key_error(root, full_key, source):
    valid_keys = list(root.to_flat_dict()) + _section_keys(root)
    close = difflib.get_close_matches(full_key, valid_keys, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{source}: unknown config key '{full_key}'.{hint}")


def _section_keys(node):
    keys = []
    for value in node.values():
        if isinstance(value, CfgNode):
            keys.append(value.prefix)
            keys.extend(_section_keys(value))
    return keys


def _short_repr(value, limit=80):
    text = repr(value.to_dict()) if isinstance(value, CfgNode) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
