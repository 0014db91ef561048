"""The public logs (marker `realdata`): the published u2i table of each data set's default spec,
given only the training part of the issue's split, against the peers a user would otherwise run
on the same split (bench/quality.py; `python -m bench.quality` is the full table with its own
splits too). Here the run's settings search is off, to keep the suite short, so the bound is looser
than the benchmark's 1.02: never below the best single peer, and above popularity."""
from __future__ import annotations

import pytest

from bench import quality

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def source():
    try:
        return quality.datasets.locate()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"public datasets not available here: {exc}")


@pytest.mark.parametrize("name", list(quality.SPLITS))
def test_published_table_beats_the_peers_on_the_issues_split(name, source, tmp_path):
    log = quality.load(name)
    split = quality.SPLITS[name][0]
    test = split.test(log)
    train, held_out = log[~test].reset_index(drop=True), log[test].reset_index(drop=True)
    lists, manifest, _ = quality.run_pipeline(name, train, tmp_path, ["autotune.every_days=0"])
    ours = quality.recall_at_k(lists, train, held_out)
    peers = quality.peers(train, held_out, name != "lastfm")
    best = max(peers, key=peers.get)
    print(f"{name} / {split.name}: published {ours:.4f}, best peer {best} {peers[best]:.4f}, blend "
          f"{manifest['blend']['weights']}")
    assert ours > peers["popularity"]
    assert ours >= peers[best], f"{name}: published {ours:.4f} < {best} {peers[best]:.4f}"
    metrics = manifest["metrics"]
    assert metrics["merged"]["recall"] >= metrics["popular_baseline"]["recall"]
