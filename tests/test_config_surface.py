"""The config surface promises only what the code does.

Every key of config/defaults.py is either read by the library or listed in
``compat.INERT_KEYS`` (accepted, documented as inert, warned about when set); never both.
"Read" is decided from the code's syntax tree, not its text, so a key named in a docstring,
comment or error message does not count: an attribute chain ending in the key
(``cfg.TRAIN.FG_THRESH``), an attribute of a name bound to its section (``t = cfg.TRAIN``
then ``t.FG_THRESH``, also through a function parameter the section is passed to, or
``self.t = cfg.TRAIN`` then ``self.t.FG_THRESH`` in the same class),
``getattr(section, "KEY")`` and ``flat["SECTION.KEY"]``. Reads inside ``config/`` (defaults,
merging, range checks) do not count, except of the keys ``finalize`` infers there.

References: Detectron's detectron/core/config.py (which keys exist) and the hand-written
module of ``test_scanner_counts_code_not_text``.
"""
import ast
import collections
import re
import warnings
from pathlib import Path

import pytest

from detectron_lib.config import get_default_cfg, load_config, merge_from_file, merge_from_list
from detectron_lib.config import compat
from detectron_lib.config.compat import InertConfigKeyWarning

PACKAGE = Path(__file__).resolve().parents[1] / "detectron_lib"
DEFAULT_KEYS = frozenset(get_default_cfg().to_flat_dict())


def _sections(keys):
    return {".".join(key.split(".")[:i]) for key in keys for i in range(1, key.count(".") + 1)}


def _dotted_names(package_dir, exclude=()):
    """{relative path: parsed module} of the package's .py files outside ``exclude``."""
    modules = {}
    for path in sorted(Path(package_dir).rglob("*.py")):
        rel = path.relative_to(package_dir).as_posix()
        if not any(rel.startswith(prefix) for prefix in exclude):
            modules[rel] = ast.parse(path.read_text(), filename=str(path))
    return modules


