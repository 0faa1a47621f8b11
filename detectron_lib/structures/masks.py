"""Instance masks in COCO's two encodings: polygons and run-length encoding (RLE).

Coordinates are continuous image pixels: pixel (row r, column c) covers [c, c+1) x [r, r+1),
which is the convention pycocotools rasterizes polygons with. A polygon is a flat list
``[x0, y0, x1, y1, ...]``; an instance's polygons are a list of such lists. An RLE is a dict
``{"size": [h, w], "counts": str | bytes | list}`` (compressed or uncompressed, as in COCO).
"""
import numpy as np
import pycocotools.mask as mask_util


def is_rle(segm):
    """Whether ``segm`` is an RLE dict (as opposed to a list of polygons)."""
    return isinstance(segm, dict)


def polygons_to_bitmap(polygons, height, width):
    """Rasterize one instance's polygons. Returns (height, width) uint8 in {0, 1}."""
    polygons = [np.asarray(p, dtype=np.float64).tolist() for p in polygons if len(p) >= 6]
    if not polygons:
        return np.zeros((height, width), dtype=np.uint8)
    rles = mask_util.frPyObjects(polygons, height, width)
    return mask_util.decode(mask_util.merge(rles))


def rle_to_bitmap(rle):
    """Decode a compressed or uncompressed RLE. Returns (h, w) uint8 in {0, 1}."""
    if isinstance(rle["counts"], list):
        height, width = rle["size"]
        rle = mask_util.frPyObjects(rle, height, width)
    return mask_util.decode(rle)


