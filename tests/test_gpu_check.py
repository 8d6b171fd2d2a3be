"""benchmarks/gpu_check.py with tiny shapes on the CPU: the GPU check runs the recipe itself, so it must not rot
between the sessions that have a GPU to run it on."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_measures_every_variant_sharing_and_the_specs_gpu_hours():
    ran = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads(ran.stdout)
    assert result["smoke"] and result["device"] == "cpu"
    methods = result["classifier"]["methods"]
    assert set(methods) == {"vanilla", "vanilla_repeat", "static", "dynamic"}
    assert all(m["seconds_per_step"] > 0 and m["steps_timed"] == result["steps_timed"] for m in methods.values())
    assert set(result["classifier"]["vs_vanilla_repeat"]) == {"static", "dynamic"}
    assert set(result["decoders"]) == {"smollm2-135m"}  # the 1 B shape runs the same code at another size
    assert set(result["decoders"]["smollm2-135m"]["variants"]) == {"vanilla_repeat", "full", "bf16", "int8", "topk"}
    shared = result["sharing"][0]  # two processes, started together at a barrier
    assert shared["processes"] == 2 and len(shared["seconds_per_step_each"]) == 2
    assert shared["aggregate_steps_per_second"] > 0
    hours = result["gpu_hours"]
    assert set(hours) == {"fig3_rte.yaml", "fig3_boolq.yaml", "nlg_llama.yaml"}
    # the grid at 3 seeds, the controls and the chosen cell at 4 fresh seeds, then up to 20 more for static and
    # vanilla_repeat (adaptive confirmation)
    rte = hours["fig3_rte.yaml"]
    assert rte["trials"] == 25 * 3 + 3 * 4 + 4 and rte["confirmation_trials_up_to"] == 2 * 20
    assert rte["train_examples"] == 1992
    assert rte["gpu_hours_one_trial_per_gpu_every_round"] > rte["gpu_hours_one_trial_per_gpu"]
    assert all(h["gpu_hours_one_trial_per_gpu"] > 0 for h in hours.values())
