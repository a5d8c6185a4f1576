"""A training run for the resume tests: `python resume_script.py OUT_DIR [KILL_AT_STEP] [--global-rng]`.

Dropout, a shuffling loader, AdamW, warmup+cosine and accumulation: every piece of state a resume must restore.
KILL_AT_STEP ends the process abruptly (os._exit) right after that optimizer step; "write:N" dies halfway
through writing the checkpoint after step N.
"""

import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradpilot
from gradpilot.train import checkpoint as _checkpoint

out = Path(sys.argv[1])
kill = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None
global_rng = "--global-rng" in sys.argv

torch.manual_seed(0)
gen = torch.Generator().manual_seed(1)
x = torch.randn(90, 5, generator=gen)
y = (x[:, 0] > 0).long()
loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True,
                    generator=None if global_rng else torch.Generator().manual_seed(2))
val = DataLoader(TensorDataset(x[:30], y[:30]), batch_size=16)
model = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

if kill is not None and kill.startswith("write:"):
    at = int(kill.split(":")[1])
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        if obj.get("record", {}).get("steps") == at:
            f.write(b"half a checkpoint")
            f.flush()
            os._exit(9)
        return real_save(obj, f, *a, **k)

    _checkpoint.torch.save = dying_save
    kill = None


def on_step(step, _lr):
    if kill is not None and step == int(kill):
        os._exit(9)


result = gradpilot.fit(model, opt, nn.CrossEntropyLoss(), loader, epochs=4, accumulation_steps=3,
                       scheduler="warmup_cosine", scheduler_options={"warmup_steps": 3}, val_loader=val,
                       early_stopping=gradpilot.EarlyStopping(patience=10), checkpoint_dir=out / "ckpt",
                       checkpoint_every=2, on_step=on_step)
torch.save({"params": model.state_dict(), "losses": result.train_losses, "lrs": result.lrs,
            "val": result.val_metrics, "resumed": result.resumed_from_step}, out / "final.pt")
