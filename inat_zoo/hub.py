"""Publish a run directory to the Hugging Face Hub.

The Hub folder is what timm reads back with ``timm.create_model("hf-hub:USER/NAME", pretrained=True)``: the run's
``model/`` (already in timm's ``save_for_hf`` layout) plus a model card, the recipe, the metrics and the pictures.
``build_hub_folder`` writes it locally (``inat-zoo push --dry-run DIR``); ``push`` builds it in a temporary folder
and uploads it in one commit. The token is checked before anything touches the network and is never printed.
``--with-onnx`` adds ``model.onnx`` (:mod:`inat_zoo.onnx_export`); ``--space U/N`` also writes and uploads a Gradio
Space that loads the model (:mod:`inat_zoo.space`; with ``--dry-run DIR`` it is written to ``DIR-space``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import HfApi, get_token

from .atomic import atomic_directory, atomic_write_json, atomic_write_text
from .errors import UsageError
from .hub_ids import hub_dataset_id, parse_hub_id
from .rundir import (
    EVAL_FOLDER,
    EXPLAIN_FOLDER,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_DIR,
    PUBLISHED_EVAL_METRICS_FILE,
    RECIPE_FILE,
    RunFiles,
    published_test_accuracy,
    read_history,
    read_json,
    read_metrics,
    read_recipe,
)
from .space import architecture_file, build_space_folder, check_space_id, upload_space

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
IMAGES_DIR = "images"
ONNX_NAME = "model.onnx"
_REQUIRED_CONFIG_KEYS = ("architecture", "num_classes", "pretrained_cfg")
_REQUIRED_DATA_KEYS = ("input_size", "mean", "std")


def check_model_dir(model_dir: Path) -> dict[str, Any]:
    """Check that ``model_dir`` is a complete timm ``save_for_hf`` folder and that timm can rebuild it.

    Returns its config.json. Loading the weights strictly here means a broken export fails before anything is
    uploaded, not when a user first tries the published model.
    """
    import timm

    from . import models  # noqa: F401  (registers the inat_* architectures before create_model)

    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise UsageError(f"{model_dir} has no config.json — not a timm save_for_hf folder")
    if not (model_dir / WEIGHTS_NAME).is_file():
        raise UsageError(f"{model_dir} has no {WEIGHTS_NAME} (only safetensors weights are published)")
    config = read_json(config_path)
    missing = [key for key in _REQUIRED_CONFIG_KEYS if key not in config]
    missing += [f"pretrained_cfg.{k}" for k in _REQUIRED_DATA_KEYS if k not in config.get("pretrained_cfg", {})]
    if missing:
        raise UsageError(f"{config_path} lacks {', '.join(missing)} — re-export it with timm.models.save_for_hf")
    labels = config.get("label_names")
    if not labels or len(labels) != config["num_classes"]:
        raise UsageError(
            f"{config_path}: label_names must list the {config['num_classes']} class names "
            f"(found {0 if not labels else len(labels)})"
        )
    try:
        model = timm.create_model(f"local-dir:{model_dir}", pretrained=True)
    except Exception as e:  # any failure here means the export is unusable; --debug shows the traceback
        raise UsageError(f"timm cannot load {model_dir}: {type(e).__name__}: {e}") from e
    if model.num_classes != config["num_classes"]:
        raise UsageError(
            f"{model_dir}: model has {model.num_classes} outputs, config.json says {config['num_classes']}"
        )
    return config


def read_run(run_dir: str | Path) -> RunFiles:
    """Read and check a run directory; every missing piece is a :class:`UsageError` naming it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist")
    model_dir = run_dir / MODEL_DIR
    if not model_dir.is_dir():
        raise UsageError(f"run {run_dir} has no {MODEL_DIR}/ — train it first")
    for name in (RECIPE_FILE, METRICS_FILE):
        if not (run_dir / name).is_file():
            raise UsageError(f"run {run_dir} has no {name} — is it a complete inat_zoo run directory?")
    config = check_model_dir(model_dir)
    recipe = read_recipe(run_dir)
    metrics = read_metrics(run_dir)
    eval_metrics = read_metrics(run_dir, EVAL_FOLDER)
    if published_test_accuracy(metrics, eval_metrics) is None:
        raise UsageError(f"{run_dir / METRICS_FILE} has no test accuracy — run `inat-zoo evaluate {run_dir}` first")
    if not (run_dir / HISTORY_FILE).is_file():
        logger.warning("%s is missing: the card will have no training curves", run_dir / HISTORY_FILE)
    return RunFiles(
        run_dir=run_dir,
        model_dir=model_dir,
        config=config,
        recipe=recipe,
        metrics=metrics,
        history=read_history(run_dir),
        eval_metrics=eval_metrics,
        eval_images=sorted((run_dir / EVAL_FOLDER).glob("*.png")),
        explain_images=sorted((run_dir / EXPLAIN_FOLDER).glob("*.png")),
    )


