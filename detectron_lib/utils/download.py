"""Files named by URL (weights, proposal files), fetched once into a local cache.

``cached_path(path_or_url, cache_dir)`` returns local paths unchanged and maps a URL onto
``<cache_dir>/<host>/<url path>``, downloading it there on first use. Downloads are atomic
(written beside the target, then renamed) and checked: the byte count against the server's
Content-Length, and, for torch.hub-style names ``<name>-<hex>.<ext>`` (torchvision's weight
files, e.g. ``resnet50-0676ba61.pth``), the SHA-256 digest against that hex prefix.

With ``DETECTRON_OFFLINE=1`` in the environment (or inside ``offline_downloads()``, as the
zoo's train jobs run: the DAG's fetch_weights jobs fill their cache) a URL missing from the
cache is an error naming the URL and where to put the file, never a download.
"""
import contextlib
import hashlib
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from detectron_lib.errors import DetectronError
from detectron_lib.utils.io import atomic_write

URL_SCHEMES = ("http", "https", "ftp")
# torch.hub's convention: the file name ends in the first hex digits of its SHA-256
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.[A-Za-z0-9]+$")
_CHUNK = 1 << 20
OFFLINE_ENV = "DETECTRON_OFFLINE"


class DownloadError(DetectronError):
    """A URL cannot be fetched, or the fetched file fails its check."""


def is_url(path):
    return urllib.parse.urlparse(str(path)).scheme in URL_SCHEMES


def cache_path_for(url, cache_dir):
    """Where ``url`` is cached: ``<cache_dir>/<host>/<path of the url>``."""
    parsed = urllib.parse.urlparse(url)
    parts = [p for p in parsed.path.split("/") if p not in ("", ".", "..")]
    if not parts:
        raise DownloadError(f"URL '{url}' names no file")
    return Path(cache_dir, parsed.netloc, *parts)


def cached_path(path_or_url, cache_dir, timeout=60):
    """A local path for ``path_or_url``: the path itself, or the cached download of the URL."""
    if not is_url(path_or_url):
        return Path(path_or_url)
    url = str(path_or_url)
    target = cache_path_for(url, cache_dir)
    if target.is_file():
        return target
    if os.environ.get(OFFLINE_ENV, "0") not in ("", "0"):
        raise DownloadError(
            f"'{url}' is not in the download cache and downloads are off ({OFFLINE_ENV}="
            f"{os.environ[OFFLINE_ENV]}). Download it on a host with internet access and put "
            f"it at '{target}' (in the model-zoo DAG the fetch_weights job does this on the "
            "submit host before any training starts)")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            with atomic_write(target, "wb") as f:
                shutil.copyfileobj(response, f, _CHUNK)
                size = f.tell()
                if expected is not None and size != int(expected):
                    raise DownloadError(f"download of '{url}' stopped after {size} of {expected} "
                                        "bytes; run again to retry")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"cannot download '{url}' ({reason}). Without internet access, fetch the file "
            f"elsewhere and put it at '{target}' (DOWNLOAD_CACHE is '{cache_dir}'), or give a "
            "local path instead of the URL") from None
    check_hash_in_name(target)
    return target


@contextlib.contextmanager
def offline_downloads():
    """Within the block, cached_path only reads its cache (sets DETECTRON_OFFLINE=1, then
    restores the variable)."""
    previous = os.environ.get(OFFLINE_ENV)
    os.environ[OFFLINE_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[OFFLINE_ENV]
        else:
            os.environ[OFFLINE_ENV] = previous


def check_hash_in_name(path):
    """Check ``path`` against the SHA-256 prefix its name carries, if any; a mismatching file
    is deleted and a DownloadError raised."""
    match = _HASH_IN_NAME.search(Path(path).name)
    if not match:
        return
    digest = file_sha256(path)
    if not digest.startswith(match.group(1)):
        Path(path).unlink()
        raise DownloadError(f"'{path}' does not match the SHA-256 prefix {match.group(1)} in its "
                            f"name (got {digest[:len(match.group(1))]}); the download "
                            "was corrupted and has been deleted, run again to retry")


def file_sha256(path):
    """The hex SHA-256 digest of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
