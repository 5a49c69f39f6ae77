"""The private accelerate APIs the trainer needs, isolated here (pyproject caps accelerate below 2.0 for them).

Each function says why no public API does the job; when accelerate grows one, only this module changes.
"""

from __future__ import annotations


def reset_accelerator_state() -> None:
    """Forget the previous run's mixed precision and gradient accumulation settings, keeping the launch's process
    group (``PartialState``).

    Why private: ``AcceleratorState`` and ``GradientState`` are process-wide singletons, and a second
    ``Accelerator(...)`` with other settings in the same process raises (or silently keeps the first ones). A
    process trains several recipes (sweep trials, tests); accelerate offers no public reset that keeps the process
    group, which must survive because torch.distributed can be initialised only once per process.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def rewrap_ddp(accelerator, core, *, compile_model: bool):
    """Wrap ``core`` (the unwrapped model, already prepared once) in a new DistributedDataParallel and return it.

    DDP only reduces the gradients of parameters that were trainable when it wrapped the model, so after unfreezing
    a stage the model is wrapped anew, as accelerate's ``prepare_model`` does (same DDP kwargs and comm hook).

    Why private: the new wrapper must replace the old one in ``accelerator._models`` so that
    ``save_state``/``load_state`` keep seeing one model with the same index (checkpoints name it by position);
    accelerate has no public API to replace or re-prepare a prepared model.
    """
    import torch
    from torch.nn.parallel import DistributedDataParallel

    models = accelerator._models
    index = next(i for i, m in enumerate(models) if accelerator.unwrap_model(m, keep_torch_compile=False) is core)
    handler = accelerator.ddp_handler
    device_ids = [accelerator.local_process_index] if accelerator.device.type == "cuda" else None
    model = DistributedDataParallel(
        core,
        device_ids=device_ids,
        output_device=device_ids[0] if device_ids else None,
        **(handler.to_kwargs() if handler is not None else {}),
    )
    if handler is not None:
        handler.register_comm_hook(model)
    if compile_model:
        model = torch.compile(model)
    models[index] = model
    return model
