"""Pascal VOC annotations (XML) converted to COCO json, the one format the loaders read."""
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from detectron_lib.data.catalog import VOC_CATEGORY_NAMES
from detectron_lib.errors import DatasetError
from detectron_lib.utils.io import write_json_atomic


def convert_voc_to_coco(voc_devkit_year_dir, image_set, output_json):
    """Convert one VOC image set to a COCO json file, written atomically.

    Args:
        voc_devkit_year_dir: e.g. VOCdevkit2007/VOC2007, holding Annotations/*.xml and
            ImageSets/Main/{image_set}.txt.
        image_set: train, val, trainval or test.
        output_json: path of the COCO json to write.
    Returns:
        The COCO dict written.

    VOC boxes are 1-based inclusive pixel indices; COCO boxes are continuous, so
    [xmin, ymin, xmax, ymax] becomes [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1].
    Objects marked difficult become iscrowd=1 (and "difficult": 1), which training and
    COCO-style evaluation ignore and VOC evaluation can honour.
    Image ids are the VOC ids with underscores removed (2008_000008 -> 2008000008).
    """
    root = Path(voc_devkit_year_dir)
    set_file = root / "ImageSets" / "Main" / f"{image_set}.txt"
    try:
        voc_ids = [line.split()[0] for line in set_file.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise DatasetError(f"VOC image set file {set_file} not found; is {root} a VOC<year> "
                           f"folder of a VOCdevkit?") from None
    category_ids = {name: k for k, name in enumerate(VOC_CATEGORY_NAMES, start=1)}
    images, annotations = [], []
    for voc_id in voc_ids:
        if not re.fullmatch(r"[0-9_]+", voc_id):
            raise DatasetError(f"{set_file}: image id {voc_id!r} is not a VOC id (digits and _)")
        image_id = int(voc_id.replace("_", ""))
        xml_file = root / "Annotations" / f"{voc_id}.xml"
        image, objects = _read_voc_xml(xml_file, voc_id)
        images.append({"id": image_id, **image})
        for obj in objects:
            if obj["name"] not in category_ids:
                raise DatasetError(f"{xml_file}: object class {obj['name']!r} is not one of "
                                   f"the 20 VOC classes")
            xmin, ymin, xmax, ymax = obj["bndbox"]
            width, height = xmax - xmin + 1, ymax - ymin + 1
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_ids[obj["name"]],
                "bbox": [xmin - 1, ymin - 1, width, height],
                "area": width * height,
                "iscrowd": int(obj["difficult"]),
                "difficult": int(obj["difficult"]),
            })
    coco = {
        "info": {"description": f"Pascal VOC {root.name} {image_set}, converted"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k, "name": name, "supercategory": "voc"}
                       for name, k in category_ids.items()],
    }
    write_json_atomic(output_json, coco)
    return coco


def _read_voc_xml(xml_file, voc_id):
    """Returns ({file_name, height, width}, [{name, difficult, bndbox (4 floats)}])."""
    try:
        tree = ET.parse(xml_file).getroot()
        size = tree.find("size")
        image = {
            "file_name": (tree.findtext("filename") or f"{voc_id}.jpg").strip(),
            "height": int(size.findtext("height")),
            "width": int(size.findtext("width")),
        }
        objects = []
        for obj in tree.findall("object"):
            box = obj.find("bndbox")
            objects.append({
                "name": obj.findtext("name").strip(),
                "difficult": int(obj.findtext("difficult") or 0),
                "bndbox": [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")],
            })
    except FileNotFoundError:
        raise DatasetError(f"VOC annotation {xml_file} not found for image {voc_id}") from None
    except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
        raise DatasetError(f"VOC annotation {xml_file} is malformed ({e}); it needs size/width, "
                           f"size/height and per object name and bndbox") from None
    return image, objects
