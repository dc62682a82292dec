"""Thread counts: torch_threads sets torch's intra-op threads for a block and always restores them."""

from __future__ import annotations

import pytest
import torch

from padim.utils.cpus import torch_threads


def test_torch_threads_sets_the_count_inside_and_restores_it_after_an_error() -> None:
    outer = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == outer
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == outer