class _ConfigReads:
    """Which config keys a set of modules reads (loads), and where."""

    def __init__(self, modules, keys):
        self.keys = frozenset(keys)
        self.sections = frozenset(_sections(keys))
        self.paths = self.keys | self.sections
        self.modules = modules
        self.parent = {}
        self.functions = collections.defaultdict(list)  # callable name -> [FunctionDef]
        for tree in modules.values():
            for node in ast.walk(tree):
                for child in ast.iter_child_nodes(node):
                    self.parent[child] = node
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.functions[node.name].append(node)
                elif isinstance(node, ast.ClassDef):  # Class(section) binds __init__'s params
                    self.functions[node.name] += [item for item in node.body
                                                  if isinstance(item, ast.FunctionDef)
                                                  and item.name == "__init__"]
        # scope (module, function or lambda node) -> name -> config sections it may hold
        self.aliases = collections.defaultdict(lambda: collections.defaultdict(set))
        # class node -> attribute -> config sections stored as ``self.attribute``
        self.self_aliases = collections.defaultdict(lambda: collections.defaultdict(set))
        self._bind_aliases()

    def _scope(self, node):
        node = self.parent.get(node)
        while node is not None and not isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.Module)):
            node = self.parent.get(node)
        return node

    def _class(self, node):
        node = self.parent.get(node)
        while node is not None and not isinstance(node, ast.ClassDef):
            node = self.parent.get(node)
        return node

    def _is_self_attribute(self, expr):
        return (isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name)
                and expr.value.id == "self" and self._class(expr) is not None)

    def resolve(self, expr):
        """The config paths (sections or keys) ``expr`` may denote."""
        if self._is_self_attribute(expr) and expr.attr in self.self_aliases[self._class(expr)]:
            return set(self.self_aliases[self._class(expr)][expr.attr])
        if isinstance(expr, ast.Name):
            found, scope = set(), self._scope(expr)
            while scope is not None:
                found |= self.aliases[scope].get(expr.id, set())
                scope = self._scope(scope)
            return found
        if isinstance(expr, ast.Attribute):
            found = {f"{p}.{expr.attr}" for p in self.resolve(expr.value)}
            found.add(expr.attr)  # reached as an attribute: cfg.TRAIN, self.cfg.VIS
            return found & self.paths
        if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)
                and expr.func.id == "getattr" and len(expr.args) >= 2
                and isinstance(expr.args[1], ast.Constant) and isinstance(expr.args[1].value, str)):
            name = expr.args[1].value
            return ({f"{p}.{name}" for p in self.resolve(expr.args[0])} | {name}) & self.paths
        if isinstance(expr, ast.Subscript) and isinstance(expr.slice, ast.Constant):
            return {expr.slice.value} & self.paths  # flat["SOLVER.BASE_LR"]
        return set()

    def _bind(self, scope, name, expr, aliases=None):
        aliases = self.aliases if aliases is None else aliases
        new = self.resolve(expr) & self.sections
        if new - aliases[scope][name]:
            aliases[scope][name] |= new
            return True
        return False

    def _bind_target(self, node, target, value):
        """Bind ``target = value``: a name in its scope, ``self.attr`` in its class."""
        if isinstance(target, ast.Name):
            return self._bind(self._scope(node), target.id, value)
        if self._is_self_attribute(target):
            return self._bind(self._class(target), target.attr, value, self.self_aliases)
        return False

    def _bind_call(self, call):
        changed = False
        func = call.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        for fdef in self.functions.get(name, ()):
            params = [a.arg for a in fdef.args.posonlyargs + fdef.args.args]
            if params[:1] in (["self"], ["cls"]):
                params = params[1:]
            for param, arg in zip(params, call.args):
                changed |= self._bind(fdef, param, arg)
            keywords = set(params) | {a.arg for a in fdef.args.kwonlyargs}
            for keyword in call.keywords:
                if keyword.arg in keywords:
                    changed |= self._bind(fdef, keyword.arg, keyword.value)
        return changed

    def _bind_aliases(self):
        changed = True
        while changed:  # until no name gains a section (aliases of aliases, parameters)
            changed = False
            for tree in self.modules.values():
                for node in ast.walk(tree):
                    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and node.value:
                        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                        for target in targets:
                            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                                for t, v in zip(target.elts, node.value.elts):
                                    changed |= self._bind_target(node, t, v)
                            else:
                                changed |= self._bind_target(node, target, node.value)
                    elif isinstance(node, ast.Call):
                        changed |= self._bind_call(node)

    def reads(self):
        """{key: {module}} of every key loaded (not stored) somewhere in the modules."""
        found = collections.defaultdict(set)
        for rel, tree in self.modules.items():
            for node in ast.walk(tree):
                if isinstance(getattr(node, "ctx", None), (ast.Store, ast.Del)):
                    continue
                if isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
                    for key in self.resolve(node) & self.keys:
                        found[key].add(rel)
        return found

    def stores(self):
        """Keys assigned somewhere in the modules (``cfg.RPN.RPN_ON = True``)."""
        stored = set()
        for tree in self.modules.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    stored |= self.resolve(node) & self.keys
        return stored


def library_reads():
    """{key: {module}} of the keys the library reads outside config/, plus the keys that
    finalize infers (config/validation.py assigns them) wherever they are read."""
    outside = _ConfigReads(_dotted_names(PACKAGE, exclude=("config/",)), DEFAULT_KEYS).reads()
    config = _ConfigReads(_dotted_names(PACKAGE / "config", exclude=("defaults.py",)), DEFAULT_KEYS)
    for key in config.stores():
        outside[key] |= {f"config/{m}" for m in config.reads().get(key, ())}
    return {key: modules for key, modules in outside.items() if modules}


@pytest.fixture(scope="module")
def reads():
    return library_reads()


def test_every_key_is_read_or_declared_inert(reads):
    neither = sorted(DEFAULT_KEYS - set(reads) - set(compat.INERT_KEYS))
    assert not neither, (
        f"config keys that no code reads and compat.INERT_KEYS does not list: {neither}; "
        "read them where they take effect, or list them (with why they have no effect) in "
        "compat.INERT_KEYS and say so in defaults.py")


def test_no_inert_key_is_read(reads):
    both = {key: sorted(reads[key]) for key in compat.INERT_KEYS if key in reads}
    assert not both, f"keys listed as inert but read by the code (drop them from INERT_KEYS): {both}"


def test_inert_keys_are_default_keys_and_not_retired():
    assert set(compat.INERT_KEYS) <= DEFAULT_KEYS
    assert not set(compat.INERT_KEYS) & (compat.DEPRECATED_KEYS | set(compat.RENAMED_KEYS))
    assert all(reason.strip() for reason in compat.INERT_KEYS.values())


