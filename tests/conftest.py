"""Shared fixtures. The environment is made offline and isolated before any HF library is imported."""

import os
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="inat_zoo_tests_"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["HF_HOME"] = str(_HOME / "hf_home")  # no user accelerate config, datasets cache or token leaks in
os.environ["INAT_ZOO_CACHE"] = str(_HOME / "inat_zoo_cache")
os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_DIR"] = str(_HOME / "wandb")
os.environ["MPLBACKEND"] = "Agg"
os.environ.pop("HF_TOKEN", None)

import torch  # noqa: E402  (after the environment above)

# The models in the tests are tiny: one intra-op thread is faster than two fighting over a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """A tiny synthetic folder in the nature_12K layout (train/ and val/), shared by the whole session."""
    from inat_zoo.data.sample import write_sample

    root = tmp_path_factory.mktemp("sample")
    write_sample(root, train_per_class=12, test_per_class=4, min_side=40, max_side=72, seed=0)
    return root
