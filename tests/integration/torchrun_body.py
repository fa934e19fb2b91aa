"""A script for ``torchrun`` (test_torch_backend.test_under_torchrun): env:// rendezvous, the backend
"netagg" with NETAGG_SWITCH from the environment; each rank writes what it got to DIR/rank<r>.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import host_agent  # noqa: F401  (registers the backend)


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("netagg")  # RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.full((8,), float(rank + 1))
    dist.all_reduce(t)
    gathered = torch.empty(world, dtype=torch.int64)
    dist.all_gather_into_tensor(gathered, torch.tensor([rank]))
    got = {
        "sum": t.tolist(),
        "gathered": gathered.tolist(),
        "backend": dist.get_backend(),
        "stats": getattr(dist.group.WORLD, "stats")(),  # noqa: B009 (a NetAggProcessGroup method)
    }
    dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(got))


if __name__ == "__main__":
    main(sys.argv[1])