def check_repo_id(repo_id: str) -> str:
    """``--repo-id`` as a bare Hub id (``hf-hub:`` stripped), by the project's one rule (:mod:`inat_zoo.hub_ids`)."""
    return parse_hub_id(repo_id, "--repo-id")


def _published_name(path: str) -> str:
    """A local path as published: its last component (``local-dir:`` kept); an ``hf-hub:`` id unchanged."""
    if path.startswith("hf-hub:"):
        return path
    prefix = "local-dir:" if path.startswith("local-dir:") else ""
    return prefix + Path(path.removeprefix(prefix)).name


def _published_root(root: str) -> str:
    """A data root as published: a Hub dataset id kept, a local folder cut to its name."""
    hub_id = hub_dataset_id(root)
    return hub_id if hub_id is not None else Path(root).name


def _published_image(path: str, root: str | None) -> str:
    """An image path as published: relative to the data root (``val/<class>/<file>``) when under it, else its name."""
    if root:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return Path(path).name


def shareable_eval_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``eval/metrics.json`` as published (``eval_metrics.json``): the model reference, the data root, and the
    image paths of ``top_losses`` and ``skipped`` without the author's folders; every figure unchanged."""
    out = copy.deepcopy(metrics)
    root = out.get("data_root") if isinstance(out.get("data_root"), str) else None
    if isinstance(out.get("model"), str):
        out["model"] = _published_name(out["model"])
    if root:
        out["data_root"] = _published_root(root)
    for entry in out.get("top_losses") or []:
        if isinstance(entry, dict) and isinstance(entry.get("image"), str):
            entry["image"] = _published_image(entry["image"], root)
    if isinstance(out.get("skipped"), dict):
        out["skipped"] = {_published_image(name, root): why for name, why in out["skipped"].items()}
    return out


