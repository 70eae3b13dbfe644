"""Distributed training: 2 CPU processes (gloo) under torchrun give the single-process SFT.

Design of the comparison (why it is exact up to float summation order):

* the reference is ONE process with batch 2b; the distributed run is 2 processes with batch b each.
  accelerate shards the same seeded sample order batch by batch (rank 0 gets batches 0, 2, …, rank 1
  gets 1, 3, …), so each optimizer step of the distributed run sees exactly the 2b examples of the
  reference step;
* the loss is a sum over labelled tokens divided by the *global* count (``num_items_in_batch``), so
  DDP's gradient average equals the reference gradient even when ranks hold different token counts;
* no dropout, and the labels are fixed in the data (no random masking in the collator).

The two ranks must agree exactly (DDP keeps their weights identical; the mask is a deterministic
function of them); the SFT must match the reference's mask exactly and its values to 1e-5.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import torch

from sftkit.format import load_file
from sftkit.testing import tiny_masked_lm
from sftkit.training.config import SFTTrainingConfig
from sftkit.training.procedure import train_sft

SCRIPT = textwrap.dedent(
    '''
    import os, sys
    import torch
    from sftkit.format import save_file
    from sftkit.testing import tiny_masked_lm
    from sftkit.training.config import SFTTrainingConfig
    from sftkit.training.procedure import train_sft, is_main_process

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ddp_common import dataset, stack, settings

    model = tiny_masked_lm(seed=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config = SFTTrainingConfig(batch_size=4, ddp_backend="gloo", use_cpu=True, **settings())
    sft = train_sft(model, dataset(), stack, config, kind="language", progress=False)
    rank = int(os.environ["RANK"])
    save_file(sft, os.path.join(sys.argv[1], f"rank{rank}.safetensors"))
    print("rank", rank, "main", is_main_process(), "world", sft.metadata.hyperparameters["world_size"])
    '''
)

COMMON = textwrap.dedent(
    '''
    import torch

    def dataset(n=32, length=10, seed=0):
        gen = torch.Generator().manual_seed(seed)
        items = []
        for _ in range(n):
            ids = torch.randint(5, 120, (length,), generator=gen)
            labels = torch.full((length,), -100)
            count = 1 + int(torch.randint(0, 4, (1,), generator=gen))  # ranks see different token counts
            positions = torch.randperm(length, generator=gen)[:count]
            labels[positions] = ids[positions]
            inputs = ids.clone()
            inputs[positions] = 4
            items.append({"input_ids": inputs, "attention_mask": torch.ones(length, dtype=torch.long), "labels": labels})
        return items

    def stack(features):
        return {k: torch.stack([f[k] for f in features]) for k in features[0]}

    def settings():
        return dict(num_params=400, full_steps=3, sparse_steps=3, learning_rate=5e-3, weight_decay=0.1, logging_steps=50)
    '''
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_single_process_reference(tmp_path):
    (tmp_path / "ddp_common.py").write_text(COMMON)
    (tmp_path / "ddp_train.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(tmp_path / "ddp_train.py"), str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "world 2" in done.stdout and "main True" in done.stdout and "main False" in done.stdout

    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # bit-identical on both ranks

    sys.path.insert(0, str(tmp_path))
    try:
        from ddp_common import dataset, settings, stack
    finally:
        sys.path.remove(str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_masked_lm(seed=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        reference = train_sft(
            model, dataset(), stack, SFTTrainingConfig(batch_size=8, **settings()), kind="language", progress=False
        )
    finally:
        torch.set_num_threads(threads)

    distributed = ranks[0]
    assert distributed.nnz == reference.nnz == 400
    assert distributed.deltas.keys() == reference.deltas.keys()
    for name, delta in reference.deltas.items():
        assert torch.equal(distributed.deltas[name].indices, delta.indices), name
        torch.testing.assert_close(distributed.deltas[name].values, delta.values, rtol=1e-4, atol=1e-5)
    for name, tensor in reference.dense.items():
        torch.testing.assert_close(distributed.dense[name], tensor, rtol=1e-4, atol=1e-5)
    assert distributed.metadata.hyperparameters["global_batch_size"] == 8
    assert reference.metadata.hyperparameters["world_size"] == 1
