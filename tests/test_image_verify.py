"""Reading images of every PIL mode with their real value range, and checking a dataset's
images up front (library, CLI, training loader, cache, two ranks)."""
import json
import multiprocessing
import os
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from detectron_lib.cli import main
from detectron_lib.config import get_default_cfg
from detectron_lib.data import catalog, verify
from detectron_lib.data.coco import load_coco_json
from detectron_lib.data.loader import build_train_loader
from detectron_lib.data.transforms import ImageReadError, read_image_bgr
from detectron_lib.errors import DatasetError

RNG = np.random.default_rng(0)


def _rgb_of(path):
    return read_image_bgr(path)[:, :, ::-1]


def _gray3(gray):
    return np.repeat(np.asarray(gray, dtype=np.uint8)[:, :, None], 3, axis=2)


def _png16(path, values, color_type):
    """A 16-bit PNG written byte by byte (no PIL): color_type 0 gray, 2 RGB."""
    height, width = values.shape[:2]
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


# Values at the rounding edges of v * 255 / 65535 (v / 257: 128 -> 0, 129 -> 1) and the ends.
EDGES = np.array([0, 1, 128, 129, 385, 386, 32767, 32768, 65279, 65280, 65534, 65535])


def _sixteen_bit_values():
    values = RNG.integers(0, 65536, size=(6, 10), dtype=np.uint16)
    values.flat[:EDGES.size] = EDGES
    return values


def _scaled_reference(values):
    return np.rint(values.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)


@pytest.mark.parametrize("numpy_dtype, suffix", [("<u2", "png"), (">u2", "tif"), ("<u2", "tif")])
def test_16_bit_gray_keeps_its_range(tmp_path, numpy_dtype, suffix):
    values = _sixteen_bit_values()
    path = tmp_path / f"gray16.{suffix}"
    Image.fromarray(values.astype(numpy_dtype)).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I;16")     # what PIL hands over, clipped by convert()
    rgb = _rgb_of(path)
    np.testing.assert_array_equal(rgb, _gray3(_scaled_reference(values)))
    assert (rgb < 255).mean() > 0.9


def test_16_bit_png_written_without_pil(tmp_path):
    values = _sixteen_bit_values()
    np.testing.assert_array_equal(_rgb_of(_png16(tmp_path / "g.png", values, 0)),
                                  _gray3(_scaled_reference(values)))
    rgb16 = np.stack([values, values[::-1], 65535 - values], axis=2)
    rgb = _rgb_of(_png16(tmp_path / "rgb.png", rgb16, 2))
    # Pillow reads 16-bit RGB as 8-bit (the high byte): within 1 of the scaled value.
    assert np.abs(rgb.astype(int) - _scaled_reference(rgb16)).max() <= 1


def test_32_bit_integer_mode_i(tmp_path):
    values = _sixteen_bit_values().astype(np.int32)
    path = tmp_path / "int32.tif"
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode == "I"
    np.testing.assert_array_equal(_rgb_of(path), _gray3(_scaled_reference(values)))
    values[0, 1] = 70000
    Image.fromarray(values).save(path)
    with pytest.raises(ImageReadError, match=r"int32.tif has PIL mode I with values in "
                                             r"\[0, 70000\]"):
        read_image_bgr(path)


def test_float_mode_f_rule(tmp_path):
    unit = RNG.random((5, 7)).astype(np.float32)
    unit[0, :2] = (0.0, 1.0)
    path = tmp_path / "float.tif"
    Image.fromarray(unit).save(path)
    np.testing.assert_array_equal(_rgb_of(path), _gray3(np.rint(unit * np.float32(255))))
    wide = (unit * 254 + 1).astype(np.float32)     # max > 1: already 0..255
    Image.fromarray(wide).save(path)
    np.testing.assert_array_equal(_rgb_of(path), _gray3(np.rint(wide)))
    for bad in (-0.5, 300.0, np.nan):
        broken = wide.copy()
        broken[1, 1] = bad
        Image.fromarray(broken).save(path)
        with pytest.raises(ImageReadError, match=r"float.tif has PIL mode F \(32-bit float\) "
                                                 r"with values in"):
            read_image_bgr(path)


