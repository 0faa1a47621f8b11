"""Weights named by URL as inputs of the model-zoo DAG: `detectron zoo fetch-weights` (the
fetch_weights rule, run on the submit host) downloads each URL once into results/weights/,
checked by size and by the SHA-256 prefix of a torch.hub-style name; a zoo training reads only
that cache and never the network, and offline its error names the URL and where to put the
file. A local http.server thread stands in for the publisher and counts the requests it gets;
the COCO zoo's plan (one fetch job per URL feeding its trainings) is in test_workflow_plan.
"""
import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from detectron_lib.config import load_config
from detectron_lib.engine.checkpoint import save_checkpoint
from detectron_lib.errors import ConfigError
from detectron_lib.modeling.meta_arch import build_model
from detectron_lib.utils.download import (
    OFFLINE_ENV,
    DownloadError,
    cached_path,
    file_sha256,
    offline_downloads,
)
from detectron_lib.zoo import steps
from detectron_lib.zoo.manifest import download_name, load_manifest
from test_workflow_dag import write_micro_zoo

BASELINE = "e2e_faster_rcnn_R-18-FPN_1x"   # the micro zoo's end-to-end baseline


class _Publisher(http.server.SimpleHTTPRequestHandler):
    """Serves its directory and counts GET requests; '/short/<n>' announces 100 bytes and
    sends n (a download cut short)."""

    requests = None   # a list per server, set by the fixture

    def do_GET(self):
        self.requests.append(self.path)
        if self.path.startswith("/short/"):
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"x" * int(self.path.rsplit("/", 1)[1]))
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def publisher(tmp_path):
    """(served folder, base URL, list of requested paths) of a local HTTP server."""
    root = tmp_path / "www"
    root.mkdir()
    requests = []
    handler = functools.partial(type("Handler", (_Publisher,), {"requests": requests}),
                                directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def publish_weights(root, config):
    """Initial weights of ``config``'s model, saved under a torch.hub-style name carrying
    their SHA-256 prefix; their path below ``root``."""
    model = build_model(load_config(config, ["MODEL.BODY_PRECISION", "float32"]))
    staged = root / "bodies" / "micro.pth"
    staged.parent.mkdir()
    save_checkpoint(staged, model)
    return staged.rename(staged.with_name(f"micro-{file_sha256(staged)[:8]}.pth"))


def detectron_zoo(workdir, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop(OFFLINE_ENV, None)
    return subprocess.run([sys.executable, "-m", "detectron_lib.cli", "zoo", *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_zoo_training_reads_the_fetched_file_and_never_the_network(tmp_path, publisher,
                                                                   monkeypatch):
    root, base, requests = publisher
    workdir = tmp_path / "zoo"
    manifest = write_micro_zoo(workdir)
    config = workdir / "configs" / f"{BASELINE}.yaml"
    weights = publish_weights(root, config)
    url = f"{base}/bodies/{weights.name}"
    document = yaml.safe_load(config.read_text())
    document["TRAIN"]["WEIGHTS"] = url
    config.write_text(yaml.safe_dump(document))
    monkeypatch.chdir(workdir)
    zoo = load_manifest(manifest)
    assert zoo.all_downloads() == {download_name(url): url}
    fetched = Path(zoo.layout.download(download_name(url)))
    assert zoo.download_inputs(BASELINE) == [str(fetched)]
    assert zoo.download_inputs("rpn_R-18-FPN_1x") == []

    # The fetch step: one download, checked (the name's SHA-256 prefix), into results/weights.
    assert steps.fetch_weights(zoo, url) == fetched
    assert fetched.read_bytes() == weights.read_bytes()
    assert str(fetched).startswith("results/weights/127.0.0.1:")
    assert requests == [f"/bodies/{weights.name}"]

    # The training reads the cache alone: DOWNLOAD_CACHE is the DAG's, downloads are off.
    Path(zoo.layout.experiment_file).parent.mkdir(parents=True)
    Path(zoo.layout.experiment_file).write_text('{"experiment_name": "micro"}')
    job = ["train", BASELINE, "--manifest", manifest, "--no-tracking"]
    proc = detectron_zoo(workdir, *job)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = yaml.safe_load(Path(zoo.layout.train_dir(BASELINE), "config.yaml").read_text())
    assert (trained["TRAIN"]["WEIGHTS"], trained["DOWNLOAD_CACHE"]) == (url, "results/weights")
    assert len(requests) == 1

    # Offline (the file not fetched): the error names the URL and where to put the file.
    fetched.unlink()
    proc = detectron_zoo(workdir, *job)
    assert proc.returncode == 2
    assert f"'{url}' is not in the download cache" in proc.stderr
    assert f"put it at '{fetched}'" in proc.stderr
    assert len(requests) == 1


def test_fetch_rejects_a_short_download_a_wrong_digest_and_a_foreign_url(tmp_path, publisher):
    root, base, _ = publisher
    (root / "resnet18-0123abcd.pth").write_bytes(b"not the file its name promises")
    urls = {"short": f"{base}/short/10", "hashed": f"{base}/resnet18-0123abcd.pth"}
    zoo = _zoo_reading(tmp_path, urls.values())
    with pytest.raises(DownloadError, match=r"stopped after 10 of 100 bytes; run again"):
        steps.fetch_weights(zoo, urls["short"])
    with pytest.raises(DownloadError, match="does not match the SHA-256 prefix 0123abcd"):
        steps.fetch_weights(zoo, urls["hashed"])
    for url in urls.values():   # nothing left that Snakemake would take for a finished job
        assert not Path(zoo.layout.download(download_name(url))).exists()
    with pytest.raises(ConfigError, match=r"no baseline's config reads 'http://elsewhere/x.pkl'"):
        steps.fetch_weights(zoo, "http://elsewhere/x.pkl")


def _zoo_reading(tmp_path, urls):
    """A manifest of one baseline per URL (a config giving it as TRAIN.WEIGHTS), results
    under tmp_path."""
    baselines = {}
    for i, url in enumerate(urls):
        config = tmp_path / f"retinanet_{i}.yaml"
        config.write_text(yaml.safe_dump({"TRAIN": {"WEIGHTS": url}}))
        baselines[f"retinanet_{i}"] = {"config": str(config), "section": "retinanet"}
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"name": "fetch", "table": "T.md", "baselines": baselines,
                                        "results_dir": str(tmp_path / "results")}))
    return load_manifest(manifest)


def test_offline_downloads_read_the_cache_only_and_restore_the_environment(tmp_path, publisher,
                                                                          monkeypatch):
    root, base, requests = publisher
    (root / "R-50.pkl").write_bytes(b"weights")
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    cache = tmp_path / "cache"
    with offline_downloads():
        with pytest.raises(DownloadError, match=rf"'{base}/R-50.pkl' is not in the download "
                                                rf"cache .* put it at '{cache}/127.0.0.1:"):
            cached_path(f"{base}/R-50.pkl", cache)
    assert requests == [] and OFFLINE_ENV not in os.environ
    path = cached_path(f"{base}/R-50.pkl", cache)   # online again: downloaded once
    with offline_downloads():
        assert cached_path(f"{base}/R-50.pkl", cache) == path
    assert requests == ["/R-50.pkl"]
