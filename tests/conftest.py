import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


class Oracle:
    """A denoiser that knows the clean sentence: it returns the true x0 (or the ε consistent
    with it) whatever it is given, so every sampler must land exactly on the data."""

    def __init__(self, table: torch.Tensor, ids: torch.Tensor, process=None):
        self.table, self.ids, self.process = table, ids, process
        self.embed_dim = table.shape[1]
        self.device = table.device
        self.calls = 0

    def embed(self, ids):
        return self.table[ids]

    def logits(self, x):
        return (
            -torch.cdist(x.reshape(-1, x.shape[-1]), self.table).pow(2).reshape(*x.shape[:-1], -1)
            * 100
        )

    def __call__(self, x_t, t):
        self.calls += 1
        x0 = self.table[self.ids]
        if self.process is not None and self.process.prediction == "eps":
            return self.process.eps_from_x0(x_t, x0, t.double())
        return x0


@pytest.fixture
def oracle_factory():
    return Oracle


@pytest.fixture(scope="session")
def e2e_dir():
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.normpath(os.path.join(here, "..", "..", "shared", "data", "e2e"))
    if not os.path.isdir(path):
        pytest.skip("../shared/data/e2e is not beside the project")
    return path


@pytest.fixture(scope="session")
def small_e2e_files(tmp_path_factory, e2e_dir) -> str:
    """A ``--set`` value pointing a config at the first 200 training and 40 validation lines of
    E2E (copied to a temporary folder)."""
    from pathlib import Path

    folder = tmp_path_factory.mktemp("data")
    for name, source, n in (("train", "src1_train.txt", 200), ("valid", "src1_valid.txt", 40)):
        lines = Path(e2e_dir, source).read_text(encoding="utf-8").splitlines()[:n]
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f"data.data_files={{train: {folder / 'train.txt'}, validation: {folder / 'valid.txt'}}}"