def bitmap_to_rle(bitmap):
    """Encode a (h, w) binary mask as compressed RLE with str counts (JSON-serializable)."""
    rle = mask_util.encode(np.asfortranarray(bitmap.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def segm_to_bitmap(segm, height, width):
    """Decode polygons or an RLE into a (height, width) uint8 mask."""
    return rle_to_bitmap(segm) if is_rle(segm) else polygons_to_bitmap(segm, height, width)


def segm_area(segm, height, width):
    """Number of pixels the segmentation covers once rasterized (COCO's definition of area)."""
    return int(segm_to_bitmap(segm, height, width).sum())


def scale_polygons(polygons, scale):
    """Multiply every coordinate by ``scale`` (for an image resized by ``scale``)."""
    return [(np.asarray(p, dtype=np.float64) * scale).tolist() for p in polygons]


def resize_rle(rle, height, width):
    """Resize an RLE mask to (height, width) by nearest-neighbour sampling at pixel centres."""
    bitmap = rle_to_bitmap(rle)
    src_h, src_w = bitmap.shape
    rows = np.minimum(((np.arange(height) + 0.5) * src_h / height).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * src_w / width).astype(np.int64), src_w - 1)
    return bitmap_to_rle(bitmap[rows][:, cols])


def flip_polygons(polygons, last_x):
    """Mirror polygons left-right: x -> last_x - x, for ``last_x`` the image's last x
    coordinate in the box convention (BoxConvention.last: width or, for Detectron's pixel
    indices, width - 1)."""
    flipped = []
    for polygon in polygons:
        p = np.asarray(polygon, dtype=np.float64).copy()
        p[0::2] = last_x - p[0::2]
        flipped.append(p.tolist())
    return flipped


def flip_rle(rle):
    """Mirror an RLE mask left-right."""
    return bitmap_to_rle(rle_to_bitmap(rle)[:, ::-1])


def flip_segm(segm, last_x):
    """Mirror a segmentation (polygons or RLE) left-right; see ``flip_polygons``."""
    return flip_rle(segm) if is_rle(segm) else flip_polygons(segm, last_x)


def scale_segm(segm, scale, height, width):
    """Scale a segmentation for an image resized by ``scale`` to (height, width) pixels."""
    return resize_rle(segm, height, width) if is_rle(segm) else scale_polygons(segm, scale)


def polygons_to_mask_in_box(polygons, box, mask_size):
    """Rasterize polygons into an MxM grid spanning ``box`` (a mask-head training target).

    Args:
        polygons: one instance's polygons in image pixels.
        box: (4,) x1y1x2y2 in image pixels, e.g. a foreground proposal.
        mask_size: M.
    Returns:
        (M, M) uint8 in {0, 1}. Shifting and scaling the polygon before rasterizing (rather
        than cropping a full-image bitmap) keeps the target sharp for small boxes.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    scale_x = mask_size / max(x2 - x1, 1e-6)
    scale_y = mask_size / max(y2 - y1, 1e-6)
    local = []
    for polygon in polygons:
        p = np.asarray(polygon, dtype=np.float64).copy()
        p[0::2] = (p[0::2] - x1) * scale_x
        p[1::2] = (p[1::2] - y1) * scale_y
        local.append(p)
    return polygons_to_bitmap(local, mask_size, mask_size)


def bitmap_to_mask_in_box(bitmap, box, mask_size):
    """Crop a full-image (h, w) binary mask to ``box`` and resize to (M, M) uint8 in {0, 1}.

    Bilinear sampling at the centres of the MxM cells (RoIAlign with one sample per cell and
    half-pixel alignment), thresholded at 0.5: the RLE counterpart of
    ``polygons_to_mask_in_box``. Plain numpy, so dataset workers need not import torch.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    cells = np.arange(mask_size, dtype=np.float64) + 0.5
    xs = x1 + cells * (x2 - x1) / mask_size - 0.5   # sample points in pixel-index space
    ys = y1 + cells * (y2 - y1) / mask_size - 0.5
    values = _bilinear(np.asarray(bitmap, dtype=np.float32), ys, xs)
    return (values >= 0.5).astype(np.uint8)


def _bilinear(image, ys, xs):
    """Sample (h, w) ``image`` on the grid ys x xs; points beyond half a pixel outside are 0."""
    height, width = image.shape

    def weights(coords, size):
        inside = (coords >= -1.0) & (coords <= size)
        coords = np.clip(coords, 0.0, size - 1)
        low = np.floor(coords).astype(np.int64)
        high = np.minimum(low + 1, size - 1)
        frac = coords - low
        return low, high, frac, inside

    y0, y1, fy, in_y = weights(ys, height)
    x0, x1, fx, in_x = weights(xs, width)
    top = image[y0][:, x0] * (1 - fx) + image[y0][:, x1] * fx
    bottom = image[y1][:, x0] * (1 - fx) + image[y1][:, x1] * fx
    values = top * (1 - fy)[:, None] + bottom * fy[:, None]
    return values * (in_y[:, None] & in_x[None, :])


def segm_to_mask_in_box(segm, box, mask_size, height, width):
    """MxM target for ``box`` from polygons or an RLE of an image of (height, width)."""
    if is_rle(segm):
        return bitmap_to_mask_in_box(rle_to_bitmap(segm), box, mask_size)
    return polygons_to_mask_in_box(segm, box, mask_size)


def bitmap_tight_box(bitmap):
    """Tight (4,) float32 x1y1x2y2 box of a binary mask's nonzero pixels, or None if empty."""
    rows = np.flatnonzero(bitmap.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(bitmap.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def bitmap_to_polygon(bitmap):
    """One polygon that rasterizes back to exactly ``bitmap``, or None if there is none.

    Traces the outer boundary along pixel edges (integer corner coordinates, which pycocotools
    rasterizes exactly). Returns None when the mask is empty, has several 4-connected parts or
    holes (several boundary loops), or when the traced loop does not reproduce the mask.
    """
    loops = _boundary_loops(bitmap)
    if len(loops) != 1:
        return None
    polygon = _drop_collinear(np.asarray(loops[0], dtype=np.float64)).ravel().tolist()
    height, width = bitmap.shape
    if not np.array_equal(polygons_to_bitmap([polygon], height, width), bitmap.astype(np.uint8)):
        return None
    return polygon


def _boundary_loops(bitmap):
    """Closed loops of pixel-corner vertices separating foreground from background.

    Each boundary edge is oriented with the foreground on its right (in y-down coordinates);
    at a corner shared by two diagonal pixels, the walk turns right so that one 4-connected
    region yields one loop.
    """
    m = np.pad(np.asarray(bitmap, dtype=bool), 1)
    inner = m[1:-1, 1:-1]
    outgoing = {}
    edge_sets = (
        (inner & ~m[:-2, 1:-1], (0, 0), (1, 0)),   # top side: walk right
        (inner & ~m[1:-1, 2:], (1, 0), (1, 1)),    # right side: walk down
        (inner & ~m[2:, 1:-1], (1, 1), (0, 1)),    # bottom side: walk left
        (inner & ~m[1:-1, :-2], (0, 1), (0, 0)),   # left side: walk up
    )
    for sides, (ax, ay), (bx, by) in edge_sets:
        for r, c in zip(*np.nonzero(sides)):
            c, r = int(c), int(r)
            outgoing.setdefault((c + ax, r + ay), []).append((c + bx, r + by))
    loops = []
    while outgoing:
        start = next(iter(outgoing))
        loop, current, direction = [start], start, None
        while True:
            candidates = outgoing[current]
            if len(candidates) == 1 or direction is None:
                nxt = candidates.pop()
            else:
                def right_turn(p, cur=current, d=direction):
                    return d[0] * (p[1] - cur[1]) - d[1] * (p[0] - cur[0])
                nxt = max(candidates, key=right_turn)
                candidates.remove(nxt)
            if not candidates:
                del outgoing[current]
            direction = (nxt[0] - current[0], nxt[1] - current[1])
            current = nxt
            if current == start:
                break
            loop.append(current)
        loops.append(loop)
    return loops


def _drop_collinear(points):
    """Remove vertices lying on a straight run. points: (V, 2) -> (V', 2)."""
    incoming = points - np.roll(points, 1, axis=0)
    outgoing = np.roll(points, -1, axis=0) - points
    cross = incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]
    return points[cross != 0]