def shareable_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe as published: every local path cut to its name (``data.root``, ``output_dir``, a
    ``model.pretrained`` weights file, a local ``train.distill.teacher``), so a public repo never shows the author's
    folders; Hub ids stay. The result still loads with ``load_recipe``."""
    out = copy.deepcopy(recipe)
    data, model, train = (out.get(section) for section in ("data", "model", "train"))
    if isinstance(data, dict) and data.get("root"):
        data["root"] = _published_root(str(data["root"]))
    if out.get("output_dir"):
        out["output_dir"] = str(Path("runs") / Path(str(out["output_dir"])).name)
    if isinstance(model, dict) and isinstance(model.get("pretrained"), str):
        model["pretrained"] = _published_name(model["pretrained"])
    distill = train.get("distill") if isinstance(train, dict) else None
    if isinstance(distill, dict) and isinstance(distill.get("teacher"), str):
        distill["teacher"] = _published_name(distill["teacher"])
    return out


def build_hub_folder(
    run_dir: str | Path,
    out_dir: str | Path,
    repo_id: str,
    *,
    license: str = "apache-2.0",
    overwrite: bool = False,
    with_onnx: bool = False,
    space_id: str | None = None,
) -> Path:
    """Write the Hub folder of ``run_dir`` to ``out_dir`` atomically and return ``out_dir``.

    ``out_dir`` must not exist (or be an empty folder) unless ``overwrite``: a previous export is not replaced
    silently. ``with_onnx`` adds ``model.onnx`` (checked with onnxruntime) and its card section; ``space_id`` links
    the model's Space from the card (and checks now that a Space can rebuild the architecture).
    """
    from .model_card import build_model_card
    from .plots import plot_training_curves

    repo_id, space_id = _check_options(repo_id, space_id, with_onnx)  # before anything is read or written
    run = read_run(run_dir)
    if space_id:
        architecture_file(run.config["architecture"])
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder")
    replace = out_dir.exists() and (overwrite or not any(out_dir.iterdir()))
    if out_dir.exists() and not replace:
        raise UsageError(f"{out_dir} already exists and is not empty — choose another folder or remove it")
    with atomic_directory(out_dir, overwrite=replace) as tmp:
        shutil.copy2(run.model_dir / "config.json", tmp / "config.json")
        shutil.copy2(run.model_dir / WEIGHTS_NAME, tmp / WEIGHTS_NAME)
        # the Hub folder keeps the run's file names; eval/metrics.json becomes eval_metrics.json beside them
        atomic_write_text(tmp / RECIPE_FILE, yaml.safe_dump(shareable_recipe(run.recipe), sort_keys=False))
        shutil.copy2(run.run_dir / METRICS_FILE, tmp / METRICS_FILE)
        if (run.run_dir / HISTORY_FILE).is_file():
            shutil.copy2(run.run_dir / HISTORY_FILE, tmp / HISTORY_FILE)
        if run.eval_metrics is not None:
            atomic_write_json(tmp / PUBLISHED_EVAL_METRICS_FILE, shareable_eval_metrics(run.eval_metrics))
        images = _copy_pictures(run, tmp)
        curves = None
        if run.history:
            curves = f"{IMAGES_DIR}/training_curves.png"
            (tmp / IMAGES_DIR).mkdir(exist_ok=True)
            best = run.metrics.get("best_epoch")
            plot_training_curves(run.history, tmp / curves, best_epoch=best if isinstance(best, int) else None)
        card = build_model_card(
            run,
            repo_id,
            license=license,
            eval_images=images[EVAL_FOLDER],
            explain_images=images[EXPLAIN_FOLDER],
            curves=curves,
            onnx=_add_onnx(run, tmp) if with_onnx else None,
            space_id=space_id,
        )
        atomic_write_text(tmp / CARD_NAME, str(card))
    return out_dir


def _check_options(repo_id: str, space_id: str | None, with_onnx: bool) -> tuple[str, str | None]:
    """``(repo_id, space_id)`` as bare Hub ids (the one rule), and the onnx extra present when ``with_onnx``."""
    if with_onnx:
        from .onnx_export import require_onnx

        require_onnx()
    return check_repo_id(repo_id), check_space_id(space_id) if space_id else None


def _copy_pictures(run: RunFiles, folder: Path) -> dict[str, list[str]]:
    """Copy the run's eval/ and explain/ pictures to ``folder/images/<kind>/``; their paths relative to ``folder``."""
    images: dict[str, list[str]] = {EVAL_FOLDER: [], EXPLAIN_FOLDER: []}
    for kind, paths in ((EVAL_FOLDER, run.eval_images), (EXPLAIN_FOLDER, run.explain_images)):
        for src in paths:
            rel = f"{IMAGES_DIR}/{kind}/{src.name}"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, folder / rel)
            images[kind].append(rel)
    return images


def _add_onnx(run: RunFiles, folder: Path) -> dict[str, Any]:
    """Export the run's model to ``folder/model.onnx`` (checked with onnxruntime); what the card says about it."""
    from .onnx_export import export_onnx

    result = export_onnx(f"local-dir:{run.model_dir}", folder / ONNX_NAME)
    logger.info(
        "%s: %s exporter, opset %d, max abs diff %.3g", ONNX_NAME, result.exporter, result.opset, result.max_abs_diff
    )
    return {"file": ONNX_NAME, "opset": result.opset, "max_abs_diff": f"{result.max_abs_diff:.2g}"}


def build_run_space(
    run_dir: str | Path, out_dir: str | Path, repo_id: str, space_id: str, *, license: str = "apache-2.0"
) -> Path:
    """Write the Gradio Space of the run's published model ``repo_id`` to ``out_dir`` (:mod:`inat_zoo.space`)."""
    run = read_run(run_dir)
    accuracy = published_test_accuracy(run.metrics, run.eval_metrics)
    return build_space_folder(out_dir, space_id, repo_id, run.config, license=license, accuracy=accuracy)


