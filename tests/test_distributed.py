"""Data-parallel localisation under torchrun (gloo, 2 CPU processes) equals a single-process run."""

import json
import os
import subprocess
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from lakn.testing import save_tiny_model

    folder = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_model(folder, "llama")
    return folder


def _run(cmd, tmp_path):
    # the checkout under test first on the path (not whichever lakn is installed)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", LAKN_BACKEND="gloo", HF_HUB_OFFLINE="1", PYTHONPATH=path)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_torchrun_two_processes_equal_single_process(model_dir, tmp_path):
    from safetensors.torch import load_file

    data = os.path.join(os.path.dirname(__file__), "..", "lakn", "data", "demo.jsonl")
    args = ["localize", "--model", str(model_dir), "--data", os.path.abspath(data), "--n-facts", "5",
            "--languages", "en,zh", "--max-queries", "1", "--steps", "3"]
    _run([sys.executable, "-m", "lakn", *args, "--out", str(tmp_path / "single")], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
          "-m", "lakn", *args, "--out", str(tmp_path / "dist")], tmp_path)
    single = json.loads((tmp_path / "single" / "neurons.json").read_text())
    dist = json.loads((tmp_path / "dist" / "neurons.json").read_text())
    assert list(dist) == list(single) and len(single) == 5
    assert dist == single
    a = load_file(str(tmp_path / "single" / "scores.safetensors"))
    b = load_file(str(tmp_path / "dist" / "scores.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)
    # each rank computed a disjoint share: facts 0, 2, 4 on rank 0 and 1, 3 on rank 1
    ranks = {p.stem: json.loads(p.read_text())["rank"] for p in (tmp_path / "dist" / "facts").glob("*.json")}
    assert sorted(ranks.values()) == [0, 0, 0, 1, 1]
