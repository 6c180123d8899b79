"""`train` under torchrun: two gloo CPU processes must reach the weights of one process with the same global batch.

The run includes a `Distiller` with a width adapter (a trainable tensor outside the DDP module), so the broadcast of
its initial value and the averaging of its gradients are checked too.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from prunekit.io import load_tensors
from prunekit.train import checkpoint as ckpt
from prunekit.train.loop import TrainConfig, train

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
N_TRAIN, PER_RANK_BATCH, EPOCHS = 384, 16, 2  # 384 is a multiple of the global batch 32: no padded batch

COMMON = textwrap.dedent(
    f"""
    import torch
    from sklearn.datasets import load_digits
    from torch import nn
    from torch.utils.data import TensorDataset

    from prunekit.train.distill.taps import Distiller, DistillTerm

    def dataset():
        d = load_digits()
        x = torch.tensor(d.data[:{N_TRAIN}], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        return TensorDataset(x, torch.tensor(d.target[:{N_TRAIN}], dtype=torch.long))

    def conv_net(width, seed):
        torch.manual_seed(seed)  # no BatchNorm: per-rank batch statistics would differ from the global batch
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(width * 64, 10))

    def model():
        return conv_net(4, 7)

    def distiller():
        terms = [DistillTerm("cwd", {{"tau": 2.0}}, student=("1",)), DistillTerm("logit_kd", weight=0.5)]
        return Distiller(conv_net(8, 11), terms)
    """
)

SCRIPT = COMMON + textwrap.dedent(
    f"""
    import json, os, sys
    torch.set_num_threads(1)
    from prunekit.io import save_tensors
    from prunekit.train.loop import TrainConfig, train

    out = sys.argv[1]
    net, dist = model(), distiller()
    cfg = TrainConfig(epochs={EPOCHS}, batch_size={PER_RANK_BATCH}, lr=0.1, momentum=0.9, device="cpu",
                      seed=3, progress=False, checkpoint_dir=out + "/ckpt", checkpoint_every=1, log_every=1)
    result = train(net, dataset(), cfg, hooks=[dist])
    rank = int(os.environ["RANK"])
    with open(f"{{out}}/rank{{rank}}.json", "w") as f:
        json.dump({{"world": int(os.environ["WORLD_SIZE"]), "steps": result.steps, "final_loss": result.final_loss,
                   "epoch_losses": [m["train_loss"] for m in result.epoch_metrics]}}, f)
    if rank == 0:
        save_tensors(out + "/final.safetensors", {{**net.state_dict(), **dist.state_dict()}})
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process_with_global_batch(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    steps = EPOCHS * N_TRAIN // (2 * PER_RANK_BATCH)
    assert all(r["world"] == 2 and r["steps"] == steps for r in ranks)  # the data really was sharded
    assert ranks[0]["epoch_losses"] == ranks[1]["epoch_losses"]  # metrics are averaged over ranks
    # checkpoints come from rank 0 only, one per epoch (the last two kept)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "ckpt")] == [
        f"step-{steps // 2:08d}", f"step-{steps:08d}"]

    namespace = {}
    exec(COMMON, namespace)
    single, dist = namespace["model"](), namespace["distiller"]()
    cfg = TrainConfig(epochs=EPOCHS, batch_size=2 * PER_RANK_BATCH, lr=0.1, momentum=0.9, device="cpu", seed=3,
                      progress=False)
    result = train(single, namespace["dataset"](), cfg, hooks=[dist])
    assert result.steps == steps
    ddp_state = load_tensors(tmp_path / "final.safetensors")
    torch.manual_seed(3)  # the loop's seed: the adapter's initial value
    start = {**namespace["model"]().state_dict(), "adapters.1.weight": torch.nn.Conv2d(4, 8, 1, bias=False).weight}
    final = {**single.state_dict(), **dist.state_dict()}
    assert set(final) == set(ddp_state) and "adapters.1.weight" in final
    for k, v in final.items():
        assert (v - start[k]).abs().max() > 1e-2, f"{k} did not train"
        assert torch.allclose(ddp_state[k], v, atol=2e-5, rtol=0), (k, (ddp_state[k] - v).abs().max())
    assert abs(ranks[0]["final_loss"] - result.final_loss) < 1e-5
