"""Two CPU processes (gloo) training one classifier-static run with the Trainer integration under DDP; each process
writes what it trained on and its final weights' checksum to OUT/rank<r>.json. Run by tests/test_hf_trainer.py:
    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_trainer.py OUT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_hf_trainer import VisitRecorder, logged_steps, run_config, trainer_for  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    trainer = trainer_for(run_config("classifier-static", epochs=1, cpus=1), out / f"rank{rank}", VisitRecorder,
                          per_device_train_batch_size=4)
    trainer.train()
    weights = sum(float(p.double().sum()) for p in trainer.model.parameters())
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world_size": trainer.args.world_size, "visits": trainer.visits, "weights": weights,
        "steps": sorted(logged_steps(trainer))}))