def _eight_bit_cases():
    rgb = RNG.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    alpha = rgb[:, :, 1]
    bits = gray > 127
    palette = RNG.integers(0, 256, size=(256, 3), dtype=np.uint8)
    cmyk = RNG.integers(0, 256, size=(4, 6, 4), dtype=np.uint8)
    ycc = RNG.integers(16, 240, size=(4, 6, 3), dtype=np.uint8)

    def with_palette(transparency):
        image = Image.fromarray(gray, "L").convert("P")
        image.putpalette(palette.tobytes())
        if transparency is not None:
            image.info["transparency"] = transparency
        return image

    y, cb, cr = (ycc[:, :, k].astype(np.float64) for k in range(3))
    ycc_reference = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128)
                              - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)], axis=2)
    k = 255 - cmyk[:, :, 3:].astype(np.float64)
    return [
        # (name, PIL image to save, file suffix, reference RGB, tolerance)
        ("1", Image.fromarray(bits), "png", _gray3(bits * 255), 0),
        ("L", Image.fromarray(gray), "png", _gray3(gray), 0),
        ("LA", Image.fromarray(np.dstack([gray, alpha]), "LA"), "png", _gray3(gray), 0),
        ("RGBA", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "png", rgb, 0),
        ("P", with_palette(None), "png", palette[gray], 0),
        ("P+tRNS index", with_palette(3), "png", palette[gray], 0),
        ("P+tRNS bytes", with_palette(bytes(range(0, 256, 16))), "png", palette[gray], 0),
        ("CMYK", Image.fromarray(cmyk, "CMYK"), "tif",
         np.rint((255 - cmyk[:, :, :3]) * k / 255), 0),
        ("YCbCr", Image.fromarray(ycc, "YCbCr"), "tif", np.clip(ycc_reference, 0, 255), 1),
        ("RGB", Image.fromarray(rgb), "png", rgb, 0),
    ]


@pytest.mark.parametrize("case", _eight_bit_cases(), ids=lambda case: case[0])
def test_8_bit_modes_match_a_numpy_reference(tmp_path, case):
    name, image, suffix, reference, tolerance = case
    path = tmp_path / f"image.{suffix}"
    image.save(path)
    with Image.open(path) as reread:
        assert reread.mode == name.split("+")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # e.g. Pillow's warning on palette transparency
        rgb = _rgb_of(path)
    assert rgb.shape == reference.shape[:2] + (3,) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - np.rint(reference).astype(int)).max() <= tolerance


# A small COCO dataset on disk -------------------------------------------------------------


