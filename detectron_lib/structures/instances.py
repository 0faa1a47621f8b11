"""``Instances``: the per-image set of objects (ground truth, proposals or detections).

Every field has one entry per object, so the set can be indexed like a tensor:
``dets[dets.scores > 0.5]`` keeps the matching entries of every field at once.

    dets = Instances((480, 640), boxes=Boxes(xyxy), scores=scores, classes=classes)
    dets.boxes        # Boxes (N, 4), carrying the box convention
    dets[:10]         # first ten objects, all fields
"""
import torch

from detectron_lib.structures.boxes import Boxes


class Instances:
    """Fields of equal length describing the objects of one image of size (height, width)."""

    def __init__(self, image_size, **fields):
        # ints, but sizes the ONNX export traces stay tensors: what is clipped to them then
        # follows the graph's input size
        object.__setattr__(self, "image_size", tuple(
            s if torch.jit.is_tracing() and isinstance(s, torch.Tensor) else int(s)
            for s in image_size))
        object.__setattr__(self, "_fields", {})
        for name, value in fields.items():
            self.set(name, value)

    def set(self, name, value):
        """Add or replace a field; its length must match the other fields'."""
        n = len(value)
        if self._fields and n != len(self):
            raise ValueError(f"field '{name}' has {n} entries, the others have {len(self)}")
        self._fields[name] = value

    def __setattr__(self, name, value):
        self.set(name, value)

    def __getattr__(self, name):
        fields = object.__getattribute__(self, "_fields")
        if name not in fields:
            raise AttributeError(f"Instances has no field '{name}' (fields: {sorted(fields)})")
        return fields[name]

    def has(self, name):
        return name in self._fields

    def fields(self):
        return dict(self._fields)

    def __len__(self):
        for value in self._fields.values():
            return len(value)
        return 0

    def __getitem__(self, index):
        """Select objects by int, slice, bool mask or index tensor, in every field."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        out = Instances(self.image_size)
        for name, value in self._fields.items():
            if isinstance(value, (torch.Tensor, Boxes)):
                out.set(name, value[index])
            else:  # a python list, e.g. polygons
                out.set(name, _index_list(value, index))
        return out

    def to(self, device):
        out = Instances(self.image_size)
        for name, value in self._fields.items():
            out.set(name, value.to(device) if isinstance(value, (torch.Tensor, Boxes)) else value)
        return out

    @staticmethod
    def cat(instances_list):
        """Concatenate sets of the same image (e.g. proposals and ground-truth boxes)."""
        if not instances_list:
            raise ValueError("Instances.cat needs at least one element")
        first = instances_list[0]
        out = Instances(first.image_size)
        for name, value in first._fields.items():
            values = [inst._fields[name] for inst in instances_list]
            if isinstance(value, torch.Tensor):
                out.set(name, torch.cat(values))
            elif isinstance(value, Boxes):
                out.set(name, Boxes.cat(values))
            else:
                out.set(name, [v for vs in values for v in vs])
        return out

    def __repr__(self):
        return f"Instances(num={len(self)}, image_size={self.image_size}, fields={sorted(self._fields)})"


def _index_list(values, index):
    if isinstance(index, slice):
        return values[index]
    index = torch.as_tensor(index)
    if index.dtype == torch.bool:
        index = index.nonzero().flatten()
    return [values[i] for i in index.tolist()]