def _default_comments():
    """{key: the comment lines right above its assignment in defaults.py}."""
    comments, block = {}, []
    for line in (PACKAGE / "config" / "defaults.py").read_text().splitlines():
        stripped = line.strip()
        match = re.match(r"_C\.([A-Z0-9_.]+)\s*=", stripped)
        if stripped.startswith("#"):
            block.append(stripped)
        elif match:
            comments[match.group(1)] = " ".join(block)
            block = []
        else:
            block = []
    return comments


def test_defaults_mark_exactly_the_inert_keys():
    comments = _default_comments()
    marked = {key for key, text in comments.items() if "[Inert" in text}
    assert marked == set(compat.INERT_KEYS), (
        f"defaults.py comments say [Inert...] for {sorted(marked - set(compat.INERT_KEYS))} "
        f"which are not inert, and not for {sorted(set(compat.INERT_KEYS) - marked)}")
    assert not [key for key in DEFAULT_KEYS if key not in comments]


def test_scanner_counts_code_not_text(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mod.py").write_text('''
"""Docstring naming TRAIN.CROWD_FILTER_THRESH and cfg.TRAIN.BBOX_THRESH."""
# a comment naming cfg.DEDUP_BOXES


def build(cfg):
    """cfg.KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH is only named here."""
    t, s = cfg.TRAIN, cfg.TEST
    message = "TEST.COMPETITION_MODE in a string"
    head(cfg.MRCNN)
    return cfg.MODEL.MASK_ON, t.FG_THRESH, s.NMS, getattr(cfg.RPN, "SIZES"), message


def head(head_cfg):
    aug = head_cfg
    return aug.RESOLUTION


def flat_lookup(flat, cfg):
    cfg.SOLVER.MAX_ITER = 3  # a store, not a read
    return flat["SOLVER.BASE_LR"], cfg.VIS_TH


class Heads:
    def __init__(self, cfg):
        self.kps, self.other = cfg.KRCNN, None

    def size(self):
        return self.kps.HEATMAP_SIZE, self.other.NMS_OKS


class Unrelated:
    def nms(self):
        return self.kps.NMS_OKS  # another class's self.kps
''')
    keys = DEFAULT_KEYS
    found = _ConfigReads(_dotted_names(package), keys).reads()
    assert set(found) == {"MODEL.MASK_ON", "TRAIN.FG_THRESH", "TEST.NMS", "RPN.SIZES",
                          "MRCNN.RESOLUTION", "SOLVER.BASE_LR", "VIS_TH", "KRCNN.HEATMAP_SIZE"}


# ---- warnings -------------------------------------------------------------------------------

def _inert_warnings(record):
    return [w for w in record if issubclass(w.category, InertConfigKeyWarning)]


def test_inert_key_set_in_a_file_warns_once_naming_key_and_reason(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("TEST:\n  COMPETITION_MODE: False\nMODEL:\n  EXECUTION_TYPE: prof_dag\n")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cfg = merge_from_file(get_default_cfg(), path)
    messages = [str(w.message) for w in _inert_warnings(record)]
    assert len(messages) == 2
    assert "'TEST.COMPETITION_MODE'" in messages[0] and str(path) in messages[0]
    assert compat.INERT_KEYS["TEST.COMPETITION_MODE"] in messages[0]
    assert "'MODEL.EXECUTION_TYPE'" in messages[1]
    assert cfg.TEST.COMPETITION_MODE is False  # accepted and kept, as Detectron's config had it


def test_inert_key_set_on_the_command_line_warns():
    with pytest.warns(InertConfigKeyWarning, match=r"'VIS_TH' in command-line overrides .*--thresh"):
        merge_from_list(get_default_cfg(), ["VIS_TH", "0.5"])


def test_inert_key_at_its_default_and_live_keys_do_not_warn(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("USE_NCCL: False\nTRAIN:\n  CROWD_FILTER_THRESH: 0.5\n  BBOX_THRESH: 0.6\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_config(str(path), ["KRCNN.MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH", "5",
                                      "DEDUP_BOXES", "0.0"])
    assert cfg.TRAIN.CROWD_FILTER_THRESH == 0.5 and cfg.DEDUP_BOXES == 0.0
