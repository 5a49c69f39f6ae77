"""The one evaluation under DDP (two CPU processes, gloo): each rank scores its own batches and
``gather_for_metrics`` reassembles the split; the result equals one process's, field for field."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from inat_zoo.evaluate import evaluate_split, load_eval_data
from inat_zoo.loading import load_model

from .eval_helpers import make_run
from .train_helpers import REPO, subprocess_env

SCRIPT = """
import json, sys
from accelerate import Accelerator
from inat_zoo.evaluate import evaluate_split, load_eval_data
from inat_zoo.loading import load_model

acc = Accelerator(cpu=True)
loaded = load_model(sys.argv[1], acc.device)
with acc.main_process_first():
    data = load_eval_data(loaded, None, "test")
result = evaluate_split(loaded, data, batch_size=8, accelerator=acc, progress=False)
seen = acc.gather_for_metrics([len(result.indices)], use_gather_object=True)
if acc.is_main_process:
    print("RESULT " + json.dumps({"metrics": result.metrics, "logits": result.logits.tolist(), "ranks": seen}))
acc.end_training()  # destroys the process group: leaving it to interpreter exit aborted gloo now and then
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_single_process_evaluation(sample_root, tmp_path):
    run = make_run(tmp_path, sample_root, filters=8)
    script = tmp_path / "evaluate_ddp.py"
    script.write_text(SCRIPT)
    env = subprocess_env()
    env["ACCELERATE_USE_CPU"] = "1"
    cmd = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--config_file",
        str(REPO / "recipes" / "accelerate" / "cpu_2proc.yaml"),
        "--main_process_port",
        str(_free_port()),
        str(script),
        str(run),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    ddp = json.loads(line[len("RESULT ") :])
    assert ddp["ranks"] == [40, 40]  # every rank gets the whole split back

    loaded = load_model(str(run))
    single = evaluate_split(loaded, load_eval_data(loaded, None, "test"), batch_size=8, progress=False)
    assert ddp["metrics"] == json.loads(json.dumps(single.metrics))  # 5 batches over 2 ranks: the same numbers
    assert ddp["logits"] == single.logits.tolist()