def space_dry_run_dir(out_dir: str | Path) -> Path:
    """Where ``push --dry-run DIR --space ...`` writes the Space: ``DIR-space`` beside the model's folder."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}-space")


def require_token() -> str:
    """The Hub token (HF_TOKEN or a saved `hf auth login`); a UsageError before any network call when there is none."""
    token = get_token()
    if not token:
        raise UsageError(
            "no Hugging Face token found: set HF_TOKEN or run `hf auth login` (a token with write access), "
            "or use --dry-run DIR to only build the folder"
        )
    return token


def push(
    run_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    overwrite_card: bool = False,
    license: str = "apache-2.0",
    with_onnx: bool = False,
    space_id: str | None = None,
) -> str:
    """Build the Hub folder of ``run_dir`` and upload it to ``repo_id`` in one commit; return the commit URL.

    An existing README.md on the Hub (a card the owner may have edited) is kept unless ``overwrite_card``.
    With ``space_id`` the run's Gradio Space is then created (or updated) and uploaded (same token, same privacy).
    """
    token = require_token()
    repo_id = check_repo_id(repo_id)
    space_id = check_space_id(space_id) if space_id else None
    with tempfile.TemporaryDirectory(prefix="inat_zoo_hub_") as tmp:
        folder = build_hub_folder(
            run_dir, Path(tmp) / "hub", repo_id, license=license, with_onnx=with_onnx, space_id=space_id
        )
        space_folder = (
            build_run_space(run_dir, Path(tmp) / "space", repo_id, space_id, license=license) if space_id else None
        )
        from . import __version__

        api = HfApi(token=token, library_name="inat_zoo", library_version=__version__)
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        repo_id = repo_url.repo_id
        if private and not api.model_info(repo_id).private:
            raise UsageError(
                f"{repo_id} already exists and is public; --private does not change an existing repo — "
                "make it private in its settings first, or push without --private"
            )
        if revision and revision != "main" and not revision.startswith("refs/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        ignore = None
        if not overwrite_card and api.file_exists(repo_id, CARD_NAME, revision=revision):
            logger.warning("%s already has a README.md: kept it (pass --overwrite-card to replace it)", repo_id)
            ignore = [CARD_NAME]
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or f"Upload {Path(run_dir).resolve().name} with inat_zoo",
            revision=revision,
            ignore_patterns=ignore,
        )
        if space_folder is not None:
            message = f"Demo of {repo_id} (inat_zoo)"
            space_commit = upload_space(api, space_id, space_folder, private=private, commit_message=message)
            logger.info("uploaded the Space %s: %s", space_id, space_commit)
    return str(commit.commit_url)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``inat-zoo push`` to ``parser``."""
    parser.add_argument("run", metavar="RUN", help=f"run directory (with {MODEL_DIR}/, {RECIPE_FILE}, {METRICS_FILE})")
    parser.add_argument("--repo-id", required=True, help="Hub repository, USER/NAME")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to commit to (created if missing; default: main)")
    parser.add_argument("--commit-message", help="commit message (default: 'Upload <run> with inat_zoo')")
    parser.add_argument("--dry-run", metavar="DIR", help="only write the Hub folder to DIR; no network call")
    parser.add_argument("--overwrite-card", action="store_true", help="replace a README.md already on the Hub")
    parser.add_argument("--license", default="apache-2.0", help="license id for the card (default: apache-2.0)")
    parser.add_argument("--with-onnx", action="store_true", help=f"add {ONNX_NAME} (inat-zoo export) to the repo")
    parser.add_argument(
        "--space",
        metavar="USER/NAME",
        help="also write and upload a Gradio Space that loads the model (dry run: DIR-space)",
    )


def run_cli(args: argparse.Namespace) -> int:
    """Run ``inat-zoo push``: upload the run (or, with ``--dry-run DIR``, only write the Hub folder); returns 0."""
    if args.dry_run:
        return _dry_run(args)
    url = push(
        args.run,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        overwrite_card=args.overwrite_card,
        license=args.license,
        with_onnx=args.with_onnx,
        space_id=args.space,
    )
    print(f"pushed {args.run} to {url}")
    if args.space:
        print(f"Space: https://huggingface.co/spaces/{check_space_id(args.space)}")
    print(f'load it with: timm.create_model("hf-hub:{check_repo_id(args.repo_id)}", pretrained=True)')
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    """``push --dry-run DIR``: the Hub folder in DIR (and the Space in DIR-space with ``--space``); no network."""
    space_dir = space_dry_run_dir(args.dry_run) if args.space else None
    if space_dir is not None:  # checked before the model's folder is written
        check_space_id(args.space)
        if space_dir.exists() and not (space_dir.is_dir() and not any(space_dir.iterdir())):
            raise UsageError(f"{space_dir} (the Space of --dry-run) already exists: choose another DIR or remove it")
    out = build_hub_folder(
        args.run, args.dry_run, args.repo_id, license=args.license, with_onnx=args.with_onnx, space_id=args.space
    )
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    print(f"wrote the Hub folder of {args.run} to {out} ({len(files)} files: {', '.join(files)})")
    print(f'load it with: timm.create_model("local-dir:{out}", pretrained=True)')
    if space_dir is not None:
        build_run_space(args.run, space_dir, args.repo_id, args.space, license=args.license)
        files = sorted(str(p.relative_to(space_dir)) for p in space_dir.rglob("*") if p.is_file())
        print(f"wrote the Space {check_space_id(args.space)} to {space_dir} ({', '.join(files)})")
    return 0
