"""Rank 1 of a two-rank gloo group whose rank 0 is dino-dist (tests/python_peer.rs).

Plain torch.distributed: init_process_group over tcp://, then the same collectives in the
same order as the Rust rank, checking the results against values written out by hand.
"""
import datetime
import sys

import torch
import torch.distributed as dist


def main() -> None:
    port = int(sys.argv[1])
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=1,
        world_size=2,
        timeout=datetime.timedelta(seconds=30),
    )
    # Rust's rank 0 holds [0.25, -3, 100, 1]; this rank holds the values below.
    t = torch.tensor([1.5, 2.0, -50.0, 1.0], dtype=torch.float32)
    dist.all_reduce(t)
    assert torch.equal(t, torch.tensor([1.75, -1.0, 50.0, 2.0])), t

    b = torch.zeros(2, 3, dtype=torch.float64)
    dist.broadcast(b, src=0)
    assert torch.equal(b, torch.arange(6, dtype=torch.float64).reshape(2, 3) * 1.5), b

    from_python = torch.tensor([11, -22, 33], dtype=torch.int64)
    dist.broadcast(from_python, src=1)

    gathered = [torch.empty(2, dtype=torch.int32) for _ in range(2)]
    dist.all_gather(gathered, torch.tensor([5, 6], dtype=torch.int32))
    assert [g.tolist() for g in gathered] == [[1, 2], [5, 6]], gathered

    dist.barrier()
    dist.destroy_process_group()
    print("python rank 1: all checks passed")


if __name__ == "__main__":
    main()