def _write_dataset(root, sizes, name="parts"):
    """PNG images of the given (height, width) plus a COCO JSON listing them."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for k, (height, width) in enumerate(sizes, start=1):
        pixels = RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / f"{k}.png")
        images.append({"id": k, "file_name": f"{k}.png", "height": height, "width": width})
    annotations = [{"id": k, "image_id": k, "category_id": 1, "bbox": [1, 1, 8, 8],
                    "area": 64, "iscrowd": 0} for k in range(1, len(sizes) + 1)]
    annotation_file = root / "annotations.json"
    annotation_file.write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": 1, "name": "bolt"}]}))
    return annotation_file, image_dir


def _break(image_dir):
    """Make 2.png missing, 3.png truncated (header intact) and 4.png 30x20 (annotated 40x30)."""
    (image_dir / "2.png").unlink()
    data = (image_dir / "3.png").read_bytes()
    (image_dir / "3.png").write_bytes(data[:len(data) // 2])
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image_dir / "4.png")


SIZES = [(40, 30)] * 5
EXPECTED_PROBLEMS = [
    (r"2\.png", r"not found"),
    (r"3\.png", r"cannot be decoded \(image file is truncated"),
    (r"4\.png", r"is 30x20 but its annotation says 30x40"),
]


def _assert_lists_all_problems(message, dataset_label):
    assert message.startswith(f"3 problem(s) with the 5 images of {dataset_label}")
    lines = message.splitlines()[1:]
    assert len(lines) == 3
    for line, (name, problem) in zip(lines, EXPECTED_PROBLEMS):
        assert re.fullmatch(rf"  \S+/images/{name}: {problem}.*", line), line


def test_verify_images_lists_every_bad_file_at_once(tmp_path):
    annotation_file, image_dir = _write_dataset(tmp_path, SIZES)
    records = load_coco_json(annotation_file, image_dir).records
    assert verify.verify_images(records, workers=2) == (5, 5)
    _break(image_dir)
    with pytest.raises(DatasetError) as error:
        verify.verify_images(records, workers=2, what="dataset 'parts'")
    _assert_lists_all_problems(str(error.value), "dataset 'parts'")


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """The dataset 'parts' registered under a data root in tmp_path (a private catalog)."""
    monkeypatch.setattr(catalog, "_CATALOG", dict(catalog._CATALOG))
    root = tmp_path / "data"
    annotation_file, image_dir = _write_dataset(root / "parts", SIZES)
    catalog.register_coco_dataset("parts", "parts/annotations.json", "parts/images",
                                  category_names=("bolt",))
    return root, annotation_file, image_dir


def test_cli_verify(registered, capsys):
    root, annotation_file, image_dir = registered
    assert main(["data", "parts", "--verify", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(annotation_file)
    assert out[1].startswith("parts: OK, 5 images checked") and "(5 decoded" in out[1]
    assert main(["data", "parts", "--verify", "--data-root", str(root)]) == 0
    assert "(0 decoded, 5 unchanged" in capsys.readouterr().out

    _break(image_dir)
    assert main(["data", "parts", "--verify", "--data-root", str(root)]) == 2
    captured = capsys.readouterr()
    assert "OK" not in captured.out
    message = captured.err.removeprefix("detectron data: error: ")
    _assert_lists_all_problems(message, "dataset 'parts'")


def test_cache_skips_unchanged_images_and_rechecks_changed_ones(registered, monkeypatch):
    root, annotation_file, image_dir = registered
    decoded = []
    real_decode = verify.decode_image_size
    monkeypatch.setattr(verify, "decode_image_size",
                        lambda path: decoded.append(os.path.basename(path)) or real_decode(path))

    assert verify.verify_dataset_images("parts", root) == (5, 5)
    cache_file = verify.cache_path_for(annotation_file)
    assert sorted(json.loads(cache_file.read_text())["images"]) == sorted(
        str(image_dir / f"{k}.png") for k in range(1, 6))
    decoded.clear()
    assert verify.verify_dataset_images("parts", root) == (5, 0)
    assert decoded == []

    # A touched file (same bytes, new mtime) and a rewritten one (same mtime, new size).
    stat = (image_dir / "1.png").stat()
    os.utime(image_dir / "1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    stat = (image_dir / "2.png").stat()
    (image_dir / "2.png").write_bytes((image_dir / "2.png").read_bytes()[:200])
    os.utime(image_dir / "2.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(DatasetError, match=r"2\.png: cannot be decoded"):
        verify.verify_dataset_images("parts", root)
    assert sorted(decoded) == ["1.png", "2.png"]
    decoded.clear()
    with pytest.raises(DatasetError, match=r"1 problem\(s\)"):   # bad files stay uncached
        verify.verify_dataset_images("parts", root)
    assert decoded == ["2.png"]

    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(image_dir / "2.png")
    decoded.clear()
    assert verify.verify_dataset_images("parts", root) == (5, 1) and decoded == ["2.png"]
    decoded.clear()
    assert verify.verify_dataset_images("parts", root, recheck=True) == (5, 5)
    assert sorted(decoded) == [f"{k}.png" for k in range(1, 6)]


def test_training_loader_checks_images_before_the_first_batch(registered):
    root, annotation_file, image_dir = registered
    cfg = get_default_cfg()
    cfg.DATA_ROOT = str(root)
    cfg.TRAIN.DATASETS = ("parts",)
    cfg.TRAIN.SCALES = (32,)
    cfg.TRAIN.MAX_SIZE = 64
    cfg.DATA_LOADER.NUM_THREADS = 0
    assert len(next(iter(build_train_loader(cfg))).images) == cfg.TRAIN.IMS_PER_BATCH
    assert verify.cache_path_for(annotation_file).is_file()
    _break(image_dir)
    with pytest.raises(DatasetError) as error:
        build_train_loader(cfg)
    _assert_lists_all_problems(str(error.value), "dataset 'parts'")


def _rank_main(rank, init_file, annotation_file, image_dir, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    decoded = []
    real_decode = verify.decode_image_size
    verify.decode_image_size = lambda path: decoded.append(path) or real_decode(path)
    records = load_coco_json(annotation_file, image_dir).records
    result = verify.find_image_problems(records, verify.cache_path_for(annotation_file),
                                        workers=1, rank=rank, world_size=2)
    (out_dir / f"{rank}.json").write_text(json.dumps({"result": result, "decoded": decoded}))
    dist.destroy_process_group()


@pytest.mark.slow   # two spawned processes importing torch: about 8 s
def test_two_ranks_share_the_decoding_and_agree(tmp_path):
    annotation_file, image_dir = _write_dataset(tmp_path, SIZES)
    _break(image_dir)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(rank, tmp_path / "init", annotation_file,
                                                  image_dir, tmp_path)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["result"] == ranks[1]["result"]
    num_images, num_decoded, problems = ranks[0]["result"]
    assert (num_images, num_decoded) == (5, 3)      # 2.png is missing, 3.png fails to decode
    assert [os.path.basename(path) for path, _ in problems] == ["2.png", "3.png", "4.png"]
    # Each existing image was decoded by exactly one rank.
    assert sorted(ranks[0]["decoded"] + ranks[1]["decoded"]) == sorted(
        str(image_dir / f"{k}.png") for k in (1, 3, 4, 5))
    assert ranks[0]["decoded"] and ranks[1]["decoded"]
    cached = json.loads(verify.cache_path_for(annotation_file).read_text())["images"]
    assert sorted(os.path.basename(path) for path in cached) == ["1.png", "4.png", "5.png"]
