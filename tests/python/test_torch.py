"""PyTorch DataLoader workers (forked) calling forksafe from Dataset.__getitem__."""

from __future__ import annotations

import os
from typing import Any

import forksafe
import forkutil
import pytest


def _import_torch() -> Any:
    try:
        import torch
        import torch.utils.data
    except ImportError as error:
        pytest.skip(f"torch is not installed: {error}")
    return torch


class _ForksafeDataset:
    """Each item goes through both layers inside a DataLoader worker."""

    def __init__(self, values: list[str]) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> dict[str, Any]:
        v = self.values[index]
        echoed, slept, worker_pid = forksafe.run(forkutil.probe(v))
        return {
            "index": index,
            "pid": os.getpid(),
            "echo": echoed,
            "sleep": slept,
            "worker_pid": worker_pid,
            "echo_sync": forksafe.testing.echo_sync(v),
            "fork_local": list(forkutil.CLIENT.get()),
            "info": forksafe.runtime_info(),
        }


def test_dataloader_fork_workers(parent_report: dict[str, Any]) -> None:
    torch = _import_torch()
    values = [forkutil.new_value(f"torch-{i}") for i in range(8)]

    class ForksafeDataset(_ForksafeDataset, torch.utils.data.Dataset):
        pass

    loader = torch.utils.data.DataLoader(
        ForksafeDataset(values),
        batch_size=None,  # items as they are, no collation into tensors
        num_workers=2,
        multiprocessing_context="fork",
        timeout=forkutil.CHILD_DEADLINE,  # a hung worker raises instead of hanging the test
    )
    try:
        items = list(loader)
    except RuntimeError as error:
        if "timed out" not in str(error):
            raise
        pytest.fail(f"child hung: a forked DataLoader worker stalled: {error}", pytrace=False)
    assert sorted(item["index"] for item in items) == list(range(len(values)))
    worker_pids = set()
    for item in items:
        v = values[item["index"]]
        pid = item["pid"]
        worker_pids.add(pid)
        assert pid != parent_report["pid"]
        assert item["echo"] == v
        assert item["sleep"] == v
        assert item["echo_sync"] == v
        assert item["worker_pid"] == pid
        assert item["fork_local"] == ["client", pid]
        info = item["info"]
        assert info["pid"] == pid
        assert info["runtimes_built"] == 1
        assert info["loops_built"] == 1
        assert info["depth"] == parent_report["info"]["depth"] + 1
        assert list(info["inherited_runtimes"][0]) == [parent_report["pid"], 1]
    assert 1 <= len(worker_pids) <= 2
    forkutil.exercise_parent()
