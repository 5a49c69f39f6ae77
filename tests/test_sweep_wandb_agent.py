"""The W&B agent path, offline. The W&B server is replaced at the network boundary (``wandb.login``, ``wandb.sweep``,
``wandb.agent`` and the agent run's ``wandb.init`` all talk to it) by a recording stand-in, and the configs come
from W&B's own open-source sweeps engine (``sweeps.next_run``, what the server runs), for the shipped sweep files.
Each proposed value must reach the recipe the trial trained (its run folder's recipe.yaml)."""

from __future__ import annotations

import json

import pytest
import wandb
import yaml

from inat_zoo.cli import main
from inat_zoo.sweep import load_sweep, search_space

from .test_sweep import SWEEPS, TINY

sweeps_engine = pytest.importorskip(
    "sweeps", reason="W&B's sweeps engine: `make install` adds sweeps==0.3.0 (without its numpy pin)"
)

TINY_RESNET = [
    "model.pretrained=false",
    "data.image_size=32",
    "data.num_workers=0",
    "data.prepared_cache=false",
    "train.epochs=1",
    "train.batch_size=32",
    "train.mixed_precision=no",
    "train.channels_last=false",
]


class WandbServerStandIn:
    """Records what the backend asks of W&B and answers as the server would, with the engine's proposals."""

    def __init__(self, real_init, out):
        self.real_init = real_init
        self.out = out
        self.configs: dict[str, dict] = {}  # sweep id -> the config the backend sent
        self.history: dict[str, list] = {}  # sweep id -> the engine's runs so far (what the server remembers)
        self.agents: list[tuple] = []
        self.proposed: list[tuple[str, dict]] = []  # (run id, the values the engine proposed for it)
        self.pending: dict | None = None

    def sweep(self, config, project=None, entity=None):
        sweep_id = f"sweep{len(self.configs)}"
        self.configs[sweep_id] = json.loads(json.dumps(config))  # it travels to the server as JSON
        self.history[sweep_id] = []
        return sweep_id

    def agent(self, sweep_id, function, count=None, project=None, entity=None):
        self.agents.append((sweep_id, project, entity, count))
        config = self.configs[sweep_id]
        for _ in range(count):
            run = sweeps_engine.next_run(config, self.history[sweep_id])
            # the engine's numpy numbers reach an agent as JSON
            self.pending = json.loads(json.dumps({k: v["value"] for k, v in run.config.items()}, default=float))
            function()
            run_id, _ = self.proposed[-1]
            metrics = json.loads((self.out / run_id / "metrics.json").read_text())
            run.state = sweeps_engine.RunState.finished
            run.summary_metrics = {config["metric"]["name"]: metrics["validation"]["accuracy"]}
            self.history[sweep_id].append(run)

    def init(self, **kwargs):
        """The agent's run gets the proposed config; every run is a real W&B run in disabled mode (no network)."""
        if self.pending is None:  # the trainer's own tracker, inside the agent's run
            return self.real_init(**{**kwargs, "mode": "disabled"})
        run = self.real_init(mode="disabled", config=self.pending, dir=kwargs.get("dir"))
        self.proposed.append((run.id, self.pending))
        self.pending = None
        return run


@pytest.fixture
def server(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    stand_in = WandbServerStandIn(wandb.init, out)
    monkeypatch.delenv("WANDB_MODE")  # the backend refuses offline modes; the stand-in keeps every run offline
    monkeypatch.setattr(wandb, "login", lambda **kwargs: True)
    for name in ("sweep", "agent", "init"):
        monkeypatch.setattr(wandb, name, getattr(stand_in, name))
    return stand_in


def recipe_value(recipe: dict, key: str):
    node = recipe
    for part in key.split("."):
        node = node[part]
    return node


def assert_proposals_reached_the_recipes(server, keys) -> None:
    for run_id, values in server.proposed:
        assert set(values) == set(keys)
        recipe = yaml.safe_load((server.out / run_id / "recipe.yaml").read_text())
        assert recipe["track"] == {**recipe["track"], "wandb": True, "mode": "online"}
        for key, value in values.items():
            trained = recipe_value(recipe, key)
            if isinstance(value, dict):  # the schema fills the defaults of an augment mapping around it
                assert value.items() <= trained.items(), (key, value, trained)
            else:
                assert trained == pytest.approx(value), (key, value, trained)


def test_wandb_agents_train_what_the_sweeps_engine_proposes(server, sample_root, capsys):
    sweep_file = str(SWEEPS / "flexible_cnn.yaml")
    args = ["sweep", sweep_file, "--backend", "wandb", "--out", str(server.out), f"data.root={sample_root}", *TINY]
    assert main([*args, "--trials", "2", "--project", "inat", "--entity", "me"]) == 0
    assert list(server.configs) == ["sweep0"] and server.agents == [("sweep0", "inat", "me", 2)]
    assert (server.out / "wandb_sweep_id.txt").read_text() == "sweep0\n"
    assert "more agents join it with --sweep-id" in capsys.readouterr().out
    # one more agent (another GPU or machine) joins the same sweep: no new sweep; the server's next proposal
    assert main([*args, "--trials", "1", "--sweep-id", "me/inat/sweep0"]) == 0
    assert list(server.configs) == ["sweep0"] and server.agents[-1] == ("sweep0", "inat", "me", 1)
    assert len(server.history["sweep0"]) == 3 and len({run_id for run_id, _ in server.proposed}) == 3
    keys = search_space(load_sweep(sweep_file), TINY)
    assert_proposals_reached_the_recipes(server, keys)


def test_the_resnet50_sweep_through_the_agent(server, sample_root):
    sweep_file = str(SWEEPS / "resnet50_freeze.yaml")
    args = ["sweep", sweep_file, "--backend", "wandb", "--out", str(server.out), f"data.root={sample_root}"]
    assert main([*args, *TINY_RESNET, "--trials", "1"]) == 0
    assert len(server.proposed) == 1
    assert_proposals_reached_the_recipes(server, ["model.freeze", "train.lr"])
    assert server.configs["sweep0"]["method"] == "bayes"
